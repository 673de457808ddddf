"""Who sent each version, read back from blocks and receipts, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.versions import versions_of, versions_of_many

from .conftest import read


def test_each_version_names_its_sender_and_singles_cost_no_event_read(db_url: str, tmp_path: Path):
    node = Node.open(Settings(home=tmp_path / "node", db=db_url))
    try:
        ds = read("CT_small.dcm")
        node.ingest(item_from_dataset(ds), actor="CT1")
        node.ingest(item_from_dataset(ds), actor="CT2")  # the same content: a duplicate, no version
        changed = read("CT_small.dcm")
        changed.PatientName = "CORRECTED"
        node.ingest(item_from_dataset(changed), actor="QA")
        single = read("MR_small.dcm")
        node.ingest(item_from_dataset(single), actor="MR1")
        with node.db.reading() as session:
            ct = versions_of(session, node.chain_id, ds.SOPInstanceUID)
            mr = versions_of(session, node.chain_id, single.SOPInstanceUID)
            many = versions_of_many(session, node.chain_id, [ds.SOPInstanceUID, single.SOPInstanceUID, "9.9"])
        assert [(v.version, v.sender) for v in ct] == [(1, "CT1"), (2, "QA")]
        assert [(v.version, v.sender) for v in mr] == [(1, "MR1")]  # asked alone: its sender too
        assert [(v.version, v.sender) for v in many[ds.SOPInstanceUID]] == [(1, "CT1"), (2, "QA")]
        assert [(v.version, v.sender) for v in many[single.SOPInstanceUID]] == [(1, "")]  # in a page
        assert "9.9" not in many
    finally:
        node.close()
