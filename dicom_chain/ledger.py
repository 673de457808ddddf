"""The ledger: chains of blocks and the hash-linked event log, on a Database (db/).

Appends are serialised per chain by locking the chain's head row (``SELECT ... FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), and the unique constraints back that up: two writers,
in one process or several, can never hand out the same height or event sequence number.
Everything else the database holds (the query index, the forward queue, process state) belongs
to its own module; a receipt puts them in one transaction (receipt.py).
"""

from __future__ import annotations

import uuid
from collections import namedtuple
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from dicom_chain.block import GENESIS_HASH, Block, utc_now
from dicom_chain.db.database import Database, DirectWrite
from dicom_chain.db.hot import HotCursor, HotSQL, insert_sql
from dicom_chain.db.models import BlockRow, ChainRow, EventLogHead, EventRow
from dicom_chain.errors import LedgerConflict, LedgerError
from dicom_chain.events import EVENT_FIELDS, Event, EventDraft
from dicom_chain.keys import NodeKey

ITER_BATCH = 1_000  # rows fetched at a time when walking a whole chain or log
LOOKUP_BATCH = 500  # values in one IN (...) list: well below every database's limit on parameters
ENSURE_CHAIN_ATTEMPTS = 2  # a lost race to register the chain is retried once: the winner's row is there


@dataclass(frozen=True)
class StoredBlock:
    """A block as the ledger holds it, with where its file is."""

    block: Block
    block_hash: str
    path: str
    version: int
    sop_class_uid: str
    series_instance_uid: str
    stored_header: str  # the row's canonical block text, compared byte for byte by verify

    @classmethod
    def from_row(cls, row: Any) -> StoredBlock:  # an ORM BlockRow or a Core row of blocks
        return cls(
            block=Block.from_bytes(row.block.encode("utf-8")),
            block_hash=row.block_hash,
            path=row.path,
            version=row.version,
            sop_class_uid=row.sop_class_uid,
            series_instance_uid=row.series_instance_uid,
            stored_header=row.block,
        )


@dataclass(frozen=True)
class ChainInfo:
    chain_id: str
    public_key: bytes
    key_id: str
    institution: str
    head_height: int
    head_hash: str


class Appender:
    """One locked append transaction on one chain: read the head, add blocks and events, commit.

    Constant SQL on the driver's cursor (db/hot.py), not SQLAlchemy statements: this runs once
    per received instance, and SQLAlchemy's per-statement work cost more than the SQL itself.
    """

    def __init__(
        self,
        tx: Session | DirectWrite,
        chain_id: str,
        head_height: int,
        head_hash: str,
        cursor: HotCursor | None = None,
    ) -> None:
        self._tx = tx
        self.chain_id = chain_id
        self.head_height = head_height
        self.head_hash = head_hash
        self.cursor = cursor or HotCursor(tx)

    @property
    def session(self) -> Session:
        """An ORM session in this transaction; on a ``DirectWrite`` made only when first asked."""
        return self._tx if isinstance(self._tx, Session) else self._tx.session

    def latest_version(self, sop_instance_uid: str) -> StoredBlock | None:
        row = self.cursor.run(_LATEST_VERSION, {"chain": self.chain_id, "sop": sop_instance_uid}).fetchone()
        return StoredBlock.from_row(_LatestRow(*row)) if row else None

    def study_head(self, study_instance_uid: str) -> tuple[int, str] | None:
        """(index, block hash) of the newest block of this study, or None for a new study."""
        row = self.cursor.run(_STUDY_HEAD, {"chain": self.chain_id, "study": study_instance_uid}).fetchone()
        return (row[0], row[1]) if row else None

    def add_block(
        self, block: Block, *, path: str, version: int, sop_class_uid: str, series_instance_uid: str
    ) -> None:
        h = block.header
        if h.chain_id != self.chain_id or h.height != self.head_height + 1 or h.prev_hash != self.head_hash:
            raise LedgerError(f"block {h.height} does not follow head {self.head_height} of {self.chain_id}")
        self.cursor.run(
            _INSERT_BLOCK,
            {
                "chain_id": h.chain_id,
                "height": h.height,
                "block_hash": block.hash,
                "prev_hash": h.prev_hash,
                "content_hash": h.content_hash,
                "sop_instance_uid": h.sop_instance_uid,
                "sop_class_uid": sop_class_uid,
                "version": version,
                "study_instance_uid": h.study_instance_uid,
                "series_instance_uid": series_instance_uid,
                "study_index": h.study_index,
                "study_prev_hash": h.study_prev_hash,
                "timestamp": h.timestamp,
                "path": path,
                "block": block.to_bytes().decode("utf-8"),
            },
        )
        self.cursor.run(_MOVE_HEAD, {"chain": self.chain_id, "height": h.height, "hash": block.hash})
        self.head_height, self.head_hash = h.height, block.hash

    def add_event(self, key: NodeKey, draft: EventDraft) -> Event:
        """On this transaction's cursor: no ORM session is made for it (one cost ~0.05 ms to open
        and close, more than the event's two statements)."""
        return append_event(None, key, draft, self.cursor)


BLOCKS = BlockRow.__table__
CHAINS = ChainRow.__table__
EVENTS = EventRow.__table__
EVENT_HEAD = EventLogHead.__table__
_BLOCK_COLUMNS = (
    "chain_id",
    "height",
    "block_hash",
    "prev_hash",
    "content_hash",
    "sop_instance_uid",
    "sop_class_uid",
    "version",
    "study_instance_uid",
    "series_instance_uid",
    "study_index",
    "study_prev_hash",
    "timestamp",
    "path",
    "block",
)
_INSERT_BLOCK = insert_sql("blocks", _BLOCK_COLUMNS)
_LatestRow = namedtuple("_LatestRow", "block block_hash path version sop_class_uid series_instance_uid")
_LATEST_VERSION = HotSQL(
    f"SELECT {', '.join(_LatestRow._fields)} FROM blocks WHERE chain_id = :chain AND sop_instance_uid = :sop"
    " ORDER BY version DESC LIMIT 1"
)
_STUDY_HEAD = HotSQL(
    "SELECT study_index, block_hash FROM blocks WHERE chain_id = :chain AND study_instance_uid = :study"
    " ORDER BY study_index DESC LIMIT 1"
)
# SQLite has no row locks: its writer holds the database from BEGIN IMMEDIATE (db/database.py).
_HEAD_LOCKED = HotSQL(
    "SELECT head_height, head_hash FROM chains WHERE chain_id = :chain",
    "SELECT head_height, head_hash FROM chains WHERE chain_id = :chain FOR UPDATE",
)
_MOVE_HEAD = HotSQL("UPDATE chains SET head_height = :height, head_hash = :hash WHERE chain_id = :chain")
_EVENT_HEAD_LOCKED = HotSQL(
    "SELECT seq, hash FROM event_log_head WHERE id = 1",
    "SELECT seq, hash FROM event_log_head WHERE id = 1 FOR UPDATE",
)
_MOVE_EVENT_HEAD = HotSQL("UPDATE event_log_head SET seq = :seq, hash = :hash WHERE id = 1")
_INSERT_EVENT = insert_sql("events", [f.name for f in EVENT_FIELDS])
_EVENTS_AFTER = (
    select(EVENTS).where(EVENTS.c.seq > bindparam("seq")).order_by(EVENTS.c.seq).limit(bindparam("limit"))
)


def append_event(
    session: Session | None, key: NodeKey, draft: EventDraft, cursor: HotCursor | None = None
) -> Event:
    """Seal ``draft`` after the log's head, inside the caller's transaction (head row locked):
    on ``cursor`` when given (then ``session`` may be None), else on the session's connection."""
    if cursor is None:
        if session is None:
            raise TypeError("append_event needs a session or a cursor")
        cursor = HotCursor(session)
    seq, prev = cursor.run(_EVENT_HEAD_LOCKED, {}).fetchone()
    sealed = Event.seal(draft, seq + 1, prev, key)
    row = sealed.stored()  # its hash computed once more, not again for the head
    cursor.run(_INSERT_EVENT, row)
    cursor.run(_MOVE_EVENT_HEAD, {"seq": sealed.seq, "hash": row["hash"]})
    return sealed


def append_events(session: Session, key: NodeKey, drafts: list[EventDraft]) -> list[Event]:
    """``append_event`` for several drafts: one head read, one insert, one head move (a batch
    settled by the forwarder is recorded while the write lock is held, so its statements count)."""
    if not drafts:
        return []
    cursor = HotCursor(session)
    seq, prev = cursor.run(_EVENT_HEAD_LOCKED, {}).fetchone()
    sealed, rows = [], []
    for draft in drafts:
        event = Event.seal(draft, seq + 1, prev, key)
        sealed.append(event)
        rows.append(event.stored())
        seq, prev = event.seq, rows[-1]["hash"]
    cursor.run_many(_INSERT_EVENT, rows)
    cursor.run(_MOVE_EVENT_HEAD, {"seq": seq, "hash": prev})
    return sealed


class Ledger:
    """Chains, blocks and events on ``db`` (a Database, or a URL to open one that the ledger then
    owns and closes)."""

    def __init__(self, db: Database | str) -> None:
        self._owns_db = not isinstance(db, Database)
        self.db = Database(db) if isinstance(db, str) else db

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    # -- writing --------------------------------------------------------------------------------

    def ensure_chain(self, key: NodeKey, institution: str) -> str:
        """The chain this key signs; made (empty, head -1) the first time the key is seen.

        Processes starting together may race to make it: the unique public key lets one win,
        and the others read the winner's row.
        """
        for _attempt in range(ENSURE_CHAIN_ATTEMPTS):
            try:
                with self.db.writing() as session:
                    row = session.scalars(
                        select(ChainRow).where(ChainRow.public_key == key.public_key.hex())
                    ).first()
                    if row is not None:
                        return row.chain_id
                    chain_id = str(uuid.uuid4())
                    session.add(
                        ChainRow(
                            chain_id=chain_id,
                            public_key=key.public_key.hex(),
                            key_id=key.key_id,
                            institution=institution,
                            created_at=utc_now(),
                            head_height=-1,
                            head_hash=GENESIS_HASH,
                        )
                    )
                return chain_id
            except LedgerConflict:
                continue
        raise LedgerError("could not register this node's chain")

    @contextmanager
    def append(self, chain_id: str) -> Iterator[Appender]:
        """Lock the chain's head for one append; commits on exit, rolls back on any exception."""
        with self.db.writing_direct() as tx:
            cursor = HotCursor(tx)
            head = cursor.run(_HEAD_LOCKED, {"chain": chain_id}).fetchone()
            if head is None:
                raise LedgerError(f"no chain {chain_id} in this ledger")
            yield Appender(tx, chain_id, head[0], head[1], cursor)

    def lock_heads(self, session: Session) -> None:
        """Lock every chain's head in ``session``: no append is between its file and its commit
        until this transaction ends (recovery decides what a file without a block is)."""
        session.execute(select(CHAINS.c.chain_id).with_for_update()).all()

    def record(self, key: NodeKey, draft: EventDraft) -> Event:
        """Append one event on its own (service start, query, policy decision, ...)."""
        with self.db.writing() as session:
            return append_event(session, key, draft)

    # -- reading --------------------------------------------------------------------------------

    def chains(self) -> list[ChainInfo]:
        with self.db.reading() as session:
            return [
                ChainInfo(
                    r.chain_id,
                    bytes.fromhex(r.public_key),
                    r.key_id,
                    r.institution,
                    r.head_height,
                    r.head_hash,
                )
                for r in session.scalars(select(ChainRow).order_by(ChainRow.created_at))
            ]

    def iter_blocks(self, chain_id: str) -> Iterator[tuple[int, StoredBlock | str]]:
        """(height, block) in height order; a row that no longer decodes yields its error text."""
        with self.db.reading() as session:
            rows = session.scalars(
                select(BlockRow)
                .where(BlockRow.chain_id == chain_id)
                .order_by(BlockRow.height)
                .execution_options(yield_per=ITER_BATCH)
            )
            for row in rows:
                try:
                    yield row.height, StoredBlock.from_row(row)
                except Exception as exc:
                    yield row.height, f"ledger row at height {row.height} does not decode: {exc}"

    def block_hashes(self, chain_id: str, heights: Iterable[int]) -> dict[int, str]:
        """The recorded block hash at each of ``heights`` the chain has (verify FILES checks the
        links whose predecessor is not among the files given against these)."""
        wanted = sorted(set(heights))
        found: dict[int, str] = {}
        with self.db.reading() as session:
            for at in range(0, len(wanted), LOOKUP_BATCH):
                rows = session.execute(
                    select(BLOCKS.c.height, BLOCKS.c.block_hash).where(
                        BLOCKS.c.chain_id == chain_id, BLOCKS.c.height.in_(wanted[at : at + LOOKUP_BATCH])
                    )
                )
                found.update({row.height: row.block_hash for row in rows})
        return found

    def study_block_hashes(self, chain_id: str, study_uids: Iterable[str]) -> dict[tuple[str, int], str]:
        """The recorded block hash of every block of these studies, by (study UID, index)."""
        wanted = sorted(set(study_uids))
        found: dict[tuple[str, int], str] = {}
        with self.db.reading() as session:
            for at in range(0, len(wanted), LOOKUP_BATCH):
                rows = session.execute(
                    select(BLOCKS.c.study_instance_uid, BLOCKS.c.study_index, BLOCKS.c.block_hash).where(
                        BLOCKS.c.chain_id == chain_id,
                        BLOCKS.c.study_instance_uid.in_(wanted[at : at + LOOKUP_BATCH]),
                    )
                )
                found.update({(row.study_instance_uid, row.study_index): row.block_hash for row in rows})
        return found

    def path_of_block(self, session: Session, block_hash: str) -> str | None:
        """The stored file the block with this hash names, if the ledger has that block."""
        return session.scalar(select(BLOCKS.c.path).where(BLOCKS.c.block_hash == block_hash))

    def has_file(self, session: Session, path: str) -> bool:
        """Whether a block of any chain names ``path`` (read in the caller's transaction)."""
        return session.scalar(select(func.count()).select_from(BLOCKS).where(BLOCKS.c.path == path)) > 0

    def block_count(self, chain_id: str | None = None) -> int:
        with self.db.reading() as session:
            query = select(func.count()).select_from(BlockRow)
            if chain_id is not None:
                query = query.where(BlockRow.chain_id == chain_id)
            return int(session.scalar(query) or 0)

    def event_head(self) -> tuple[int, str]:
        with self.db.reading() as session:
            seq, head = session.execute(
                select(EVENT_HEAD.c.seq, EVENT_HEAD.c.hash).where(EVENT_HEAD.c.id == 1)
            ).one()
            return seq, head

    def iter_events_with_hash(self) -> Iterator[tuple[Event, str]]:
        """Events in sequence order, each with the hash its row stores (verify recomputes it)."""
        for row in self.iter_event_rows():
            yield Event.from_stored(row._mapping), row.hash

    def iter_events(self) -> Iterator[Event]:
        for item, _ in self.iter_events_with_hash():
            yield item

    def iter_event_rows(
        self, since: str | None = None, until: str | None = None, max_seq: int | None = None
    ) -> Iterator[Any]:
        """Raw rows of ``events`` in sequence order, columns as events.EVENT_FIELDS (exports):
        ``since <= time < until``, streamed."""
        stmt = select(EVENTS).order_by(EVENTS.c.seq)
        if since:
            stmt = stmt.where(EVENTS.c.time >= since)
        if until:
            stmt = stmt.where(EVENTS.c.time < until)
        if max_seq is not None:
            stmt = stmt.where(EVENTS.c.seq <= max_seq)
        with self.db.reading() as session:
            yield from session.connection().execution_options(yield_per=ITER_BATCH).execute(stmt)

    def events_after(self, seq: int, limit: int) -> list[Any]:
        """Up to ``limit`` rows of ``events`` after ``seq``, in order (columns as EVENT_FIELDS)."""
        with self.db.reading() as session:
            return list(session.execute(_EVENTS_AFTER, {"seq": seq, "limit": limit}))

    def institutions(self) -> dict[str, str]:
        """Key id -> institution of the chain that key signs."""
        with self.db.reading() as session:
            rows = session.execute(select(CHAINS.c.key_id, CHAINS.c.institution))
            return {r.key_id: r.institution for r in rows}

    def events_of_types(
        self, types: Iterable[str], session: Session | None = None, before_seq: int | None = None
    ) -> list[Event]:
        """Events of these types in sequence order (``seq < before_seq`` when given), read in
        ``session`` when given: the sharing rules fold them, and a decision reads them in the
        transaction that records it, so that what it saw is exactly the events before it."""
        stmt = select(EVENTS).where(EVENTS.c.type.in_([str(t) for t in types])).order_by(EVENTS.c.seq)
        if before_seq is not None:
            stmt = stmt.where(EVENTS.c.seq < before_seq)
        if session is not None:
            return [Event.from_stored(row._mapping) for row in session.execute(stmt)]
        with self.db.reading() as own:
            return [Event.from_stored(row._mapping) for row in own.execute(stmt)]

    def lock_event_head(self, session: Session) -> tuple[int, str]:
        """Lock the event log's head in ``session`` (until it ends, no event is appended by another
        transaction) and return it: read, decide and record as one step."""
        seq, head = HotCursor(session).run(_EVENT_HEAD_LOCKED, {}).fetchone()
        return int(seq), str(head)

    def event_count(self) -> int:
        with self.db.reading() as session:
            return int(session.scalar(select(func.count()).select_from(EVENTS)) or 0)
