"""The gateway's DICOM service with an in-process pynetdicom peer: echo, store, clear failures."""

from __future__ import annotations

from collections.abc import Iterator

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification  # type: ignore[attr-defined]

from dicom_chain.node import Node
from dicom_chain.verify import verify_files
from scp.statuses import CANNOT_UNDERSTAND

from .conftest import read
from .gateways import start_server
from .peers import exchange, free_port


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


def send_raw(assoc, sop_class: str, sop_uid: str, dataset_bytes: bytes) -> int:
    """A C-STORE whose dataset bytes are sent exactly as given: what a broken modality does."""
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_STORE

    context = ct_context(assoc)
    send_raw.message_id = getattr(send_raw, "message_id", 100) + 1
    request = C_STORE()
    request.MessageID = send_raw.message_id
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_uid
    request.Priority = 2
    request.DataSet = BytesIO(dataset_bytes)
    return int(exchange(assoc, request, context.context_id).Status)


def ct_context(assoc):
    return next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage)


def encode_body(ds, syntax) -> bytes:
    """The dataset as it goes on the wire in the accepted transfer syntax (no file meta)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
    write_dataset(fp, ds)
    return fp.getvalue()


def test_truncated_and_uidless_datasets_on_the_wire_get_failures(gateway):
    """Bytes as a broken modality sends them: cut inside the pixels, and without (0008,0018)."""
    node, port = gateway
    assoc = associate(port)
    syntax = ct_context(assoc).transfer_syntax[0]
    whole = encode_body(read("CT_small.dcm"), syntax)
    no_uid = read("CT_small.dcm")
    sop_uid = no_uid.SOPInstanceUID
    del no_uid.SOPInstanceUID
    try:
        assert send_raw(assoc, CTImageStorage, sop_uid, whole[: len(whole) - 3000]) == CANNOT_UNDERSTAND
        assert assoc.send_c_echo().Status == 0x0000
        assert send_raw(assoc, CTImageStorage, sop_uid, encode_body(no_uid, syntax)) == CANNOT_UNDERSTAND
        assert assoc.send_c_echo().Status == 0x0000
        assert (
            send_raw(assoc, CTImageStorage, sop_uid, b"\x08\x00\x18\x00UI\xff\xffgarbage")
            == CANNOT_UNDERSTAND
        )
        assert send_raw(assoc, CTImageStorage, sop_uid, whole) == 0x0000
    finally:
        assoc.release()
    assert node.ledger.block_count() == 1 and len(list(node.storage.iter_files())) == 1


def test_quick_ack_is_rearmed_on_the_association_socket():
    """Each received PDU re-arms TCP_QUICKACK, so a Nagle-on peer's next small segment is not held."""
    import socket
    from types import SimpleNamespace

    from scp.handlers import QUICKACK, quick_ack

    if QUICKACK is None:
        pytest.skip("TCP_QUICKACK is Linux only")
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    try:
        conn.setsockopt(socket.IPPROTO_TCP, QUICKACK, 0)
        assert conn.getsockopt(socket.IPPROTO_TCP, QUICKACK) == 0
        event = SimpleNamespace(
            assoc=SimpleNamespace(dul=SimpleNamespace(socket=SimpleNamespace(socket=conn)))
        )
        quick_ack(event)
        assert conn.getsockopt(socket.IPPROTO_TCP, QUICKACK) == 1
    finally:
        for s in (client, conn, server):
            s.close()
