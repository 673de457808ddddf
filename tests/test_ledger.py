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
from dicom_chain.errors import LedgerError
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
