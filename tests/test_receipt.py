"""A receipt is one transaction (block, event, outbox rows, the intent's removal), and a failing
one leaves neither rows nor files behind; the index rows follow it (qr/indexqueue.py)."""

from __future__ import annotations

import shutil

import pytest
from sqlalchemy import func, select

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.db.models import InstanceRow, OutboxRow
from dicom_chain.errors import LedgerError
from dicom_chain.intents import INTENTS
from dicom_chain.node import Node
from dicom_chain.qr import index
from dicom_chain.receipt import Receipt
from dicom_chain.storage import SPARE_INFIX, TEMP_PREFIX, PendingWrite, Spares
from dicom_chain.verify import verify_node
from dicom_chain.vocab import EventType

from .conftest import read


@pytest.fixture
def forwarding(db_url: str, tmp_path):
    node = Node.open(Settings(home=tmp_path / "n", db=db_url, forward=("PACS@127.0.0.1:104",)))
    yield node
    node.close()


def _counts(node: Node) -> tuple[int, int, int, int, int]:
    index.before_read(node.db)
    with node.db.reading() as session:
        rows = [
            session.scalar(select(func.count()).select_from(table))
            for table in (OutboxRow.__table__, InstanceRow.__table__, INTENTS)
        ]
    return (node.ledger.block_count(), node.ledger.event_count(), *rows)


def test_a_receipt_commits_block_event_and_queue_together_and_the_index_follows(forwarding: Node):
    forwarding.ingest(item_from_dataset(read("CT_small.dcm")))
    assert _counts(forwarding) == (1, 1, 1, 1, 0)


def test_a_failure_in_the_last_step_undoes_every_row_and_the_file(forwarding: Node, monkeypatch):
    def refuse(*args, **kwargs):
        raise LedgerError("simulated event failure")

    monkeypatch.setattr(Receipt, "add_event", refuse)  # after the block and the queue rows
    with pytest.raises(LedgerError):
        forwarding.ingest(item_from_dataset(read("CT_small.dcm")))
    assert _counts(forwarding)[:4] == (0, 0, 0, 0)
    assert list(forwarding.storage.iter_files()) == []
    assert [p for p in forwarding.storage.root.rglob("*") if p.is_file()] == []  # no temp file either
    monkeypatch.undo()
    # the next receipt takes the failed one's intent with it
    forwarding.ingest(item_from_dataset(read("MR_small.dcm")))
    assert _counts(forwarding) == (1, 1, 1, 1, 0)


def test_a_failing_receipt_removes_its_file_while_the_chain_is_locked(forwarding: Node, monkeypatch):
    """Not left to the caller's clean-up after the rollback: the file is gone while the receipt's
    transaction (and so the chain's lock) is still open."""
    seen = []
    real_undo = forwarding.receipts._undo

    def undo(folder: str, stem: str) -> None:
        before = forwarding.storage.versions(folder, stem)
        real_undo(folder, stem)
        seen.append((before, forwarding.storage.versions(folder, stem), forwarding.ledger.block_count()))

    def refuse(*args, **kwargs):
        raise LedgerError("simulated event failure")

    durable = PendingWrite.wait

    def named_then_refuse(self):  # the file durable at its name, then the commit fails
        durable(self)
        refuse()

    monkeypatch.setattr(forwarding.receipts, "_undo", undo)
    monkeypatch.setattr(PendingWrite, "wait", named_then_refuse)
    with pytest.raises(LedgerError):
        forwarding.ingest(item_from_dataset(read("CT_small.dcm")))
    [(before, after, committed_blocks)] = seen
    assert len(before) == 1 and after == [] and committed_blocks == 0


def test_a_stored_files_name_lost_to_a_power_cut_is_linked_back_from_its_spare(db_url: str, tmp_path):
    """Written into a spare, a file is durable before the folder of its new name is synced
    (storage.PendingWrite.wait). A power cut in between can take that name: the next start links
    the spare back in where the ledger says, and records it; a spare whose block never committed
    (here another node's) is no one's file and stays unnamed."""
    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    other = Node.open(Settings(home=tmp_path / "o", db=f"sqlite:///{tmp_path / 'o.db'}"))
    spool = tmp_path / "spool"
    spool.mkdir()
    try:
        node.storage.spares = Spares(spool, node.storage.root)
        node.storage.spares.prepare()
        stored = node.ingest(item_from_dataset(read("CT_small.dcm")))
        [spare] = Spares.leftovers(spool)  # not settled: the power cut comes now
        assert spare.stat().st_ino == stored.path.stat().st_ino
        stored.path.unlink()  # the name its folder never wrote
        stray = other.ingest(item_from_dataset(read("MR_small.dcm")))
        shutil.copy(stray.path, spool / f"{TEMP_PREFIX}{SPARE_INFIX}ff")
        relative = stored.path.relative_to(node.storage.root).as_posix()
        assert node.restore_names(spool) == [relative]
        assert stored.path.read_bytes() == spare.read_bytes()
        assert not node.storage.exists(stray.path.relative_to(other.storage.root).as_posix())
        assert verify_node(node.ledger, node.storage).ok
        last = [e for e, _ in node.ledger.iter_events_with_hash()][-1]
        assert last.type == EventType.STORAGE_RECOVERED and last.details["path"] == relative
        assert node.restore_names(spool) == []  # named again: nothing left to do
    finally:
        other.close()
        node.close()
