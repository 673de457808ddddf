"""The ledger: chains of blocks and the hash-linked event log, in SQLite or PostgreSQL.

Appends are serialised per chain by locking the chain's head row (``SELECT ... FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), and the unique constraints back that up: two writers,
in one process or several, can never hand out the same height or event sequence number.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, create_engine, event, func, insert, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from dicom_chain import canonjson
from dicom_chain.block import GENESIS_HASH, Block, utc_now
from dicom_chain.db.models import BlockRow, ChainRow, EventLogHead, EventRow, OutboxRow
from dicom_chain.errors import LedgerError
from dicom_chain.events import Event, EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.qr import index
from dicom_chain.qr.query import Level, Query

SQLITE_BUSY_TIMEOUT_MS = 60_000  # writers queue behind one lock; a minute outlasts any burst of stores
PG_MIGRATION_LOCK = 0x44434D49  # advisory lock id ("DCMI"): one process migrates, the others wait
ITER_BATCH = 1_000  # rows fetched at a time when walking a whole chain or log
HEAD_REVISION = "0003"  # the newest migration; a test holds it equal to the migrations folder


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


def _event_from_row(row: EventRow) -> Event:
    return Event(
        seq=row.seq,
        prev_hash=row.prev_hash,
        time=row.time,
        key_id=row.key_id,
        type=row.type,
        outcome=row.outcome,
        actor=row.actor,
        patient_id=row.patient_id,
        study_uid=row.study_uid,
        sop_uid=row.sop_uid,
        chain_id=row.chain_id,
        reason=row.reason,
        details=canonjson.loads(row.details),
        public_key=bytes.fromhex(row.public_key),
        signature=bytes.fromhex(row.signature),
    )


def _make_engine(url: str, immediate: bool) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is deferred)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")  # an acknowledged instance survives power loss
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute(
            "PRAGMA case_sensitive_like = ON"
        )  # C-FIND wildcards are case-sensitive, as in PostgreSQL
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Appender:
    """One locked append transaction on one chain: read the head, add blocks and events, commit.

    SQLAlchemy Core statements, not ORM objects: this runs once per received instance, and the
    unit of work's bookkeeping cost more than the SQL itself.
    """

    def __init__(self, session: Session, chain_id: str, head_height: int, head_hash: str) -> None:
        self.session = session
        self.chain_id = chain_id
        self.head_height = head_height
        self.head_hash = head_hash

    def latest_version(self, sop_instance_uid: str) -> StoredBlock | None:
        row = self.session.execute(_LATEST_VERSION, {"chain": self.chain_id, "sop": sop_instance_uid}).first()
        return StoredBlock.from_row(row) if row else None

    def study_head(self, study_instance_uid: str) -> tuple[int, str] | None:
        """(index, block hash) of the newest block of this study, or None for a new study."""
        row = self.session.execute(_STUDY_HEAD, {"chain": self.chain_id, "study": study_instance_uid}).first()
        return (row[0], row[1]) if row else None

    def add_block(
        self, block: Block, *, path: str, version: int, sop_class_uid: str, series_instance_uid: str
    ) -> None:
        h = block.header
        if h.chain_id != self.chain_id or h.height != self.head_height + 1 or h.prev_hash != self.head_hash:
            raise LedgerError(f"block {h.height} does not follow head {self.head_height} of {self.chain_id}")
        self.session.execute(
            insert(BLOCKS),
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
        self.session.execute(_MOVE_HEAD, {"chain": self.chain_id, "height": h.height, "hash": block.hash})
        self.head_height, self.head_hash = h.height, block.hash

    def add_event(self, key: NodeKey, draft: EventDraft) -> Event:
        return append_event(self.session, key, draft)

    def add_to_index(self, record: index.IndexRecord, block: Block, *, path: str, version: int) -> None:
        index.write(self.session, record, block=block, path=path, version=version)

    def enqueue(
        self,
        destinations: Iterable[str],
        block: Block,
        *,
        path: str,
        sop_class_uid: str,
        transfer_syntax: str,
        patient_id: str,
    ) -> None:
        """Queue the new block's instance for every upstream PACS, in the receipt's transaction."""
        rows = [
            {
                "destination": destination,
                "block_hash": block.hash,
                "chain_id": block.header.chain_id,
                "height": block.header.height,
                "sop_instance_uid": block.header.sop_instance_uid,
                "sop_class_uid": sop_class_uid,
                "transfer_syntax": transfer_syntax,
                "study_instance_uid": block.header.study_instance_uid,
                "patient_id": patient_id,
                "path": path,
                "state": "pending",
                "attempts": 0,
                "created_at": time.time(),
                "next_attempt_at": time.time(),
                "lease_until": 0.0,
                "lease_owner": "",
                "last_status": None,
                "last_error": "",
                "done_at": None,
            }
            for destination in destinations
        ]
        if rows:
            self.session.execute(insert(OutboxRow.__table__), rows)


BLOCKS = BlockRow.__table__
CHAINS = ChainRow.__table__
EVENTS = EventRow.__table__
EVENT_HEAD = EventLogHead.__table__
# Built once: statements rebuilt per instance cost more in SQLAlchemy's coercion than the SQL.
_LATEST_VERSION = (
    select(BLOCKS)
    .where(BLOCKS.c.chain_id == bindparam("chain"), BLOCKS.c.sop_instance_uid == bindparam("sop"))
    .order_by(BLOCKS.c.version.desc())
    .limit(1)
)
_STUDY_HEAD = (
    select(BLOCKS.c.study_index, BLOCKS.c.block_hash)
    .where(BLOCKS.c.chain_id == bindparam("chain"), BLOCKS.c.study_instance_uid == bindparam("study"))
    .order_by(BLOCKS.c.study_index.desc())
    .limit(1)
)
_MOVE_HEAD = (
    update(CHAINS)
    .where(CHAINS.c.chain_id == bindparam("chain"))
    .values(head_height=bindparam("height"), head_hash=bindparam("hash"))
)
_EVENT_HEAD_LOCKED = select(EVENT_HEAD.c.seq, EVENT_HEAD.c.hash).where(EVENT_HEAD.c.id == 1).with_for_update()
_MOVE_EVENT_HEAD = (
    update(EVENT_HEAD).where(EVENT_HEAD.c.id == 1).values(seq=bindparam("seq"), hash=bindparam("hash"))
)


def append_event(session: Session, key: NodeKey, draft: EventDraft) -> Event:
    """Seal ``draft`` after the log's head, inside the caller's transaction (head row locked)."""
    seq, prev = session.execute(_EVENT_HEAD_LOCKED).one()
    sealed = Event.seal(draft, seq + 1, prev, key)
    row = sealed.body()
    row.update(
        hash=sealed.hash,
        public_key=sealed.public_key.hex(),
        details=canonjson.dumps(sealed.details).decode("utf-8"),
        signature=sealed.signature.hex(),
    )
    session.execute(insert(EVENTS), row)
    session.execute(_MOVE_EVENT_HEAD, {"seq": sealed.seq, "hash": sealed.hash})
    return sealed


class Ledger:
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = _make_engine(url, immediate=False)
            self.is_sqlite = self.engine.dialect.name == "sqlite"
            self.writer = _make_engine(url, immediate=True) if self.is_sqlite else self.engine
            self._migrate()
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot open ledger {make_url(url).render_as_string()}: {exc}") from exc

    def close(self) -> None:
        self.engine.dispose()
        if self.writer is not self.engine:
            self.writer.dispose()

    # -- schema ---------------------------------------------------------------------------------

    def _alembic_config(self) -> Any:
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", "dicom_chain.db:migrations")
        return cfg

    def _migrate(self) -> None:
        """Bring the schema to HEAD_REVISION. The check is one query; Alembic itself (a tenth of a
        process's memory) is loaded only when there is something to migrate."""
        if self.schema_revision() == HEAD_REVISION:
            return
        from alembic import command

        cfg = self._alembic_config()
        with self.writer.begin() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def schema_revision(self) -> str | None:
        with self.engine.connect() as conn:
            try:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except SQLAlchemyError:  # no such table yet: an empty database
                conn.rollback()
                return None

    # -- writing --------------------------------------------------------------------------------

    def ensure_chain(self, key: NodeKey, institution: str) -> str:
        """The chain this key signs; made (empty, head -1) the first time the key is seen.

        Processes starting together may race to make it: the unique public key lets one win,
        and the others read the winner's row.
        """
        for _attempt in range(2):
            try:
                with Session(self.writer) as session, session.begin():
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
            except IntegrityError:
                continue
        raise LedgerError("could not register this node's chain")

    @contextmanager
    def append(self, chain_id: str) -> Iterator[Appender]:
        """Lock the chain's head for one append; commits on exit, rolls back on any exception."""
        try:
            with Session(self.writer, expire_on_commit=False) as session, session.begin():
                head = session.execute(
                    select(CHAINS.c.head_height, CHAINS.c.head_hash)
                    .where(CHAINS.c.chain_id == chain_id)
                    .with_for_update()
                ).first()
                if head is None:
                    raise LedgerError(f"no chain {chain_id} in this ledger")
                yield Appender(session, chain_id, head[0], head[1])
        except IntegrityError as exc:
            raise LedgerError(f"append refused by a ledger constraint: {exc.orig}") from exc
        except OperationalError as exc:
            raise LedgerError(f"ledger unavailable: {exc.orig}") from exc

    def record(self, key: NodeKey, draft: EventDraft) -> Event:
        """Append one event on its own (service start, query, policy decision, ...)."""
        try:
            with Session(self.writer, expire_on_commit=False) as session, session.begin():
                return append_event(session, key, draft)
        except IntegrityError as exc:
            raise LedgerError(f"event refused by a ledger constraint: {exc.orig}") from exc
        except OperationalError as exc:
            raise LedgerError(f"ledger unavailable: {exc.orig}") from exc

    # -- reading --------------------------------------------------------------------------------

    def chains(self) -> list[ChainInfo]:
        with Session(self.engine) as session:
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
        with Session(self.engine) as session:
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

    def has_path(self, chain_id: str, path: str) -> bool:
        with Session(self.engine) as session:
            return (
                session.scalar(
                    select(func.count())
                    .select_from(BLOCKS)
                    .where(BLOCKS.c.chain_id == chain_id, BLOCKS.c.path == path)
                )
                > 0
            )

    def block_count(self, chain_id: str | None = None) -> int:
        with Session(self.engine) as session:
            query = select(func.count()).select_from(BlockRow)
            if chain_id is not None:
                query = query.where(BlockRow.chain_id == chain_id)
            return int(session.scalar(query) or 0)

    def event_head(self) -> tuple[int, str]:
        with Session(self.engine) as session:
            head = session.scalars(select(EventLogHead).where(EventLogHead.id == 1)).one()
            return head.seq, head.hash

    def iter_events_with_hash(self) -> Iterator[tuple[Event, str]]:
        """Events in sequence order, each with the hash its row stores (verify recomputes it)."""
        with Session(self.engine) as session:
            rows = session.scalars(
                select(EventRow).order_by(EventRow.seq).execution_options(yield_per=ITER_BATCH)
            )
            for row in rows:
                yield _event_from_row(row), row.hash

    def iter_events(self) -> Iterator[Event]:
        for item, _ in self.iter_events_with_hash():
            yield item

    def search(self, query: Query, level: Level | None = None) -> Iterator[dict[str, Any]]:
        """C-FIND matches from the index (see ``index.search``), read on the reader engine."""
        try:
            with Session(self.engine) as session:
                yield from index.search(session, query, level)
        except OperationalError as exc:
            raise LedgerError(f"ledger unavailable: {exc.orig}") from exc

    def index_count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(index.INSTANCES)) or 0)

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A write transaction outside any chain append (reindex, verification states)."""
        try:
            with Session(self.writer, expire_on_commit=False) as session, session.begin():
                yield session
        except OperationalError as exc:
            raise LedgerError(f"ledger unavailable: {exc.orig}") from exc

    def iter_event_rows(
        self, since: str | None = None, until: str | None = None, max_seq: int | None = None
    ) -> Iterator[Any]:
        """Raw rows of ``events`` in sequence order (exports): ``since <= time < until``, streamed."""
        stmt = select(EVENTS).order_by(EVENTS.c.seq)
        if since:
            stmt = stmt.where(EVENTS.c.time >= since)
        if until:
            stmt = stmt.where(EVENTS.c.time < until)
        if max_seq is not None:
            stmt = stmt.where(EVENTS.c.seq <= max_seq)
        with self.engine.connect() as conn:
            yield from conn.execution_options(yield_per=ITER_BATCH).execute(stmt)

    def institutions(self) -> dict[str, str]:
        """Key id -> institution of the chain that key signs."""
        with Session(self.engine) as session:
            rows = session.execute(select(CHAINS.c.key_id, CHAINS.c.institution))
            return {r.key_id: r.institution for r in rows}

    def event_count(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(EventRow)) or 0)
