"""The store: one file per item version, written atomically from the bytes its carrier hands over.

Layout ``<group>/<series>/<item><suffix>`` (``<item>.v<N><suffix>`` for later versions; for DICOM
``<study>/<series>/<sop>.dcm``), so a person can find a file from its UIDs. A file is either absent
or complete: temp file, fsync, rename, fsync of the directory. No file format is known here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from dicom_chain.errors import DicomChainError, StorageError

TEMP_PREFIX = ".incoming-"  # temp files start with this; verify and scans skip them
UID_PATH_MAX = 64  # PS3.5 9.1: UIDs never exceed 64 characters, so neither does a path part
_UNSAFE = re.compile(r"[^0-9A-Za-z._-]")
_VERSION_SUFFIX = r"(\.v[0-9]+)?\.[A-Za-z0-9]+"  # after the stem: ".dcm", ".v2.dcm" (relative_path)


def path_part(uid: str) -> str:
    """A UID as a file name part; anything that is not a plain UID is made harmless and unique."""
    safe = _UNSAFE.sub("_", uid)[:UID_PATH_MAX]
    if safe != uid or safe in ("", ".", ".."):
        safe = f"{safe.strip('.') or 'x'}_{hashlib.sha256(uid.encode()).hexdigest()[:12]}"
    return safe


def relative_path(group_id: str, series_id: str, item_id: str, version: int, *, suffix: str) -> str:
    """Where version ``version`` of an item goes; ``suffix`` is its carrier's (".dcm")."""
    name = path_part(item_id) + (suffix if version == 1 else f".v{version}{suffix}")
    return f"{path_part(group_id)}/{path_part(series_id)}/{name}"


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def covering(self, group_id: str, series_id: str, item_id: str) -> tuple[str, str]:
        """(folder, stem) of every version's file of an item, whatever its carrier's suffix: what a
        write intent names."""
        folder, stem = relative_path(group_id, series_id, item_id, 1, suffix="").rsplit("/", 1)
        return folder, stem

    def versions(self, folder: str, stem: str) -> list[str]:
        """The files of ``folder`` that a write intent for ``stem`` covers, as relative paths."""
        try:
            names = sorted(p.name for p in (self.root / folder).iterdir())
        except OSError:
            return []
        pattern = re.compile(re.escape(stem) + _VERSION_SUFFIX)
        return [f"{folder}/{name}" for name in names if pattern.fullmatch(name)]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def exists(self, relative: str) -> bool:
        return self.path(relative).is_file()

    def write(self, relative: str, pieces: Iterable[bytes | memoryview]) -> Path:
        """Write ``pieces`` in order as the file at ``relative``; on any failure nothing is left behind."""
        target = self.path(relative)
        tmp: str | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX)
            with os.fdopen(fd, "wb") as fp:
                fp.writelines(pieces)
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(tmp, target)
            tmp = None
            _fsync_dir(target.parent)
        except OSError as exc:
            raise StorageError(f"cannot store {relative}: {exc.strerror or exc}") from exc
        except DicomChainError:
            raise
        except Exception as exc:  # pieces may be encoded as they are written, and an encoder may refuse
            raise StorageError(f"cannot encode {relative}: {exc}") from exc
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        return target

    def remove(self, relative: str) -> None:
        """Best-effort clean-up after a failed ingest: the original error is the one to report."""
        with contextlib.suppress(OSError):
            self.path(relative).unlink(missing_ok=True)

    def iter_files(self) -> Iterator[str]:
        """Every stored file as a relative path, temp files left out, in a stable order."""
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                if not name.startswith(TEMP_PREFIX):
                    yield Path(dirpath, name).relative_to(self.root).as_posix()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
