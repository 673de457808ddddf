"""One database (SQLite or PostgreSQL): its engines, their pool limits, SQLite's pragmas, the
schema brought up to date on open, and sessions whose errors arrive as ours (translate.py).

SQLite takes one writer at a time: write sessions begin with ``BEGIN IMMEDIATE``, so a writer
queues for the lock before it reads what it will change (a chain's head), never after. Before
that, a writer takes ``WriteLock`` (a lock file beside the database): SQLite's own busy handler
polls in sleeps that grow from 1 to 100 ms, so a receipt queued behind the forwarder's settle
waited up to ~80 ms past its end; a waiter on the lock file is woken the moment it is released.
PostgreSQL writers lock rows instead (``SELECT ... FOR UPDATE``). On both, a second writing
engine commits without waiting for the disk, for rows that only need to survive a killed process.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import PoolProxiedConnection

from dicom_chain.db import migrate
from dicom_chain.db.translate import translate, translated

SQLITE_BUSY_TIMEOUT_MS = 60_000  # writers queue behind one lock; a minute outlasts any burst of stores
# Pool limits, per engine and process. At peak every association's handler holds one connection
# (a C-STORE's receipt or a C-FIND's paged answers; never two at once), every forward worker one
# while it leases or settles, and a few more serve the audit feed, service events and recovery.
# Below that peak a request waited for a connection and, after SQLAlchemy's default 30 s, failed.
ASSOCIATIONS_MAX = 32  # scp/server.py MAX_ASSOCIATIONS: peers beyond it are rejected before any query
FORWARD_WORKERS_MAX = 16  # forward workers of one process: four per destination by default
POOL_MARGIN = 8  # audit feed, service start/stop events, recovery, status readers
POOL_MAX = ASSOCIATIONS_MAX + FORWARD_WORKERS_MAX + POOL_MARGIN  # 56: nobody waits for a connection
POOL_KEPT = 16  # kept open between bursts; beyond, connections close on return (PostgreSQL's
# max_connections is shared by every process on the server)
POOL_TIMEOUT_S = SQLITE_BUSY_TIMEOUT_MS / 1000  # as patient as the lock: past it, overload (A700)
# How long a writer waits for the lock file before it goes on to SQLite's own (polling) wait of
# SQLITE_BUSY_TIMEOUT_MS: behind a holder that is stopped (SIGSTOP, a debugger) or hung, a writer
# still ends with the overload answer, after at most the two (90 s; a modality's own DIMSE timeout
# passes first either way). Half of busy_timeout: far longer than any transaction of ours holds it.
WRITE_LOCK_WAIT_S = SQLITE_BUSY_TIMEOUT_MS / 1000 / 2
WRITE_LOCK_SUFFIX = ".write-lock"  # beside the database file, as SQLite's own -wal and -shm

# PostgreSQL's relaxed engine: commits return before the WAL reaches the disk (a server crash may
# lose the last ones; a killed client loses nothing), set once per connection, not per transaction.
PG_ASYNC_COMMIT = "-c synchronous_commit=off"
_open: weakref.WeakSet[Database] = weakref.WeakSet()


class WriteLock:
    """One SQLite writer at a time, across threads and processes, with waiters woken on release.

    Threads of one process queue on a ``threading.Lock``; its holder then takes ``flock`` on the
    lock file, which the kernel hands to the next process the moment it is closed. It only orders
    writers that come through ``Database.writing``: SQLite's lock stays what makes writes safe, so
    another program writing the file, or a wait past WRITE_LOCK_WAIT_S, falls back to busy_timeout.
    A thread that already holds it (nested writes) passes through, as it did before.
    """

    def __init__(self, path: Path, wait_s: float = WRITE_LOCK_WAIT_S) -> None:
        self.path = path
        self.wait_s = wait_s
        self._threads = threading.Lock()
        self._mine = threading.local()
        self._fds: set[int] = set()  # open lock-file descriptors, closed in a forked child

    @contextmanager
    def held(self) -> Iterator[None]:
        if getattr(self._mine, "held", False):
            yield
            return
        deadline = time.monotonic() + self.wait_s
        if not self._threads.acquire(timeout=self.wait_s):
            yield  # SQLite's busy_timeout decides
            return
        self._mine.held = True
        fd: int | None = None
        try:
            fd = self._flock(max(0.0, deadline - time.monotonic()))
            yield
        finally:
            if fd is not None:
                self._close(fd)  # closing the descriptor releases the flock
            self._mine.held = False
            self._threads.release()

    def _flock(self, wait_s: float) -> int | None:
        """A descriptor of the lock file holding the flock, or None (not got within ``wait_s``)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return None  # a read-only folder: SQLite's own wait only
        self._fds.add(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        except OSError:  # a filesystem without flock
            self._close(fd)
            return None
        # Another process writes. flock has no timeout, so a helper thread blocks in it (the kernel
        # wakes it on release) while this one waits at most wait_s; if that passes first, the
        # helper closes the descriptor whenever it gets the lock, and never holds it.
        got = threading.Event()
        decided = threading.Lock()
        abandoned = False

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                return
            with decided:
                if abandoned:
                    self._close(fd)
                else:
                    got.set()

        threading.Thread(target=wait, name="write-lock-wait", daemon=True).start()
        if got.wait(wait_s):
            return fd
        with decided:
            if got.is_set():
                return fd
            abandoned = True
        return None

    def _close(self, fd: int) -> None:
        self._fds.discard(fd)
        os.close(fd)

    def _after_fork_in_child(self) -> None:
        """The parent's threads and descriptors are not ours: a copy of a descriptor that holds
        the flock would keep it held for as long as this child lives."""
        for fd in list(self._fds):
            os.close(fd)
        self._fds.clear()
        self._threads = threading.Lock()
        self._mine = threading.local()


class Database:
    """Engines and sessions for one URL; ``reading()`` and ``writing()`` are all callers need."""

    def __init__(
        self,
        url: str,
        *,
        pool_kept: int = POOL_KEPT,
        pool_max: int = POOL_MAX,
        pool_timeout_s: float = POOL_TIMEOUT_S,
    ) -> None:
        self.url = url
        self._pool = {
            "pool_size": pool_kept,
            "max_overflow": pool_max - pool_kept,
            "pool_timeout": pool_timeout_s,
        }
        try:
            self.engine = self._make_engine(immediate=False)
            self.is_sqlite = self.engine.dialect.name == "sqlite"
            # Relaxed durability (writing(durable=False)): committed without waiting for the disk, so
            # it survives a killed process, not a power cut. For rows that matter only until then.
            if self.is_sqlite:
                self.writer = self._make_engine(immediate=True)
                self.relaxed = self._make_engine(immediate=True, durable=False)
            else:
                self.writer = self.engine
                self.relaxed = self._make_engine(immediate=True, durable=False)
            migrate.upgrade(self.engine, self.writer)
        except SQLAlchemyError as exc:
            error = translate(exc)
            raise type(error)(f"cannot open ledger {make_url(url).render_as_string()}: {error}") from exc
        self.write_lock = self._write_lock()
        _open.add(self)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads; on SQLite it takes no lock until it reads."""
        with translated(), Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def writing(self, *, durable: bool = True) -> Iterator[Session]:
        """One write transaction: commits on exit, rolls back on any exception.

        ``durable=False`` commits without waiting for the disk (SQLite ``synchronous=NORMAL``,
        PostgreSQL ``synchronous_commit=off``): the row survives a killed process but maybe not
        a power cut, which is all a write intent or a feed's cursor needs, at a fraction of the cost.
        """
        engine = self.writer if durable else self.relaxed
        with (
            self.write_lock.held(),
            translated(),
            Session(engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def writing_direct(self, *, durable: bool = True) -> Iterator[DirectWrite]:
        """``writing`` for the one transaction of each received instance: BEGIN and COMMIT issued
        on the driver's connection, checked out of the pool as it is (no Core ``Connection`` or
        ORM session unless a caller asks for one). The ORM's unit of work around a handful of
        statements cost more CPU than they did (about 0.09 ms of 0.1 ms for an empty transaction),
        and a Core connection's checkout twice the pool's own. Same lock, same engine, same commit:
        on SQLite ``synchronous=FULL`` (durable) waits for the WAL's fsync, as ``writing`` does."""
        engine = self.writer if durable else self.relaxed
        with self.write_lock.held(), translated():
            tx = DirectWrite.checkout(engine)
            try:
                tx.begin()
                yield tx
                tx.commit()
            except BaseException:
                tx.rollback()
                raise
            finally:
                tx.close()

    @contextmanager
    def writing_connection(self, *, durable: bool = True) -> Iterator[Connection]:
        """``writing`` without the ORM session's bookkeeping, for the statements that run once
        per received instance (a write intent): a Core connection in one transaction."""
        engine = self.writer if durable else self.relaxed
        with self.write_lock.held(), translated(), engine.begin() as conn:
            yield conn

    def schema_revision(self) -> str | None:
        with translated():
            return migrate.schema_revision(self.engine)

    def close(self) -> None:
        for engine in {self.engine, self.writer, self.relaxed}:
            engine.dispose()
        _open.discard(self)

    def _forget_connections(self) -> None:
        """In a forked child: drop the parent's pooled connections without closing them (they are
        the parent's), so the child opens its own."""
        for engine in {self.engine, self.writer, self.relaxed}:
            engine.dispose(close=False)
        self.write_lock._after_fork_in_child()

    def _write_lock(self) -> WriteLock | _NoLock:
        parsed = make_url(self.url)
        if not self.is_sqlite or not parsed.database or parsed.database == ":memory:":
            return _NoLock()  # PostgreSQL locks rows; an in-memory database has one connection
        return WriteLock(Path(parsed.database + WRITE_LOCK_SUFFIX))

    def _make_engine(self, *, immediate: bool, durable: bool = True) -> Engine:
        parsed = make_url(self.url)
        if parsed.get_backend_name() != "sqlite":
            relaxed = {} if durable else {"connect_args": {"options": PG_ASYNC_COMMIT}}
            return create_engine(self.url, pool_pre_ping=True, **relaxed, **self._pool)
        synchronous = "FULL" if durable else "NORMAL"
        in_memory = not parsed.database or parsed.database == ":memory:"
        if not in_memory:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        pool = {} if in_memory else self._pool  # an in-memory database lives in its single connection
        engine = create_engine(self.url, connect_args={"check_same_thread": False}, **pool)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is deferred)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode = WAL")
            # FULL: an acknowledged instance survives power loss; NORMAL only on the relaxed engine.
            cur.execute(f"PRAGMA synchronous = {synchronous}")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute(
                "PRAGMA case_sensitive_like = ON"
            )  # C-FIND wildcards are case-sensitive, as in PostgreSQL
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            if conn.connection.dbapi_connection.in_transaction:
                return  # begun on the driver (DirectWrite); a session joining it adds no BEGIN
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine


class DirectWrite:
    """One write transaction begun, committed or rolled back on the driver's connection of a
    pooled connection (``pooled``). ``conn`` is a Core connection on it and ``session`` an ORM
    session in that same transaction, each made only when asked (a new version's checks, an origin
    row): the session's pending rows are flushed before the commit."""

    __slots__ = ("_conn", "_driver", "_engine", "_error", "_pooled", "_session", "_sqlite", "dialect")

    def __init__(self, engine: Engine, pooled: PoolProxiedConnection) -> None:
        self._engine = engine
        self._pooled = pooled
        self.dialect = engine.dialect
        self._driver = pooled.driver_connection
        self._error = engine.dialect.loaded_dbapi.Error
        self._sqlite = engine.dialect.name == "sqlite"
        self._conn: Connection | None = None
        self._session: Session | None = None

    @classmethod
    def checkout(cls, engine: Engine) -> DirectWrite:
        """A connection from ``engine``'s pool; a driver's error on connecting is wrapped as
        SQLAlchemy wraps it (``Engine.connect`` does), so it is translated as every other."""
        try:
            pooled = engine.raw_connection()
        except engine.dialect.loaded_dbapi.Error as exc:
            raise sa_exc.DBAPIError.instance("connect", None, exc, engine.dialect.loaded_dbapi.Error) from exc
        return cls(engine, pooled)

    @property
    def driver(self) -> Any:
        """The driver's own connection (sqlite3, psycopg): what db/hot.py runs statements on."""
        return self._driver

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            self._conn = Connection(self._engine, connection=self._pooled)
        return self._conn

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = Session(bind=self.conn, expire_on_commit=False, autoflush=True)
        return self._session

    def begin(self) -> None:
        """SQLite: ``BEGIN IMMEDIATE`` (the write lock before the head is read, as the writer
        engine's own begin). psycopg opens a transaction at the first statement by itself."""
        if self._sqlite:
            try:
                self._driver.execute("BEGIN IMMEDIATE")
            except self._error as exc:
                raise self._wrapped("BEGIN IMMEDIATE", exc) from exc

    def commit(self) -> None:
        if self._session is not None:
            self._session.flush()
        try:
            self._driver.commit()
        except self._error as exc:
            raise self._wrapped("COMMIT", exc) from exc
        self._end_session()

    def rollback(self) -> None:
        try:
            self._driver.rollback()
        except self._error:
            self._pooled.invalidate()  # not back into the pool in a state nobody knows
        self._end_session()

    def close(self) -> None:
        """Back to the pool (through the Core connection when one was made: it owns it then)."""
        if self._conn is not None:
            self._conn.close()
        else:
            self._pooled.close()

    def _end_session(self) -> None:
        """The session's own transaction ends on a driver that has none left: a no-op rollback."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def _wrapped(self, what: str, exc: Exception) -> sa_exc.DBAPIError:
        """As SQLAlchemy wraps a driver's error, so ``translate`` maps it as every other."""
        return sa_exc.DBAPIError.instance(what, None, exc, self._error)


class _NoLock:
    @contextmanager
    def held(self) -> Iterator[None]:
        yield

    def _after_fork_in_child(self) -> None:
        pass


def _after_fork_in_child() -> None:
    for database in list(_open):
        database._forget_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)
