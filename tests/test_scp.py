"""The gateway's DICOM service with an in-process pynetdicom peer: echo, store, clear failures."""

from __future__ import annotations

from collections.abc import Iterator

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]

from dicom_chain.errors import LedgerError, MalformedDatasetError, StorageError
from dicom_chain.node import Node
from dicom_chain.verify import verify_files
from scp.server import start_server
from scp.statuses import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, PROCESSING_FAILURE, store_status

from .conftest import read
from .peers import free_port


@pytest.fixture
def gateway(node: Node) -> Iterator[tuple[Node, int]]:
    port = free_port()
    ae = start_server(node, ae_title="DICOMCHAIN", host="127.0.0.1", port=port)
    yield node, port
    ae.shutdown()


def associate(port: int):
    scu = AE(ae_title="TESTSCU")
    scu.add_requested_context(Verification)
    scu.add_requested_context(CTImageStorage)
    scu.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.2")  # explicit VR big endian
    scu.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = scu.associate("127.0.0.1", port, ae_title="DICOMCHAIN")
    assert assoc.is_established
    return assoc


def test_echo_and_store_chain_the_instance(gateway):
    node, port = gateway
    assoc = associate(port)
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(read("CT_small.dcm")).Status == 0x0000
        assert assoc.send_c_store(read("MR_small_bigendian.dcm")).Status == 0x0000
    finally:
        assoc.release()
    files = [node.storage.path(p) for p in node.storage.iter_files()]
    assert len(files) == 2
    report = verify_files(files)
    assert report.ok and report.blocks_checked == 2
    assert {e.actor for e in node.ledger.iter_events()} == {"TESTSCU"}
    stored_mr = next(f for f in files if pydicom.dcmread(f).Modality == "MR")
    assert (
        pydicom.dcmread(stored_mr).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
    )  # stored as received


def test_broken_datasets_get_failure_and_service_keeps_answering(gateway):
    node, port = gateway
    no_study = read("CT_small.dcm")
    del no_study.StudyInstanceUID
    short_pixels = read("CT_small.dcm")
    short_pixels.PixelData = short_pixels.PixelData[:-512]
    assoc = associate(port)
    try:
        assert assoc.send_c_store(no_study).Status == CANNOT_UNDERSTAND
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(short_pixels).Status == CANNOT_UNDERSTAND
        assert assoc.send_c_store(read("CT_small.dcm")).Status == 0x0000
    finally:
        assoc.release()
    assert node.ledger.block_count() == 1
    assert len(list(node.storage.iter_files())) == 1


def test_error_statuses_follow_ps34():
    assert store_status(StorageError("disk full")) == OUT_OF_RESOURCES == 0xA700
    assert store_status(LedgerError("db down")) == OUT_OF_RESOURCES
    assert store_status(MalformedDatasetError("no uid")) == CANNOT_UNDERSTAND == 0xC000
    assert store_status(RuntimeError("bug")) == PROCESSING_FAILURE == 0x0110


def test_stored_file_is_the_received_bytes_plus_our_block(gateway, monkeypatch):
    """The network path splices too: every element but ours is stored exactly as sent."""
    from dicom_chain.storage import Storage

    def no_reencoding(*args, **kwargs):
        raise AssertionError("pydicom re-encoded a received dataset")

    monkeypatch.setattr(Storage, "write", no_reencoding)
    node, port = gateway
    sent = read("MR_small_bigendian.dcm")
    assoc = associate(port)
    try:
        assert assoc.send_c_store(sent).Status == 0x0000
    finally:
        assoc.release()
    [rel] = list(node.storage.iter_files())
    stored = pydicom.dcmread(node.storage.path(rel))
    original = read("MR_small_bigendian.dcm")
    theirs = [t for t in stored.keys() if t.group != 0x0071]
    assert theirs == list(original.keys())
    for tag in theirs:
        assert stored.get_item(tag).value == original.get_item(tag).value, tag


@pytest.mark.dcmtk
def test_dcmtk_storescu_study_arrives_chained(gateway):
    """DCMTK as the modality: a whole study over one association, then verify."""
    import subprocess

    from .conftest import SAMPLE_STUDY
    from .peers import require_tool

    storescu = require_tool("storescu", "dcmtk")
    node, port = gateway
    files = sorted(SAMPLE_STUDY.glob("*.dcm"))
    result = subprocess.run(
        [storescu, "-aet", "CT_SCANNER", "-aec", "DICOMCHAIN", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    stored = [node.storage.path(p) for p in node.storage.iter_files()]
    assert len(stored) == len(files) == 8
    report = verify_files(stored)
    assert report.ok and report.blocks_checked == 8
    assert {e.actor for e in node.ledger.iter_events()} == {"CT_SCANNER"}
