"""Query index rows written after the C-STORE response, off the path a sender waits on.

The receipt commits block, receipt event and outbox rows, durably; the response goes out; the
instance's index rows (and any ``patient.identity-conflict`` events they bring, in the same
transaction, so each is recorded once: the identity row and its event commit or vanish together)
follow in batches on a thread of their own. The index is derived data, so its batches commit
with relaxed durability (a killed process loses none; a power cut may, and the start repairs it).

What a reader is promised: every index reader of this process (``index.find``, ``count``,
``stored_syntaxes``, the sharing facts) first writes what is pending here (``index.before_read``),
so a C-FIND, C-MOVE or C-GET *to this process* sees every instance whose C-STORE response it sent
before the query arrived. Another process on the same database (scale-out) sees it once its
batch commits: normally within ``INDEX_QUIET_S``, at most ``INDEX_BATCH`` instances later while
the sender keeps sending (docs/design.md 6).

A process killed between a receipt's commit and its index batch leaves blocks the index lacks.
``repair`` (``Node.open``) indexes every block of each chain above its mark (``index_marks``)
that is neither indexed nor superseded by a later version, from its stored file, then moves the
mark to the head it read first: blocks below it are indexed, by this start or by whoever had them.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dicom_chain.actors import local_user
from dicom_chain.block import Block
from dicom_chain.carriers.registry import open_file
from dicom_chain.db.database import Database
from dicom_chain.db.models import BlockRow, ChainRow, IndexMarkRow
from dicom_chain.errors import DicomChainError
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import StoredBlock, append_event
from dicom_chain.qr import index
from dicom_chain.storage import Storage

log = logging.getLogger(__name__)

# Instances per index transaction. While a modality sends, the writer takes the database's write
# lock once per this many receipts (on SQLite a receipt that meets it waits for it), and this
# bounds how far another process's view lags behind this one's while instances keep arriving.
INDEX_BATCH = 64
# A batch is written once no instance has arrived for this long (or it is full): a burst's rows
# go in one transaction, and an idle gateway's index is complete a moment after its last store.
INDEX_QUIET_S = 0.05
# After the database refused a batch (unavailable: locked, unreachable), wait before trying again.
INDEX_RETRY_S = 1.0

BLOCKS = BlockRow.__table__
MARKS = IndexMarkRow.__table__


@dataclass(frozen=True)
class Entry:
    """One committed instance's index rows, and who sent it (the actor of a conflict event)."""

    record: index.IndexRecord
    block: Block
    path: str
    version: int
    actor: str


class IndexQueue:
    """The index rows of this process's committed receipts, until written."""

    def __init__(self, db: Database, key: NodeKey) -> None:
        self.db = db
        self.key = key
        self._pending: deque[Entry] = deque()
        self._arrived = threading.Condition()
        self._writing = threading.Lock()  # one writer at a time, in put order
        self._thread: threading.Thread | None = None
        self._closed = False
        self._puts = 0  # entries ever put: the writer tells a quiet moment by it not moving
        index.on_read(db, self.flush)
        _queues.add(self)

    def _after_fork_in_child(self) -> None:
        """A forked child has no writer thread: fresh locks, and what is pending stays the
        parent's to write. (A fork waits for a batch in progress: ``_before_fork``.)"""
        self._pending.clear()
        self._arrived = threading.Condition()
        self._writing = threading.Lock()
        self._thread = None

    def put(self, entry: Entry) -> None:
        with self._arrived:
            if self._closed:
                raise RuntimeError("index queue closed")
            self._pending.append(entry)
            self._puts += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
                self._thread.start()
            if len(self._pending) in (1, INDEX_BATCH):
                # Woken for the first entry and for a full batch only: in between it looks once per
                # INDEX_QUIET_S. A wake per put cost each instance its GIL twice over (strace:
                # ~4 futex hand-offs per put, at 100 instances/s on one association).
                self._arrived.notify()

    def __len__(self) -> int:
        return len(self._pending)

    def flush(self) -> None:
        """Write every entry put before this call; the database's error if it cannot (the entries
        stay pending)."""
        with self._writing:
            while True:
                with self._arrived:
                    batch = [self._pending.popleft() for _ in range(min(INDEX_BATCH, len(self._pending)))]
                if not batch:
                    return
                try:
                    self._write(batch)
                except BaseException:
                    with self._arrived:
                        self._pending.extendleft(reversed(batch))
                    raise

    def close(self) -> None:
        """Write what is pending and stop; what cannot be written now, the next start repairs."""
        with self._arrived:
            self._closed = True
            self._arrived.notify()
        if self._thread is not None:
            self._thread.join()
        try:
            self.flush()
        except DicomChainError as exc:
            log.warning(
                "index rows of %d instances not written (%s); the next start adds them", len(self), exc
            )
        index.on_read(self.db, None)

    def _run(self) -> None:
        while True:
            with self._arrived:
                while not self._pending and not self._closed:
                    self._arrived.wait()
                if self._closed:
                    return
                while self._pending and len(self._pending) < INDEX_BATCH and not self._closed:
                    before = self._puts
                    self._arrived.wait(INDEX_QUIET_S)  # a full batch or close() cuts it short
                    if self._puts == before:
                        break  # quiet: write what there is
            try:
                self.flush()
            except DicomChainError as exc:
                log.warning("index rows not written yet (%s); retrying in %.0f s", exc, INDEX_RETRY_S)
                with self._arrived:
                    self._arrived.wait(INDEX_RETRY_S)

    def _write(self, batch: list[Entry]) -> None:
        """One transaction; an entry the database refuses on its own (not for being unavailable)
        is logged and left to the next start's repair, so it cannot hold back every later one."""
        try:
            with self.db.writing(durable=False) as session:
                memo: index.Memo = {}  # a study's patient, study and series rows: once per batch
                for entry in batch:
                    self._write_one(session, entry, memo)
        except DicomChainError as exc:
            if exc.retryable or len(batch) == 1:
                if not exc.retryable:
                    log.error("index rows of %s refused: %s", batch[0].block.header.sop_instance_uid, exc)
                    return
                raise
            for entry in batch:
                self._write([entry])

    def _write_one(self, session: Session, entry: Entry, memo: index.Memo) -> None:
        conflicts = index.write(
            session, entry.record, block=entry.block, path=entry.path, version=entry.version, memo=memo
        )
        for conflict in conflicts:
            append_event(session, self.key, conflict.draft(entry.block.header.chain_id, entry.actor))

    # -- repair at start ------------------------------------------------------------------------

    def repair(self, storage: Storage) -> int:
        """Index the blocks a killed process committed but never indexed; returns how many."""
        with self.db.reading() as session:
            heads = list(session.execute(select(ChainRow.chain_id, ChainRow.head_height)))
            marks = {row[0]: row[1] for row in session.execute(select(MARKS.c.chain_id, MARKS.c.height))}
        done = 0
        for chain_id, head in heads:
            mark = marks.get(chain_id, -1)
            if head > mark:
                entries = list(self._unindexed(storage, chain_id, mark, head))
                for at in range(0, len(entries), INDEX_BATCH):
                    self._write(entries[at : at + INDEX_BATCH])
                done += len(entries)
            if head != mark:
                with self.db.writing() as session:
                    session.execute(_move_mark(session, chain_id, head))
        if done:
            log.info("index: %d instances committed before a stop but not indexed, indexed now", done)
        return done

    def _unindexed(self, storage: Storage, chain_id: str, mark: int, head: int) -> Iterable[Entry]:
        later = BLOCKS.alias("later")
        stmt = (
            select(BLOCKS)
            .where(
                BLOCKS.c.chain_id == chain_id,
                BLOCKS.c.height > mark,
                BLOCKS.c.height <= head,
                ~exists().where(
                    index.INSTANCES.c.sop_instance_uid == BLOCKS.c.sop_instance_uid,
                    index.INSTANCES.c.block_hash == BLOCKS.c.block_hash,
                ),
                ~exists().where(
                    and_(
                        later.c.chain_id == BLOCKS.c.chain_id,
                        later.c.sop_instance_uid == BLOCKS.c.sop_instance_uid,
                        later.c.version > BLOCKS.c.version,
                    )
                ),
            )
            .order_by(BLOCKS.c.height)
        )
        with self.db.reading() as session:
            rows = [StoredBlock.from_row(row) for row in session.execute(stmt)]
        actor = local_user()  # the sender's AE title is not kept beside the block
        for stored in rows:
            try:
                carried = open_file(storage.path(stored.path))
                values = carried.index_values()
                encoding = carried.identity().encoding
            except (OSError, DicomChainError) as exc:
                log.warning("index: %s not indexed, its file does not read (%s)", stored.path, exc)
                continue
            if values is None:  # a format without a query model
                continue
            record = index.IndexRecord.from_values(values, encoding)
            yield Entry(record, stored.block, stored.path, stored.version, actor)


_queues: weakref.WeakSet[IndexQueue] = weakref.WeakSet()


def _before_fork() -> None:
    """No batch's transaction open across a fork: SQLite's lock state, copied mid-transaction,
    is not the child's to use."""
    for queue in list(_queues):
        queue._writing.acquire()


def _after_fork_in_parent() -> None:
    for queue in list(_queues):
        queue._writing.release()


def _after_fork_in_child() -> None:
    for queue in list(_queues):
        queue._after_fork_in_child()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


def _move_mark(session: Session, chain_id: str, height: int) -> Any:
    """The mark moves forward only: two processes starting together may repair at once."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(MARKS).values(chain_id=chain_id, height=height)
    return stmt.on_conflict_do_update(
        index_elements=["chain_id"], set_={"height": stmt.excluded.height}, where=MARKS.c.height < height
    )
