"""The schema, brought to the newest migration when a database is opened.

Processes starting together on one PostgreSQL database must not migrate it twice: the upgrade
runs under a transaction-scoped advisory lock, and whoever comes second finds nothing to do.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

PG_MIGRATION_LOCK = 0x44434D49  # advisory lock id ("DCMI"): one process migrates, the others wait
HEAD_REVISION = "0013"  # the newest migration; a test holds it equal to the migrations folder


def alembic_config() -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", "dicom_chain.db:migrations")
    return cfg


def schema_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        try:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError:  # no such table yet: an empty database
            conn.rollback()
            return None


def upgrade(reader: Engine, writer: Engine) -> None:
    """Bring the schema to HEAD_REVISION. The check is one query; Alembic itself (a tenth of a
    process's memory) is loaded only when there is something to migrate."""
    if schema_revision(reader) == HEAD_REVISION:
        return
    from alembic import command

    cfg = alembic_config()
    with writer.begin() as conn:
        if writer.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
