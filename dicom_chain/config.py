"""Node settings and where things live by default: everything under one home folder (./var)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

DEFAULT_HOME = Path("var")
DEFAULT_INSTITUTION = "Unnamed institution"
KEY_FILE_NAME = "node.key"
DB_FILE_NAME = "ledger.db"
STORAGE_DIR_NAME = "storage"


@dataclass(frozen=True)
class Settings:
    home: Path = DEFAULT_HOME
    db: str | None = None
    storage: Path | None = None
    key_file: Path | None = None
    institution: str = DEFAULT_INSTITUTION
    forward: tuple[str, ...] = ()  # upstream PACS as AET@HOST:PORT; each gets its own queue
    # C-MOVE destinations as AET@HOST:PORT: the only AEs instances may be moved to (until the
    # release rules for other institutions exist, a destination must be listed here).
    move_destinations: tuple[str, ...] = ()

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.home / DB_FILE_NAME}"

    @property
    def storage_dir(self) -> Path:
        return self.storage or self.home / STORAGE_DIR_NAME

    @property
    def key_path(self) -> Path:
        """Beside the database: the SQLite file's folder, else the home folder."""
        if self.key_file:
            return self.key_file
        url = make_url(self.db_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return Path(url.database).parent / KEY_FILE_NAME
        return self.home / KEY_FILE_NAME
