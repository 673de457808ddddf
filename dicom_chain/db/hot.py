"""The few statements run once or more per received instance, as constant SQL on the driver's cursor.

SQLAlchemy costs 15-100 us per statement in coercion, compilation-cache lookups, parameter
processing and result wrapping, more than the statement itself takes in SQLite; a receipt runs
about ten. These run on the DBAPI cursor of the session's own connection (so in its transaction),
as fixed text: sqlite3 keeps each text's prepared statement in its cache, psycopg prepares it
server-side after ``prepare_threshold`` (5) uses. The columns they touch are plain text and
numbers, so SQLAlchemy's type processing has nothing to do. A driver error is wrapped as
SQLAlchemy wraps it, so ``translate`` maps it as it maps every other (LedgerConflict, ...).
Everything else stays on SQLAlchemy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import exc as sa
from sqlalchemy.orm import Session

from dicom_chain.db.database import DirectWrite

_NAMED = re.compile(r":(\w+)")


class HotSQL:
    """One statement written with ``:name`` parameters; PostgreSQL gets ``%(name)s`` (psycopg)."""

    __slots__ = ("pg", "sqlite")

    def __init__(self, sqlite: str, pg: str | None = None) -> None:
        self.sqlite = sqlite
        self.pg = _NAMED.sub(r"%(\1)s", pg if pg is not None else sqlite)


class HotCursor:
    """The driver's cursor of a session's connection (its transaction, begun if not yet), of a
    Core connection, or of ``Database.writing_direct``'s transaction."""

    __slots__ = ("_cursor", "_error", "_pg")

    def __init__(self, on: Session | Connection | DirectWrite) -> None:
        if isinstance(on, DirectWrite):
            dialect, driver = on.dialect, on.driver
        else:
            conn = on.connection() if isinstance(on, Session) else on
            dialect, driver = conn.dialect, conn.connection.driver_connection
        self._pg = dialect.name == "postgresql"
        self._error = dialect.loaded_dbapi.Error
        self._cursor = driver.cursor()  # type: ignore[union-attr]

    def run(self, stmt: HotSQL, params: Mapping[str, Any]) -> Any:
        """Execute; the cursor, to fetch from."""
        sql = stmt.pg if self._pg else stmt.sqlite
        try:
            self._cursor.execute(sql, params)
        except self._error as exc:
            raise sa.DBAPIError.instance(sql, params, exc, self._error) from exc
        return self._cursor

    def run_many(self, stmt: HotSQL, rows: Sequence[Mapping[str, Any]]) -> None:
        sql = stmt.pg if self._pg else stmt.sqlite
        try:
            self._cursor.executemany(sql, rows)
        except self._error as exc:
            raise sa.DBAPIError.instance(sql, rows, exc, self._error) from exc


def insert_sql(table: str, columns: Sequence[str]) -> HotSQL:
    """``INSERT INTO table (columns) VALUES (:columns)``, built once at import."""
    names = ", ".join(columns)
    values = ", ".join(f":{c}" for c in columns)
    return HotSQL(f"INSERT INTO {table} ({names}) VALUES ({values})")
