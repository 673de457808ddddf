"""The ledger on SQLite and on a real PostgreSQL server: contiguous heights under concurrency,
constraints that refuse forks, and a hash-linked event log."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from dicom_chain.block import FORMAT_VERSION, Block, BlockHeader, utc_now
from dicom_chain.errors import LedgerConflict, LedgerError
from dicom_chain.events import EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger

THREADS = 8
APPENDS_PER_WORKER = 25


def append_one(ledger: Ledger, key: NodeKey, chain_id: str, sop: str, study: str = "1.2.3") -> Block:
    with ledger.append(chain_id) as tx:
        head = tx.study_head(study)
        header = BlockHeader(
            version=FORMAT_VERSION,
            chain_id=chain_id,
            height=tx.head_height + 1,
            prev_hash=tx.head_hash,
            content_hash="ab" * 32,
            timestamp=utc_now(),
            institution="H",
            key_id=key.key_id,
            sop_instance_uid=sop,
            study_instance_uid=study,
            study_index=head[0] + 1 if head else 0,
            study_prev_hash=head[1] if head else "0" * 64,
        )
        block = Block.sign(header, key)
        tx.add_block(block, path=f"{sop}.dcm", version=1, sop_class_uid="1.2", series_instance_uid="1.2.3.1")
        tx.add_event(key, EventDraft("instance.received", sop_uid=sop, chain_id=chain_id))
        return block


def assert_contiguous(ledger: Ledger, chain_id: str, count: int) -> None:
    heights, prev = [], "0" * 64
    for height, stored in ledger.iter_blocks(chain_id):
        assert not isinstance(stored, str), stored
        assert stored.block.header.prev_hash == prev
        prev = stored.block.hash
        heights.append(height)
    assert heights == list(range(count))
    seqs, prev_event = [], "0" * 64
    for event, stored_hash in ledger.iter_events_with_hash():
        assert event.prev_hash == prev_event and event.hash == stored_hash
        event.verify_signature()
        prev_event = stored_hash
        seqs.append(event.seq)
    assert seqs == list(range(1, len(seqs) + 1))
    assert ledger.event_head() == (len(seqs), prev_event)


def test_migrations_reach_head_and_match_the_models(db_url: str):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from dicom_chain.db.migrate import HEAD_REVISION, alembic_config
    from dicom_chain.db.models import Base

    ledger = Ledger(db_url)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert ledger.db.schema_revision() == head == HEAD_REVISION  # the constant the fast check compares with
    with ledger.db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    ledger.close()
    Ledger(db_url).close()  # second open: already at head


def _ledger_rows(ledger: Ledger) -> dict[str, list]:
    with ledger.db.reading() as session:
        return {
            table: [
                dict(r._mapping) for r in session.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))
            ]
            for table, order in {"blocks": "height", "events": "seq", "event_log_head": "id"}.items()
        }


def test_migration_0010_keeps_every_row_and_the_constraints_that_matter(db_url: str):
    """Down to 0009 (the old shape back) and up again: every block and event as it was, the log
    still verifies, a fork of the event log is still refused; on SQLite seq is the table's rowid."""
    from alembic import command
    from sqlalchemy import inspect

    from dicom_chain.db.migrate import alembic_config

    ledger, key = Ledger(db_url), NodeKey.generate()
    chain_id = ledger.ensure_chain(key, "H")
    for i in range(6):
        append_one(ledger, key, chain_id, f"1.2.3.{i}", study=f"9.{i % 2}")
    before = _ledger_rows(ledger)
    cfg = alembic_config()

    def indexes() -> set[str]:
        with ledger.db.engine.connect() as conn:
            found = inspect(conn)
            names = {i["name"] for t in ("blocks", "events") for i in found.get_indexes(t)}
            return names | {
                u["name"] or "unique " + ",".join(u["column_names"])
                for u in found.get_unique_constraints("events")
            }

    with ledger.db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009")
    ledger.db.engine.dispose()
    assert {"ix_blocks_sop", "ix_events_patient", "ix_events_type"} <= indexes()
    assert _ledger_rows(ledger) == before
    with ledger.db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    for engine in (ledger.db.engine, ledger.db.writer):
        engine.dispose()  # no connection keeps the old schema's statements
    assert not {"ix_blocks_sop", "ix_events_patient", "ix_events_type"} & indexes()
    assert {"ix_events_type_patient", "ix_events_study", "ix_events_time"} <= indexes()
    assert _ledger_rows(ledger) == before
    assert_contiguous(ledger, chain_id, 6)
    append_one(ledger, key, chain_id, "1.2.3.6")  # and the receipt path works on the new shape
    with ledger.db.reading() as session:
        if ledger.db.is_sqlite:  # seq is the rowid: no tree of its own
            assert session.execute(text("SELECT count(*) FROM events WHERE rowid = seq")).scalar() == 7
            trees = {
                tuple(c[2] for c in session.execute(text(f"PRAGMA index_info('{r[1]}')")))
                for r in session.execute(text("PRAGMA index_list(events)"))
            }
            assert trees == {("prev_hash",), ("study_uid",), ("time",), ("type", "patient_id")}
        last = session.execute(text("SELECT * FROM events ORDER BY seq DESC LIMIT 1")).one()._mapping
    with pytest.raises(LedgerConflict), ledger.db.writing() as session:  # a second successor of one event
        session.execute(
            text(f"INSERT INTO events ({', '.join(last)}) VALUES ({', '.join(':' + c for c in last)})"),
            {**last, "seq": last["seq"] + 1, "hash": "f" * 64},
        )
    ledger.close()


def test_the_reads_of_dropped_indexes_use_the_kept_ones(tmp_path: Path):
    """The queries the dropped indexes could serve still find their rows by an index (SQLite's
    plans): an item's latest version by uq_blocks_sop_version, a patient's opt-in events by type
    and patient."""
    from dicom_chain.ledger import _LATEST_VERSION
    from dicom_chain.sharing.research import OPT_EVENTS

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    types = ", ".join(f"'{t}'" for t in OPT_EVENTS)
    plans = {
        "latest": (_LATEST_VERSION.sqlite, {"chain": "c", "sop": "1.2"}),
        "optin": (
            f"SELECT * FROM events WHERE type IN ({types}) AND patient_id = :p ORDER BY seq",
            {"p": "P"},
        ),
    }
    with ledger.db.reading() as session:
        found = {
            name: " | ".join(r[-1] for r in session.execute(text("EXPLAIN QUERY PLAN " + sql), params))
            for name, (sql, params) in plans.items()
        }
    ledger.close()
    # uq_blocks_sop_version (SQLite names a constraint's index sqlite_autoindex_blocks_N)
    assert "SEARCH blocks USING INDEX sqlite_autoindex_blocks_" in found["latest"], found
    assert "(chain_id=? AND sop_instance_uid=?)" in found["latest"], found
    assert "TEMP B-TREE" not in found["latest"], found  # the newest version straight from the index
    assert "USING INDEX ix_events_type_patient (type=? AND patient_id=?)" in found["optin"], found


def test_appends_are_contiguous_and_linked(db_url: str):
    ledger, key = Ledger(db_url), NodeKey.generate()
    chain_id = ledger.ensure_chain(key, "H")
    assert ledger.ensure_chain(key, "H") == chain_id
    for i in range(10):
        append_one(ledger, key, chain_id, f"1.2.3.{i}")
    assert_contiguous(ledger, chain_id, 10)
    assert ledger.chains()[0].head_height == 9
    ledger.close()


def test_concurrent_writers_never_share_a_height(db_url: str):
    ledger, key = Ledger(db_url), NodeKey.generate()
    chain_id = ledger.ensure_chain(key, "H")

    def worker(w: int) -> None:
        for i in range(APPENDS_PER_WORKER):
            append_one(ledger, key, chain_id, f"1.2.{w}.{i}", study=f"9.{w % 3}")

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(worker, range(THREADS)))
    assert_contiguous(ledger, chain_id, THREADS * APPENDS_PER_WORKER)
    ledger.close()


def _process_worker(url: str, key_pem_path: str, worker: int, count: int) -> None:
    key = NodeKey.load(Path(key_pem_path))
    ledger = Ledger(url)
    chain_id = ledger.ensure_chain(key, "H")
    for i in range(count):
        append_one(ledger, key, chain_id, f"1.3.{worker}.{i}")
    ledger.close()


def test_concurrent_processes_never_share_a_height(db_url: str, tmp_path: Path):
    """Several gateway processes on one database: the lock is in the database, not in Python."""
    key_path = tmp_path / "node.key"
    key = NodeKey.load_or_create(key_path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_process_worker, args=(db_url, str(key_path), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ledger = Ledger(db_url)
    chain_id = ledger.ensure_chain(key, "H")
    assert_contiguous(ledger, chain_id, 60)
    ledger.close()


def test_constraints_refuse_a_second_block_at_a_height(db_url: str):
    ledger, key = Ledger(db_url), NodeKey.generate()
    chain_id = ledger.ensure_chain(key, "H")
    append_one(ledger, key, chain_id, "1.1")
    with pytest.raises(IntegrityError), ledger.db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO blocks (chain_id, height, block_hash, prev_hash, content_hash,"
                " sop_instance_uid, sop_class_uid, version, study_instance_uid, series_instance_uid,"
                " study_index, study_prev_hash, timestamp, path, block)"
                " VALUES (:c, 0, :h, :z, :z, '9.9', '1', 1, '9', '9', 0, :z, 't', 'p', 'b')"
            ),
            {"c": chain_id, "h": "cd" * 32, "z": "0" * 64},
        )
    ledger.close()


def test_a_block_that_does_not_follow_the_head_is_refused(db_url: str):
    ledger, key = Ledger(db_url), NodeKey.generate()
    chain_id = ledger.ensure_chain(key, "H")
    first = append_one(ledger, key, chain_id, "1.1")
    with pytest.raises(LedgerError), ledger.append(chain_id) as tx:
        tx.add_block(first, path="x", version=1, sop_class_uid="1", series_instance_uid="1")
    assert ledger.block_count(chain_id) == 1
    ledger.close()


def test_standalone_events_extend_the_same_log(db_url: str):
    ledger, key = Ledger(db_url), NodeKey.generate()
    chain_id = ledger.ensure_chain(key, "H")
    append_one(ledger, key, chain_id, "1.1")
    event = ledger.record(key, EventDraft("service.start", actor="test"))
    assert event.seq == 2
    assert [e.type for e in ledger.iter_events()] == ["instance.received", "service.start"]
    ledger.close()


def test_events_after_a_sequence_number_come_in_order_and_in_pages(db_url: str):
    from dicom_chain.audit import record

    ledger, key = Ledger(db_url), NodeKey.generate()
    for i in range(5):
        ledger.record(key, EventDraft("query.find", actor=f"WS{i}"))
    page = ledger.events_after(1, limit=3)
    assert [row.seq for row in page] == [2, 3, 4]
    assert [record.from_row(row)["actor"] for row in page] == ["WS1", "WS2", "WS3"]
    assert ledger.events_after(5, limit=3) == []
    ledger.close()


def test_rows_read_back_as_the_events_that_were_sealed(db_url: str):
    ledger, key = Ledger(db_url), NodeKey.generate()
    sealed = ledger.record(key, EventDraft("retrieve.move", actor="WS1", details={"n": 1, "uids": ["1.2"]}))
    [(event, stored_hash)] = list(ledger.iter_events_with_hash())
    assert event == sealed and stored_hash == sealed.hash
    ledger.close()


def _reference_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger's per-instance writes as SQLAlchemy statements, as they were before they became
    constant SQL on the driver's cursor (db/hot.py): the reference the hot path must equal."""
    from sqlalchemy import insert, select, update

    from dicom_chain import ledger as L
    from dicom_chain import outbox
    from dicom_chain.events import Event

    def latest_version(self, sop):
        row = self.session.execute(
            select(L.BLOCKS)
            .where(L.BLOCKS.c.chain_id == self.chain_id, L.BLOCKS.c.sop_instance_uid == sop)
            .order_by(L.BLOCKS.c.version.desc())
            .limit(1)
        ).first()
        return L.StoredBlock.from_row(row) if row else None

    def study_head(self, study):
        row = self.session.execute(
            select(L.BLOCKS.c.study_index, L.BLOCKS.c.block_hash)
            .where(L.BLOCKS.c.chain_id == self.chain_id, L.BLOCKS.c.study_instance_uid == study)
            .order_by(L.BLOCKS.c.study_index.desc())
            .limit(1)
        ).first()
        return (row[0], row[1]) if row else None

    def add_block(self, block, *, path, version, sop_class_uid, series_instance_uid):
        h = block.header
        values = {c: getattr(h, c) for c in L._BLOCK_COLUMNS if hasattr(h, c)}
        values.update(
            block_hash=block.hash,
            sop_class_uid=sop_class_uid,
            series_instance_uid=series_instance_uid,
            version=version,
            path=path,
            block=block.to_bytes().decode("utf-8"),
        )
        self.session.execute(insert(L.BLOCKS), values)
        self.session.execute(
            update(L.CHAINS)
            .where(L.CHAINS.c.chain_id == self.chain_id)
            .values(head_height=h.height, head_hash=block.hash)
        )
        self.head_height, self.head_hash = h.height, block.hash

    def append_event(session, key, draft, cursor=None):
        seq, prev = session.execute(select(L.EVENT_HEAD.c.seq, L.EVENT_HEAD.c.hash).with_for_update()).one()
        sealed = Event.seal(draft, seq + 1, prev, key)
        session.execute(insert(L.EVENTS), sealed.stored())
        session.execute(update(L.EVENT_HEAD).values(seq=sealed.seq, hash=sealed.hash))
        return sealed

    class Enqueue:  # outbox rows as built, inserted by SQLAlchemy
        def __init__(self, session):
            self.session = session

        def run_many(self, _stmt, rows):
            self.session.execute(insert(outbox.OUTBOX), list(rows))

    monkeypatch.setattr(L.Appender, "latest_version", latest_version)
    monkeypatch.setattr(L.Appender, "study_head", study_head)
    monkeypatch.setattr(L.Appender, "add_block", add_block)
    monkeypatch.setattr(L, "append_event", append_event)
    # the receipt's events go through the session too (its own goes on the transaction's cursor)
    monkeypatch.setattr(
        L.Appender, "add_event", lambda self, key, draft: L.append_event(self.session, key, draft)
    )
    monkeypatch.setattr(outbox, "HotCursor", Enqueue)


def _build_ledger(home: Path, url: str, key_file: Path | None) -> dict[str, list]:
    """The same receipts every time (clock and chain id fixed): new, duplicate, new version,
    forwarded, an identity conflict, a standalone event; every ledger row, read back."""
    import shutil

    from dicom_chain.carriers.dicom.carrier import item_from_dataset
    from dicom_chain.config import Settings
    from dicom_chain.node import Node
    from dicom_chain.qr import index

    from .test_index import identity_study

    settings = Settings(home=home, db=url, institution="H", forward=("PACS@127.0.0.1:104",))
    if key_file is not None:
        settings.key_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(key_file, settings.key_path)
    node = Node.open(settings)
    try:
        first = identity_study(71, "Test^S R")
        for ds in first + identity_study(72, "Anonymized") + first[:1]:
            node.ingest(item_from_dataset(ds))
        changed = first[1]
        changed.StudyDescription = "corrected"
        node.ingest(item_from_dataset(changed))
        node.record(EventDraft("service.start", reason="standalone", details={"n": 1}))
        index.before_read(node.db)
        skip = {"id", "created_at", "next_attempt_at"}  # row ids, and the outbox's epoch seconds
        with node.db.reading() as session:
            return {
                table: [
                    {k: v for k, v in row._mapping.items() if k not in skip}
                    for row in session.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))
                ]
                for table, order in {
                    "chains": "chain_id",
                    "blocks": "height",
                    "event_log_head": "id",
                    "events": "seq",
                    "outbox": "height",
                }.items()
            }
    finally:
        node.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_hot_statements_write_the_rows_sqlalchemy_wrote(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
):
    import itertools
    import uuid

    from dicom_chain import events, ledger, node
    from dicom_chain.qr import indexqueue

    # the index writer only on the flush at the end: its conflict event at the same seq each time
    monkeypatch.setattr(indexqueue, "INDEX_QUIET_S", 3600.0)
    monkeypatch.setattr(indexqueue, "INDEX_BATCH", 10**6)

    def urls(name: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / name / 'ledger.db'}"
        return request.getfixturevalue("postgres").create_database()

    def freeze() -> None:
        ticks = itertools.count()
        clock = lambda: f"2026-01-01T00:00:00.{next(ticks):06d}Z"  # noqa: E731
        for module in (node, events, ledger):
            monkeypatch.setattr(module, "utc_now", clock)
        monkeypatch.setattr(ledger.uuid, "uuid4", lambda: uuid.UUID(int=7))

    freeze()
    hot = _build_ledger(tmp_path / "hot", urls("hot"), None)
    freeze()
    with monkeypatch.context() as m:
        _reference_statements(m)
        reference = _build_ledger(tmp_path / "ref", urls("ref"), tmp_path / "hot" / "node.key")
    assert [len(hot[t]) for t in hot] == [1, 5, 1, 8, 5]  # 5 blocks; 8 events with the conflict
    assert hot == reference
