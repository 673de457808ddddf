"""The database layer on SQLite and PostgreSQL: SQLAlchemy's errors arrive as ours (a constraint
is a conflict, an exhausted pool or an unreachable server is unavailable, so a peer gets A700),
writes commit or roll back whole, and relaxed writes are still committed."""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text

from dicom_chain.db.database import (
    POOL_MAX,
    POOL_TIMEOUT_S,
    SQLITE_BUSY_TIMEOUT_MS,
    Database,
    WriteLock,
    _NoLock,
)
from dicom_chain.db.migrate import HEAD_REVISION
from dicom_chain.db.models import EventLogHead, FeedCursorRow
from dicom_chain.errors import LedgerConflict, LedgerError, LedgerUnavailable

CURSORS = FeedCursorRow.__table__


def _cursor(target: str) -> dict:
    return {"target": target, "seq": 0, "lease_owner": "", "lease_until": 0.0}


def _count(db: Database) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(CURSORS)))


def test_a_refused_constraint_is_a_conflict_and_nothing_of_the_transaction_stays(db_url: str):
    db = Database(db_url)
    with pytest.raises(LedgerConflict) as caught, db.writing() as session:
        session.execute(insert(CURSORS), _cursor("udp://a:1"))
        session.execute(insert(CURSORS), _cursor("udp://a:1"))  # same primary key
    assert caught.value.retryable
    assert _count(db) == 0  # the first insert went with the second
    db.close()


def test_an_exhausted_pool_is_unavailable_not_an_unforeseen_error(db_url: str):
    db = Database(db_url, pool_kept=1, pool_max=1, pool_timeout_s=0.2)
    with db.reading() as held:
        held.execute(text("SELECT 1"))  # the one connection is checked out until this block ends
        with pytest.raises(LedgerUnavailable) as caught, db.reading() as second:
            second.execute(text("SELECT 1"))
    assert caught.value.retryable
    with db.reading() as again:  # given back: the pool serves again
        assert again.execute(text("SELECT 1")).scalar() == 1
    db.close()


@pytest.mark.postgres
def test_an_unreachable_server_is_unavailable():
    with pytest.raises(LedgerUnavailable) as caught:
        Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert caught.value.retryable and "127.0.0.1" in str(caught.value)


def test_a_statement_the_database_rejects_is_a_plain_ledger_error(db_url: str):
    db = Database(db_url)
    with pytest.raises(LedgerError) as caught, db.reading() as session:
        session.execute(text("SELECT no_such_column FROM event_log_head"))
    assert type(caught.value) is LedgerError and not caught.value.retryable
    db.close()


def test_relaxed_writes_are_committed_and_seen_by_every_connection(db_url: str):
    db = Database(db_url)
    with db.writing(durable=False) as session:
        session.execute(insert(CURSORS), _cursor("tcp://b:2"))
    other = Database(db_url)  # another process's view
    assert _count(other) == 1
    other.close()
    db.close()


def test_a_new_database_is_migrated_once_to_the_head(db_url: str):
    first = Database(db_url)
    assert first.schema_revision() == HEAD_REVISION
    with first.reading() as session:  # 0001 made the event log's head row
        assert session.scalar(select(EventLogHead.seq)) == 0
    second = Database(db_url)  # already at the head: nothing to do
    assert second.schema_revision() == HEAD_REVISION
    second.close()
    first.close()


def test_the_pool_outlasts_every_association_and_waits_as_long_as_the_lock():
    from scp.server import MAX_ASSOCIATIONS

    assert POOL_MAX > MAX_ASSOCIATIONS
    assert POOL_TIMEOUT_S * 1000 >= SQLITE_BUSY_TIMEOUT_MS


def test_a_forked_child_opens_its_own_connections(db_url: str):
    import os

    db = Database(db_url)
    with db.reading() as session:  # a pooled connection the child must not use
        session.execute(text("SELECT 1"))
    pid = os.fork()
    if pid == 0:  # the child: write through its own connection, report by exit code
        code = 1
        try:
            with db.writing() as session:
                session.execute(insert(CURSORS), _cursor(f"udp://child:{os.getpid()}"))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _count(db) == 1  # and the parent's pooled connection still works
    db.close()


def test_a_locked_sqlite_database_is_unavailable(tmp_path):
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from dicom_chain.db.translate import translate

    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as raw:
        waiter.execute("BEGIN IMMEDIATE")
    error = translate(OperationalError("BEGIN IMMEDIATE", {}, raw.value))
    assert isinstance(error, LedgerUnavailable) and "locked" in str(error)
    holder.close()
    waiter.close()


def _handover_ms(url: str, *, lock_file: bool, hold_s: float = 0.27) -> float:
    """How long after one writer commits a second one, waiting meanwhile, holds the lock."""
    holder, waiter = Database(url), Database(url)
    if not lock_file:
        holder.write_lock = waiter.write_lock = _NoLock()
    holding, released, got = threading.Event(), [0.0], [0.0]

    def hold() -> None:
        with holder.writing() as session:
            session.execute(insert(CURSORS), _cursor(f"udp://h:{time.monotonic_ns()}"))
            holding.set()
            time.sleep(hold_s)
        released[0] = time.perf_counter()

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(10)
    with waiter.writing() as session:
        session.execute(insert(CURSORS), _cursor(f"udp://w:{time.monotonic_ns()}"))
        got[0] = time.perf_counter()
    thread.join()
    holder.close()
    waiter.close()
    return max(0.0, got[0] - released[0]) * 1000


def test_a_waiting_sqlite_writer_is_woken_when_the_lock_is_released(tmp_path):
    """SQLite's busy handler alone sleeps 1..100 ms between looks: released 270 ms into the wait,
    it looks again at 328 ms. Waiting on the lock file, the writer goes on at once."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    rounds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(3):  # alternated: the same load for both
        for lock_file in (True, False):
            rounds[lock_file].append(_handover_ms(url, lock_file=lock_file))
    woken, polled = statistics.median(rounds[True]), statistics.median(rounds[False])
    assert woken < 25, rounds
    assert woken < polled, rounds


def test_a_writer_waits_for_the_lock_file_only_so_long_then_sqlite_decides(tmp_path):
    """A holder that stopped (SIGSTOP) with the lock file but without SQLite's lock delays the next
    writer by WriteLock.wait_s, not forever; the waiter's helper then never keeps the lock."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    stuck, writer = Database(url), Database(url)
    assert isinstance(writer.write_lock, WriteLock)
    writer.write_lock.wait_s = 0.3
    with stuck.write_lock.held():
        started = time.perf_counter()
        with writer.writing() as session:
            session.execute(insert(CURSORS), _cursor("udp://a:1"))
        waited = time.perf_counter() - started
    assert 0.25 < waited < 10
    deadline = time.monotonic() + 10  # the helper gets the lock file once released, and closes it
    while writer.write_lock._fds and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not writer.write_lock._fds
    started = time.perf_counter()
    with stuck.writing() as session:
        session.execute(insert(CURSORS), _cursor("udp://a:2"))
    assert time.perf_counter() - started < 0.25  # nobody holds it now
    assert _count(writer) == 2
    stuck.close()
    writer.close()


# -- writing_direct: the receipt's transaction, begun and committed on the driver ----------------

_INSERT_CURSOR = "INSERT INTO feed_cursors (target, seq, lease_owner, lease_until) VALUES ({})"


def _direct_insert(tx, target: str) -> None:
    from dicom_chain.db.hot import HotCursor, HotSQL

    values = ":target, :seq, :lease_owner, :lease_until"
    HotCursor(tx.conn).run(HotSQL(_INSERT_CURSOR.format(values)), _cursor(target))


def test_a_direct_write_commits_durably_before_it_returns(db_url: str):
    db = Database(db_url)
    with db.writing_direct() as tx:
        cur = tx.conn.connection.driver_connection.cursor()
        if db.is_sqlite:  # FULL: the commit waits for the WAL's fsync; WAL: readers go on meanwhile
            assert cur.execute("PRAGMA synchronous").fetchone()[0] == 2
            assert cur.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        else:  # the server's default, not the relaxed engine's "off"
            cur.execute("SHOW synchronous_commit")
            assert cur.fetchone()[0] == "on"
        _direct_insert(tx, "tcp://d:1")
    other = Database(db_url)  # another process's view, right after the block ends
    assert _count(other) == 1
    other.close()
    db.close()


def test_a_failing_direct_write_leaves_no_row_and_a_clean_connection(db_url: str):
    db = Database(db_url, pool_kept=1, pool_max=1)  # the one connection must come back usable
    with pytest.raises(LedgerConflict), db.writing_direct() as tx:
        _direct_insert(tx, "tcp://d:1")
        tx.session.execute(insert(CURSORS), _cursor("tcp://d:2"))  # the lazy session: same transaction
        _direct_insert(tx, "tcp://d:1")  # same primary key
    assert _count(db) == 0  # both earlier rows went with the refused one
    with pytest.raises(RuntimeError), db.writing_direct() as tx:
        _direct_insert(tx, "tcp://d:3")
        raise RuntimeError("anything, not only the database's")
    assert _count(db) == 0
    with db.writing_direct() as tx:  # the pooled connection is in no transaction left over
        _direct_insert(tx, "tcp://d:4")
    assert _count(db) == 1
    db.close()


def test_a_direct_write_and_its_session_commit_together(db_url: str):
    db = Database(db_url)
    with db.writing_direct() as tx:
        _direct_insert(tx, "tcp://d:1")
        tx.session.add(FeedCursorRow(**_cursor("tcp://d:2")))  # flushed at the commit
        assert tx.session.scalar(select(func.count()).select_from(CURSORS)) == 2  # sees the driver's row
    assert _count(db) == 2
    db.close()


def test_a_direct_write_on_sqlite_holds_the_write_lock_from_its_start(tmp_path):
    import sqlite3

    db = Database(f"sqlite:///{tmp_path / 'l.db'}")
    other = sqlite3.connect(tmp_path / "l.db", isolation_level=None, timeout=0)
    # BEGIN IMMEDIATE before any statement: no writer in between
    with db.writing_direct(), pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # released at the commit
    other.execute("ROLLBACK")
    other.close()
    db.close()


def test_a_direct_write_that_cannot_connect_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The driver's connection comes straight from the pool, not through ``Engine.connect``: a
    driver's error on connecting must still arrive as ours (retryable: A700 to a modality)."""
    db = Database(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.writer.dispose()  # no pooled connection left: the next checkout connects

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(db.writer.dialect.loaded_dbapi, "connect", refuse)
    with pytest.raises(LedgerUnavailable), db.writing_direct():
        pass
    monkeypatch.undo()
    with db.writing_direct() as tx:  # and the pool is not left short of a connection
        _direct_insert(tx, "tcp://d:1")
    assert _count(db) == 1
    db.close()
