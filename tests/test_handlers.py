"""The gateway's DICOM service with an in-process pynetdicom peer: echo, store, clear failures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    RTDoseStorage,
    Verification,
)

from dicom_chain.node import Node
from dicom_chain.verify import verify_files
from scp.statuses import CANNOT_UNDERSTAND

from .conftest import read
from .gateways import start_server
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


def test_an_association_s_c_stores_are_one_info_line_at_its_end_and_each_one_at_debug(gateway, caplog):
    """Per instance at DEBUG only; at INFO the release names what the association's C-STOREs did."""
    import logging
    import time

    _, port = gateway
    no_study = read("CT_small.dcm")
    del no_study.StudyInstanceUID
    caplog.set_level(logging.DEBUG, logger="dicom_chain.scp")
    assoc = associate(port)
    try:
        assert assoc.send_c_store(read("CT_small.dcm")).Status == 0x0000
        assert assoc.send_c_store(read("CT_small.dcm")).Status == 0x0000  # the same again
        assert assoc.send_c_store(no_study).Status == CANNOT_UNDERSTAND
        assert assoc.send_c_store(read("MR_small_bigendian.dcm")).Status == 0x0000
    finally:
        assoc.release()
    deadline = time.monotonic() + 30  # the gateway logs the release on its own thread
    while "association released" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    per_instance = [r for r in caplog.records if r.getMessage().startswith("c-store calling_ae=TESTSCU sop=")]
    assert [r.levelno for r in per_instance] == [logging.DEBUG] * 3
    released = [r.getMessage() for r in caplog.records if r.getMessage().startswith("association released")]
    assert len(released) == 1 and released[0].endswith(
        " c-store stored=2 duplicate=1 warnings=0 refused=0xC000:1"
    ), released
    assert released[0].startswith("association released calling_ae=TESTSCU peer=127.0.0.1:"), released
    accepted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("association accepted")]
    assert accepted and accepted[0].startswith("association accepted calling_ae=TESTSCU peer=127.0.0.1:")
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert not [m for m in info if m.startswith("c-store")]  # nothing per instance at INFO


def test_stored_file_is_the_received_bytes_plus_our_block(gateway, monkeypatch):
    """The network path splices too: every element but ours is stored exactly as sent."""
    from dicom_chain.carriers.dicom import carrier

    def no_reencoding(*args, **kwargs):
        raise AssertionError("pydicom re-encoded a received dataset")

    monkeypatch.setattr(carrier, "dcmwrite", no_reencoding)
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


def send_raw(assoc, sop_class: str, sop_uid: str, dataset_bytes: bytes, tmp_path) -> int:
    """A C-STORE whose dataset bytes are sent exactly as given: what a broken modality does.

    Public pynetdicom API: with STORE_SEND_CHUNKED_DATASET on (scp/__init__.py sets it),
    ``send_c_store(path)`` sends the bytes after the file meta as they are, never decoding them."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import _config

    assert _config.STORE_SEND_CHUNKED_DATASET  # else pynetdicom would decode and re-encode the bytes
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ct_context(assoc).transfer_syntax[0]
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_file_meta_info(header, meta)
    path = tmp_path / f"raw-{len(list(tmp_path.iterdir()))}.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + header.getvalue() + dataset_bytes)
    return int(assoc.send_c_store(path).Status)


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


def test_truncated_and_uidless_datasets_on_the_wire_get_failures(gateway, tmp_path):
    """Bytes as a broken modality sends them: cut inside the pixels, and without (0008,0018)."""
    node, port = gateway
    assoc = associate(port)
    syntax = ct_context(assoc).transfer_syntax[0]
    whole = encode_body(read("CT_small.dcm"), syntax)
    no_uid = read("CT_small.dcm")
    sop_uid = no_uid.SOPInstanceUID
    del no_uid.SOPInstanceUID
    try:
        cut = whole[: len(whole) - 3000]
        assert send_raw(assoc, CTImageStorage, sop_uid, cut, tmp_path) == CANNOT_UNDERSTAND
        assert assoc.send_c_echo().Status == 0x0000
        no_uid_body = encode_body(no_uid, syntax)
        assert send_raw(assoc, CTImageStorage, sop_uid, no_uid_body, tmp_path) == CANNOT_UNDERSTAND
        assert assoc.send_c_echo().Status == 0x0000
        garbage = b"\x08\x00\x18\x00UI\xff\xffgarbage"
        assert send_raw(assoc, CTImageStorage, sop_uid, garbage, tmp_path) == CANNOT_UNDERSTAND
        assert send_raw(assoc, CTImageStorage, sop_uid, whole, tmp_path) == 0x0000
    finally:
        assoc.release()
    assert node.ledger.block_count() == 1 and len(list(node.storage.iter_files())) == 1


def test_quick_ack_is_rearmed_on_the_association_socket():
    """Each received PDU re-arms TCP_QUICKACK, so a Nagle-on peer's next small segment is not held."""
    import socket
    from types import SimpleNamespace

    from scp.handlers import quick_ack
    from scp.receive import QUICKACK

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


def _event(ae_title: str = "PEER "):
    from types import SimpleNamespace

    return SimpleNamespace(assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title=ae_title)))


def test_a_handler_that_raises_answers_the_status_its_error_calls_for(caplog):
    from dicom_chain.errors import MalformedDatasetError, StorageError
    from scp.handlers import answers_failures
    from scp.statuses import OUT_OF_RESOURCES, PROCESSING_FAILURE, store_status

    @answers_failures("c-store", store_status)
    def store(event, error: Exception) -> int:
        raise error

    full = store(_event(), StorageError("disk full"))
    assert (full.Status, full.ErrorComment) == (OUT_OF_RESOURCES, "disk full")  # the reason goes to the peer
    assert store(_event(), MalformedDatasetError("no SOPInstanceUID")).Status == CANNOT_UNDERSTAND
    assert "c-store calling_ae=PEER status=0xC000 error='no SOPInstanceUID'" in caplog.text
    assert "Traceback" not in caplog.text  # named errors: one line
    assert store(_event(), KeyError("a bug")).Status == PROCESSING_FAILURE
    assert "Traceback" in caplog.text  # a bug: its traceback is logged


def test_a_generator_handler_that_raises_yields_its_failure_after_what_it_still_owes():
    from dicom_chain.errors import LedgerUnavailable
    from scp.handlers import answers_failures
    from scp.statuses import RETRIEVE_OUT_OF_RESOURCES, retrieve_status

    cleaned_up: list[int] = []

    def prelude(yielded: int, event, _fail_after: int) -> Iterator[int]:
        if yielded == 0:
            yield 1  # as C-GET: the number of sub-operations comes before any status

    @answers_failures("c-get", retrieve_status, prelude=prelude)
    def get(event, fail_after: int) -> Iterator[object]:
        try:
            yield from range(fail_after)
            raise LedgerUnavailable("database is locked")
        finally:
            cleaned_up.append(fail_after)

    early = list(get(_event(), 0))
    assert early[0] == 1 and early[1][1] is None
    assert (early[1][0].Status, early[1][0].ErrorComment) == (RETRIEVE_OUT_OF_RESOURCES, "database is locked")
    late = list(get(_event(), 2))
    assert late[:2] == [0, 1] and late[2][0].Status == RETRIEVE_OUT_OF_RESOURCES and len(late) == 3
    stopped = get(_event(), 5)
    assert next(stopped) == 0
    stopped.close()  # pynetdicom stops asking (the association ended): the handler's clean-up runs
    assert cleaned_up == [0, 2, 5]


def test_instances_whose_names_once_collided_are_each_kept_through_the_gateway(gateway):
    """Sent by a peer: a UID with a space beside one spelled like its sanitised name, and a SOP
    named like version 2 of another; every one is acknowledged, kept, and the node verifies."""
    from dicom_chain.verify import verify_node

    node, port = gateway
    sends = [("1.2.840.99999.1 7", ""), ("1.2.840.99999.1_7_c62e6b8eb456", "")]
    sends += [("1.2.840.99999.1", ""), ("1.2.840.99999.1", "CORRECTED^NAME"), ("1.2.840.99999.1.v2", "")]
    assoc = associate(port)
    try:
        for sop_uid, name in sends:
            ds = read("CT_small.dcm")
            ds.SOPInstanceUID = sop_uid
            ds.PatientName = name or ds.PatientName
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    assert len(list(node.storage.iter_files())) == node.ledger.block_count() == len(sends)
    report = verify_node(node.ledger, node.storage)
    assert report.ok, report.findings


def _elements(body: bytes) -> list[tuple[int, int]]:
    """(offset, header length) of each top-level element of an explicit VR little endian body."""
    out, at = [], 0
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
    while at + 8 <= len(body):
        vr = body[at + 4 : at + 6]
        if vr in long_vrs:
            length, header = int.from_bytes(body[at + 8 : at + 12], "little"), 12
        else:
            length, header = int.from_bytes(body[at + 6 : at + 8], "little"), 8
        out.append((at, header))
        if length == 0xFFFFFFFF:
            break  # an undefined length: the walk stops, the elements before it are enough
        at += header + length
    return out


VRS = [b"SQ", b"UN", b"OB", b"LO", b"UL", b"US", b"DS", b"UI", b"AT", b"\x00\x00"]


@st.composite
def mutations(draw) -> tuple[str, int, bytes]:
    """One element-level change: a VR replaced, a length changed, the body cut inside an element,
    bytes inserted at an element boundary (an orphan element of our group among them)."""
    kind = draw(st.sampled_from(["vr", "length", "cut", "insert"]))
    index = draw(st.integers(0, 10_000))
    if kind == "vr":
        return kind, index, draw(st.sampled_from(VRS))
    if kind == "length":
        return kind, index, draw(st.integers(0, 0xFFFF)).to_bytes(2, "little")
    if kind == "cut":
        return kind, index, draw(st.integers(1, 11)).to_bytes(1, "little")
    element = draw(st.sampled_from([b"\x01\x10", b"\x10\x10", b"\x10\x00"]))
    orphan = b"\x71\x00" + element + b"LO\x06\x00ORPHAN"
    return kind, index, draw(st.sampled_from([orphan, b"\x00", b"\xfe\xff\x00\xe0", b"\xe0\x7f\x10\x00OW"]))


def _mutated(body: bytes, elements: list[tuple[int, int]], change: tuple[str, int, bytes]) -> bytes:
    kind, index, value = change
    at, header = elements[index % len(elements)]
    if kind == "vr":
        return body[: at + 4] + value + body[at + 6 :]
    if kind == "length":
        where = at + (8 if header == 12 else 6)
        return body[:where] + value + body[where + 2 :]
    if kind == "cut":
        return body[: at + value[0]]
    return body[:at] + value + body[at:]


def test_every_instance_answered_success_verifies(gateway, tmp_path):
    """Element-level mutations of a valid instance on the wire: whatever is acknowledged, the node's
    own ``verify`` accepts (the fuzzing that found 48 acknowledged files failing it, bounded)."""
    from hypothesis import HealthCheck, given, settings

    node, port = gateway
    scu = AE(ae_title="FUZZSCU")
    scu.add_requested_context(Verification)
    scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)  # the VRs are on the wire
    assoc = scu.associate("127.0.0.1", port, ae_title="DICOMCHAIN")
    assert assoc.is_established
    body = encode_body(read("CT_small.dcm"), ExplicitVRLittleEndian)
    elements = _elements(body)
    answered: dict[int, int] = {}

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(mutations(), st.integers(0, 10**9))
    def send(change, serial):
        data = _mutated(body, elements, change)
        status = send_raw(assoc, CTImageStorage, f"1.2.826.0.1.3680043.10.511.2.{serial}", data, tmp_path)
        answered[status] = answered.get(status, 0) + 1
        assert status in (0x0000, CANNOT_UNDERSTAND, 0xB000, 0xB007, 0xB006), hex(status)

    try:
        send()
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    files = [node.storage.path(p) for p in node.storage.iter_files()]
    assert len(files) == node.ledger.block_count()
    report = verify_files(files)
    assert report.ok, (answered, [(f.message, f.path) for f in report.errors])


FULL_DISK_BYTES = 4 * 1024 * 1024  # room for a node home and a few small instances, filled at will


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real file system of FULL_DISK_BYTES (tmpfs), to be filled to its last byte."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FULL_DISK_BYTES}", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Write until the kernel says ENOSPC, down to single bytes: 0 bytes free."""
    import os

    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    assert os.statvfs(disk).f_bfree == 0
    return filler


@pytest.mark.parametrize("full", ["home", "storage"])
def test_a_disk_with_0_bytes_free_is_a700_and_the_gateway_recovers(small_disk, tmp_path, full):
    """Everything on the full disk (intent, ledger, file), or only the store: A700 (retry later),
    never 0110; nothing half-written is left, and once there is room the same instance is stored."""
    from dicom_chain.config import Settings
    from dicom_chain.verify import verify_node
    from scp.statuses import OUT_OF_RESOURCES

    if full == "home":
        settings = Settings(home=small_disk / "node", institution="Test Hospital")
    else:
        settings = Settings(home=tmp_path / "node", storage=small_disk / "store", institution="Test Hospital")
    node = Node.open(settings)
    port = free_port()
    ae = start_server(node, ae_title="DICOMCHAIN", host="127.0.0.1", port=port)
    try:
        assoc = associate(port)
        assert assoc.send_c_store(read("MR_small.dcm")).Status == 0x0000
        filler = _fill(small_disk)
        assert [assoc.send_c_store(read("CT_small.dcm")).Status for _ in range(2)] == [OUT_OF_RESOURCES] * 2
        assert assoc.send_c_echo().Status == 0x0000
        filler.unlink()
        assert assoc.send_c_store(read("CT_small.dcm")).Status == 0x0000
        assoc.release()
        assert node.ledger.block_count() == len(list(node.storage.iter_files())) == 2
        assert verify_node(node.ledger, node.storage).ok
    finally:
        ae.shutdown()
        node.close()


@pytest.mark.dcmtk
def test_dcmtk_storescu_of_an_imperfect_but_whole_image_is_stored_with_a_warning(gateway):
    """pydicom's MR_small_padded.dcm (Pixel Data 8,320 bytes for 8,192): stored as received,
    chained and verifiable, answered B007 (PS3.4 B.2.3) with the anomaly in Error Comment and in
    the receipt event; a badVR.dcm alongside is refused C000 with a reason, never a Python error."""
    import os
    import subprocess

    from dicom_chain.verify import verify_node
    from dicom_chain.vocab import EventType

    from .conftest import pydicom_file
    from .peers import require_tool

    storescu = require_tool("storescu", "dcmtk")
    node, port = gateway
    anomaly = "pixel-data-length: 8320 bytes, 8192 expected"
    files = [pydicom_file("MR_small_padded.dcm"), pydicom_file("badVR.dcm")]
    result = subprocess.run(
        [storescu, "-v", "-aet", "MR_SCANNER", "-aec", "DICOMCHAIN", "127.0.0.1", str(port), *files],
        capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"},
    )  # fmt: skip
    said = result.stdout + result.stderr
    assert "Received Store Response (Warning: DataSetDoesNotMatchSOPClass)" in said
    assert "Received Store Response (Error: CannotUnderstand)" in said
    [stored] = [node.storage.path(p) for p in node.storage.iter_files()]
    assert verify_files([stored]).ok
    assert verify_node(node.ledger, node.storage).ok  # the whole node: chain, events, files
    sent, kept = pydicom.dcmread(files[0]), pydicom.dcmread(stored)
    assert kept.PixelData == sent.PixelData  # every byte as received
    [receipt] = [e for e in node.ledger.iter_events() if e.type == EventType.INSTANCE_RECEIVED]
    assert receipt.details["anomalies"] == [anomaly] and receipt.actor == "MR_SCANNER"
    # the same through pynetdicom, to read the Error Comment each status carries
    scu = AE(ae_title="TESTSCU")
    scu.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    scu.add_requested_context(RTDoseStorage, ExplicitVRLittleEndian)
    assoc = scu.associate("127.0.0.1", port, ae_title="DICOMCHAIN")
    assert assoc.is_established
    try:
        warned = assoc.send_c_store(read("MR_small_padded.dcm"))
        assert warned.Status == 0xB007 and warned.ErrorComment == anomaly
        refused = assoc.send_c_store(read("badVR.dcm"))
        assert refused.Status == CANNOT_UNDERSTAND
        assert refused.ErrorComment == "pixel data without a usable Image Pixel module"
        short = read("MR_small.dcm")
        short.PixelData = short.PixelData[:-64]
        refused = assoc.send_c_store(short)
        assert refused.Status == CANNOT_UNDERSTAND and refused.ErrorComment.startswith("incomplete image")
    finally:
        assoc.release()
    assert node.ledger.block_count() == 1


def test_every_malformed_input_over_c_store_gets_a_status_with_a_reason(gateway):
    """tests/malformed/ sent as a broken modality sends it (the bytes after the file meta, never
    re-encoded): refused ones get C000 and a reason of ours in Error Comment, never a Python
    exception's text; kept ones Success, or B007 naming their anomaly (expected.toml)."""
    import tomllib

    from pynetdicom import _config

    from .conftest import MALFORMED

    assert _config.STORE_SEND_CHUNKED_DATASET
    expected = tomllib.loads((MALFORMED / "expected.toml").read_text())["ingest"]
    _node, port = gateway
    sent = 0
    for path in sorted(MALFORMED.glob("*.dcm")):
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
            sop_class, syntax = meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID
        except Exception:  # no file meta to send it by: pynetdicom cannot either
            continue
        scu = AE(ae_title="TESTSCU")
        scu.add_requested_context(sop_class, syntax)
        assoc = scu.associate("127.0.0.1", port, ae_title="DICOMCHAIN")
        assert assoc.is_established
        try:
            rsp = assoc.send_c_store(path)
        except ValueError:  # pynetdicom will not send it (a UID over 64 characters)
            continue
        finally:
            assoc.release()
        sent += 1
        outcome, comment = expected[path.name], str(rsp.get("ErrorComment", ""))
        if "refused" in outcome:
            assert rsp.Status == CANNOT_UNDERSTAND, path.name
            assert comment and not any(word in comment for word in ("TypeError", "ValueError", "Traceback"))
        else:
            assert rsp.Status == (0xB007 if outcome["stored"] else 0x0000), (path.name, comment)
            assert comment == "; ".join(outcome["stored"])
    assert sent >= 24  # the rest have no file meta to send them by, or pynetdicom refuses their UID
