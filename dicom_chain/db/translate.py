"""The one place SQLAlchemy's errors become ours.

Whoever answers a peer reads ``retryable`` and ``fault`` on our errors (errors.py), so what
matters here is the split: a database that cannot be reached, is locked past its timeout, or
whose connection pool stays exhausted is *unavailable* (retry later: A700 to a modality); a
constraint that refuses a write is a *conflict* (a lost race; the writer re-reads and retries);
anything else (a statement the database rejects) is a plain LedgerError, ours to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa

from dicom_chain.errors import LedgerConflict, LedgerError, LedgerUnavailable

# OperationalError: refused or lost connections, "database is locked", serialization failures and
# deadlocks; InterfaceError: a connection the driver already closed; TimeoutError: no pooled
# connection free within the pool's timeout; DisconnectionError: pre-ping found the server gone.
UNAVAILABLE = (sa.OperationalError, sa.InterfaceError, sa.TimeoutError, sa.DisconnectionError)
# sqlite3 raises OperationalError for bad SQL too ("no such column"): its primary result code says
# which. SQLITE_ERROR is the statement's fault; BUSY, LOCKED, IOERR, FULL, CANTOPEN... the database's.
SQLITE_ERROR = 1
SQLITE_PRIMARY_CODE = 0xFF  # extended result codes carry the primary one in their low byte


def translate(exc: sa.SQLAlchemyError) -> LedgerError:
    """Our error for ``exc``; raise it ``from exc`` so the driver's message stays in the chain."""
    detail = getattr(exc, "orig", None) or exc
    if isinstance(exc, sa.IntegrityError):
        return LedgerConflict(f"refused by a ledger constraint: {detail}")
    if isinstance(exc, UNAVAILABLE) and not _bad_sqlite_statement(exc):
        return LedgerUnavailable(f"ledger unavailable: {detail}")
    return LedgerError(f"ledger error: {detail}")


def _bad_sqlite_statement(exc: sa.SQLAlchemyError) -> bool:
    code = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    return code is not None and code & SQLITE_PRIMARY_CODE == SQLITE_ERROR


@contextmanager
def translated() -> Iterator[None]:
    """Run a block with SQLAlchemy's errors raised as ours."""
    try:
        yield
    except sa.SQLAlchemyError as exc:
        raise translate(exc) from exc
