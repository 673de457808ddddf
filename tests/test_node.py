"""Ingest: hash, sign, embed, write durably, record; idempotent per content; nothing half-written."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pydicom
import pytest

from dicom_chain.config import Settings
from dicom_chain.embedding import read_block
from dicom_chain.errors import LedgerError, MalformedDatasetError, StorageError
from dicom_chain.ledger import Appender
from dicom_chain.node import Node

from .conftest import fresh, read


def test_ingest_stores_a_chained_file_and_records_receipt(node: Node):
    result = node.ingest(read("CT_small.dcm"), actor="CT1")
    assert result.outcome == "stored" and result.version == 1
    on_disk = pydicom.dcmread(result.path)
    assert read_block(on_disk) == result.block
    assert on_disk.SOPInstanceUID in str(result.path)
    [event] = list(node.ledger.iter_events())
    assert (event.type, event.actor, event.sop_uid) == ("instance.received", "CT1", on_disk.SOPInstanceUID)
    assert event.details["block_hash"] == result.block.hash


def test_study_links_follow_arrival_order(node: Node, small_study):
    blocks = [node.ingest(fresh(ds)).block for ds in small_study]
    assert [b.header.height for b in blocks] == list(range(len(small_study)))
    assert [b.header.study_index for b in blocks] == list(range(len(small_study)))
    for prev, cur in itertools.pairwise(blocks):
        assert cur.header.prev_hash == prev.hash == cur.header.study_prev_hash


def test_same_content_again_is_acknowledged_without_a_new_block(node: Node):
    first = node.ingest(read("MR_small.dcm"))
    again = node.ingest(read("MR_small_bigendian.dcm"))  # same instance, another transfer syntax
    assert again.outcome == "duplicate" and again.block == first.block
    assert node.ledger.block_count() == 1
    assert [e.reason for e in node.ledger.iter_events()] == ["stored", "duplicate"]


def test_changed_content_becomes_a_new_version_never_an_overwrite(node: Node):
    first = node.ingest(read("MR_small.dcm"))
    changed = read("MR_small.dcm")
    changed.PatientName = "CORRECTED^NAME"
    second = node.ingest(changed)
    assert second.outcome == "new-version" and second.version == 2
    assert second.path != first.path and first.path.exists()
    assert read_block(pydicom.dcmread(first.path)) == first.block
    assert second.block.header.prev_hash == first.block.hash


def test_lost_file_of_a_known_instance_is_restored_from_the_ledger(node: Node):
    first = node.ingest(read("CT_small.dcm"))
    first.path.unlink()
    again = node.ingest(read("CT_small.dcm"))
    assert again.outcome == "restored"
    assert read_block(pydicom.dcmread(first.path)) == first.block


def test_dataset_without_sop_instance_uid_is_refused(node: Node):
    ds = read("CT_small.dcm")
    del ds.SOPInstanceUID
    with pytest.raises(MalformedDatasetError, match="SOPInstanceUID"):
        node.ingest(ds)
    assert node.ledger.block_count() == 0


def test_ledger_failure_after_the_write_leaves_no_file(node: Node, monkeypatch):
    def refuse(*args, **kwargs):
        raise LedgerError("simulated constraint failure")

    monkeypatch.setattr(Appender, "add_block", refuse)
    with pytest.raises(LedgerError):
        node.ingest(read("CT_small.dcm"))
    assert list(node.storage.iter_files()) == []
    assert node.ledger.block_count() == 0 and node.ledger.event_count() == 0


def test_unwritable_store_is_a_storage_error_and_nothing_is_recorded(settings: Settings):
    """The store's folder is a plain file (a mount gone wrong): even root cannot write there."""
    node = Node.open(settings)
    settings.storage_dir.parent.mkdir(parents=True, exist_ok=True)
    settings.storage_dir.write_bytes(b"not a folder")
    try:
        with pytest.raises(StorageError):
            node.ingest(read("CT_small.dcm"))
        assert node.ledger.block_count() == 0 and node.ledger.event_count() == 0
    finally:
        node.close()


def test_full_disk_is_a_storage_error_and_nothing_is_recorded(node: Node, monkeypatch):
    """ENOSPC from the kernel, injected at the one call that writes bytes."""
    import errno

    real_fsync = os.fsync

    def no_space(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".incoming-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError, match="No space"):
        node.ingest(read("CT_small.dcm"))
    monkeypatch.undo()
    assert list(node.storage.iter_files()) == []
    assert not [p for p in Path(node.storage.root).rglob("*") if p.is_file()]
    assert node.ledger.block_count() == 0


def test_key_and_database_live_beside_each_other(settings: Settings, node: Node):
    assert settings.key_path.parent == settings.home
    assert (settings.home / "ledger.db").exists()
    assert oct(settings.key_path.stat().st_mode & 0o777) == "0o600"
