"""The query index written after the C-STORE response: a query to this process sees every instance
answered before it, a process killed before its index batch loses nothing, and the identity
conflicts the batch brings are recorded once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import func, select

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.qr import index, indexqueue
from dicom_chain.qr.query import parse_query
from dicom_chain.synthetic import StudySpec, ct_study

from .gateways import start_server
from .peers import free_port
from .test_index import conflicts, ident, identity_study

ROOT = Path(__file__).resolve().parent.parent
CHILD_READY_S = 120  # a loaded CI box imports, opens a node and ingests a handful within this


@pytest.fixture
def held(monkeypatch):
    """The writer thread never writes on its own within a test: only a reader's flush does."""
    monkeypatch.setattr(indexqueue, "INDEX_QUIET_S", 3600.0)
    monkeypatch.setattr(indexqueue, "INDEX_BATCH", 10**6)


def image_query(stored: Dataset) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = stored.StudyInstanceUID, stored.SeriesInstanceUID
    ds.SOPInstanceUID = stored.SOPInstanceUID
    return ds


def indexed_rows(node: Node) -> int:
    """The index table as another process sees it: no flush of this one's pending rows."""
    with node.db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(index.INSTANCES)) or 0)


def test_a_find_after_a_store_response_always_sees_the_instance(db_url: str, tmp_path: Path, held):
    node = Node.open(Settings(home=tmp_path / "gw", db=db_url))
    port = free_port()
    server = start_server(node, ae_title="DICOMCHAIN", host="127.0.0.1", port=port)
    scu = AE(ae_title="MODALITY")
    scu.add_requested_context(CTImageStorage)
    scu.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = scu.associate("127.0.0.1", port, ae_title="DICOMCHAIN")
    try:
        assert assoc.is_established
        for n, ds in enumerate(ct_study(StudySpec(seed=91, instances=50, rows=8, columns=8))):
            assert assoc.send_c_store(ds).Status == 0x0000
            assert (n, len(node.index_queue), indexed_rows(node)) == (n, 1, n)  # pending, not yet written
            found = [
                identifier.SOPInstanceUID
                for status, identifier in assoc.send_c_find(
                    image_query(ds), StudyRootQueryRetrieveInformationModelFind
                )
                if status.Status in (0xFF00, 0xFF01)
            ]
            assert found == [ds.SOPInstanceUID]
            assert indexed_rows(node) == n + 1
    finally:
        assoc.release()
        server.shutdown()
        node.close()


def test_a_failed_index_write_leaves_the_receipt_and_is_retried(node: Node, held, monkeypatch):
    """The response does not wait for the index, so the index cannot undo a receipt: a refused
    batch stays pending (its error reaches the reader), and the next flush writes it."""
    real = index.write

    def unavailable(*args, **kwargs):
        from dicom_chain.errors import LedgerUnavailable

        raise LedgerUnavailable("simulated: database locked")

    ds = next(ct_study(StudySpec(seed=92, instances=1, rows=8, columns=8)))
    node.ingest(item_from_dataset(ds))
    monkeypatch.setattr(index, "write", unavailable)
    from dicom_chain.errors import LedgerUnavailable

    with pytest.raises(LedgerUnavailable):
        node.index_queue.flush()
    assert node.ledger.block_count() == 1 and len(node.index_queue) == 1
    monkeypatch.setattr(index, "write", real)
    query = parse_query(image_query(ds), "STUDY")
    assert [r["SOPInstanceUID"] for r in index.find(node.db, query)] == [ds.SOPInstanceUID]


CHILD = """
import sys, time
from pathlib import Path
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.qr import indexqueue
from tests.test_index import identity_study

indexqueue.INDEX_QUIET_S = 3600.0  # the batch is never written: killed first
indexqueue.INDEX_BATCH = 10**6
node = Node.open(Settings(home=Path(sys.argv[1]), db=sys.argv[2]))
for ds in identity_study(61, "Test^S R") + identity_study(62, "Anonymized"):
    node.ingest(item_from_dataset(ds))
print(len(node.index_queue), flush=True)
time.sleep(600)
"""


def test_a_process_killed_before_its_index_batch_is_repaired_on_start(db_url: str, tmp_path: Path):
    home = tmp_path / "gw"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), db_url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "4"  # four receipts committed, none indexed
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(CHILD_READY_S)
    stored = identity_study(61, "Test^S R") + identity_study(62, "Anonymized")
    node = Node.open(Settings(home=home, db=db_url))
    try:
        assert node.ledger.block_count() == 4
        for ds in stored:
            query = parse_query(image_query(ds), "STUDY")
            assert [r["SOPInstanceUID"] for r in index.find(node.db, query)] == [ds.SOPInstanceUID]
        (event,) = conflicts(node)  # the killed batch's conflict, recorded by the repair, once
        assert (event.details["value"], event.details["known"]) == ("Anonymized", ["Test^S R"])
    finally:
        node.close()
    again = Node.open(Settings(home=home, db=db_url))  # the mark moved: nothing to repair, no new event
    try:
        assert again.index_queue.repair(again.storage) == 0 and len(conflicts(again)) == 1
    finally:
        again.close()


def test_one_batch_writes_what_each_instance_brings_in_turn(db_url: str, tmp_path: Path, held):
    """A batch writes a study's shared rows once while they repeat (the memo), yet a value that
    changes mid-batch still lands, and a conflict met twice in one batch is recorded once."""
    node = Node.open(Settings(home=tmp_path / "gw", db=db_url))
    try:
        first = identity_study(71, "Test^S R")
        second = identity_study(71, "Other^Name")  # same seed: same study, series and instances
        for n, ds in enumerate(second):
            ds.SOPInstanceUID = f"{first[0].StudyInstanceUID[:50]}.9{n}"  # new instances of that study
            ds.StudyDescription = "CHANGED MID-BATCH"
        for ds in first + second:
            node.ingest(item_from_dataset(ds))
        assert len(node.index_queue) == 4 and indexed_rows(node) == 0  # all four in one batch
        found = conflicts(node)  # flushes the batch
        assert [(e.details["attribute"], e.details["value"]) for e in found] == [
            ("PatientName", "Other^Name")
        ]
        query = ident(
            "STUDY",
            StudyInstanceUID=first[0].StudyInstanceUID,
            StudyDescription="",
            NumberOfStudyRelatedInstances="",
        )
        rows = list(index.find(node.db, parse_query(query, "STUDY")))
        assert [(r["StudyDescription"], r["NumberOfStudyRelatedInstances"]) for r in rows] == [
            ("CHANGED MID-BATCH", 4)
        ]
    finally:
        node.close()
