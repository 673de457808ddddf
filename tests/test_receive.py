"""The receive path without pynetdicom's copies (scp/receive.py): the same messages, events and
files as pynetdicom 3.0.4's own code, from PDUs framed every way a peer may frame them."""

from __future__ import annotations

import logging
import struct
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from scp import reactor, receive
from scp.chunked import Spool, SpoolFile

CX = 1
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def stock(name: str) -> Any:
    assert reactor.install(AE()), "pynetdicom version the reactor was written for"
    return reactor._stock[name]


def c_store_pdvs(data_set: bytes, fragment: int) -> list[bytes]:
    """A C-STORE-RQ as its PDV values (control byte first), fragments of at most ``fragment``."""
    rq = C_STORE()
    rq.MessageID = 7
    rq.AffectedSOPClassUID = CTImageStorage
    rq.AffectedSOPInstanceUID = SOP_INSTANCE
    rq.Priority = 0
    rq.DataSet = BytesIO(data_set)
    msg = C_STORE_RQ()
    msg.primitive_to_message(rq)
    return [value for p in msg.encode_msg(CX, fragment) for _, value in p.presentation_data_value_list]


def pdata_body(values: list[bytes]) -> bytes:
    return b"".join(struct.pack(">LB", len(v) + 1, CX) + v for v in values)


def as_primitive(values: list[bytes] | list[memoryview]) -> P_DATA:
    p = P_DATA()
    p.presentation_data_value_list = []
    p.presentation_data_value_list.extend([CX, v] for v in values)  # type: ignore[misc]
    return p


def framed(pdvs: list[bytes], per_pdu: int) -> list[P_DATA]:
    """PDVs ``per_pdu`` to a P-DATA-TF, each decoded by ``pdv_items`` (views of its body)."""
    out = []
    for i in range(0, len(pdvs), per_pdu):
        body = memoryview(bytearray(pdata_body(pdvs[i : i + per_pdu]))).toreadonly()
        out.append(as_primitive([v for _, v in receive.pdv_items(body)]))
    return out


ASSOC = SimpleNamespace(_accepted_cx={CX: SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])})
DATA_SET = bytes(range(256)) * 2000  # 512 000 bytes: a CT slice's size


def decode(decoder: Any, primitives: list[P_DATA]) -> tuple[DIMSEMessage, list[bool]]:
    msg = DIMSEMessage()
    done = [decoder(msg, p, ASSOC) for p in primitives]
    return msg, done


# -- P-DATA-TF: PDVs as views -------------------------------------------------------------------


def test_several_pdvs_in_one_pdu_are_views_of_its_body_with_pynetdicoms_values():
    values = [b"\x03command", b"\x00data-1", b"\x02data-2-last"]
    body = bytearray(pdata_body(values))
    items = receive.pdv_items(memoryview(body).toreadonly())
    assert [(cid, bytes(v)) for cid, v in items] == list(P_DATA_TF._generate_items(bytes(body)))
    assert all(isinstance(v, memoryview) and v.obj is body and v.readonly for _, v in items)


@pytest.mark.parametrize(
    "body",
    [
        struct.pack(">LB", 0, CX),  # length 0: not even a context ID
        struct.pack(">LB", 100, CX) + b"\x02short",  # runs past the PDU
        struct.pack(">LB", 6, CX) + b"\x02data" + b"\x00\x00\x00",  # a truncated second item header
        struct.pack(">L", 5),  # an item header without its context ID
    ],
)
def test_malformed_pdv_lengths_are_refused_where_pynetdicom_refuses_them(body: bytes):
    with pytest.raises((AssertionError, struct.error)):
        list(P_DATA_TF._generate_items(body))
    with pytest.raises(ValueError):
        receive.pdv_items(memoryview(body))


def test_an_empty_pdv_is_accepted_as_pynetdicom_accepts_it():
    body = struct.pack(">LB", 1, CX)
    assert list(P_DATA_TF._generate_items(body)) == [(CX, b"")]
    assert [(c, bytes(v)) for c, v in receive.pdv_items(memoryview(body))] == [(CX, b"")]


# -- DIMSE messages from views: the same as pynetdicom's --------------------------------------


@pytest.mark.parametrize(
    "per_pdu", [1, 2, 100], ids=["pdv-per-pdu", "two-per-pdu", "command-and-data-in-one"]
)
def test_a_c_store_decodes_as_pynetdicom_decodes_it(per_pdu: int, monkeypatch):
    """Fragments of 128 KiB: the data set spans PDUs, or comes whole with its command in one."""
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)  # a gateway built sets it
    pdvs = c_store_pdvs(DATA_SET, 131_072)
    assert len(pdvs) >= 5
    ours, done = decode(receive.decode_msg, framed(pdvs, per_pdu))
    theirs, their_done = decode(stock("DIMSEMessage.decode_msg"), [as_primitive(pdvs)])
    assert done[-1] is True and not any(done[:-1]), "complete at the last fragment, not before"
    assert their_done == [True]
    assert type(ours) is C_STORE_RQ is type(theirs)
    assert ours.command_set == theirs.command_set
    assert ours.data_set.getvalue() == theirs.data_set.getvalue() == DATA_SET


def test_a_message_is_incomplete_until_its_last_fragment_bit(monkeypatch):
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    pdvs = c_store_pdvs(DATA_SET, 131_072)
    last = pdvs[-1]
    not_last = bytes([last[0] & ~2]) + last[1:]
    msg = DIMSEMessage()
    assert [receive.decode_msg(msg, p, ASSOC) for p in framed([*pdvs[:-1], not_last], 1)][-1] is False
    assert receive.decode_msg(msg, as_primitive([b"\x02"]), ASSOC) is True  # an empty last fragment
    assert msg.data_set.getvalue() == DATA_SET


@pytest.mark.parametrize("memory_bytes", [4 * 1024 * 1024, 100_000], ids=["in-memory", "spilled-to-disk"])
def test_chunked_receive_writes_the_file_pynetdicom_writes(tmp_path: Path, monkeypatch, memory_bytes: int):
    """The file meta made without pydicom, fragments written as views: the same Part 10 file,
    held in memory or, past the spool's memory limit, spilled to disk part way through."""
    spool = Spool(tmp_path / "spool", max_bytes=10_000_000, memory_bytes=memory_bytes)
    made: list[Any] = []

    def temp_file(*_: Any, **__: Any) -> Any:
        made.append(spool.create(None))
        return made[-1]

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", temp_file, raising=False)
    pdvs = c_store_pdvs(DATA_SET, 131_072)
    decode(receive.decode_msg, framed(pdvs, 1))
    decode(stock("DIMSEMessage.decode_msg"), [as_primitive(pdvs)])
    ours, theirs = made
    for spooled in made:
        spooled.close()

    def content(spooled: SpoolFile) -> bytes:
        return spooled.getvalue() if spooled.in_memory else spooled.path.read_bytes()

    assert ours.in_memory is (memory_bytes > len(DATA_SET) + 300)
    assert content(ours) == content(theirs)
    assert content(ours).endswith(DATA_SET)
    spool.close()


@pytest.mark.parametrize(
    ("sop_class", "instance", "syntax"),
    [
        (CTImageStorage, SOP_INSTANCE, ExplicitVRLittleEndian),  # odd, even, odd
        ("1.2.840.10008.5.1.4.1.1.22", "1.2.3.44", ImplicitVRLittleEndian),  # even, even, odd
        ("1.2", "1" * 64, "1.2.840.10008.1.2.4.50"),
    ],
)
def test_file_meta_bytes_are_pydicoms(sop_class: str, instance: str, syntax: str):
    fp = BytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=instance, transfer_syntax=syntax)
    write_file_meta_info(fp, meta)
    assert receive.file_meta_bytes(sop_class, instance, syntax) == fp.getvalue()


def test_a_uid_pydicom_refuses_is_still_refused_by_pydicom():
    with pytest.raises(AttributeError, match="Media Storage SOP Instance UID"):  # empty: PS3.10 7.1
        receive.write_file_meta(BytesIO(), CTImageStorage, "", ExplicitVRLittleEndian)


# -- reading PDUs: the events pynetdicom's _read_pdu_data gives -------------------------------


class Chunks:
    """A transport that returns what the DUL asks for from fixed bytes (short once they run out)."""

    socket = None  # no kernel socket to re-arm ACKs on

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    def recv(self, n: int) -> bytearray:
        out = self.data[:n]
        del self.data[:n]
        return out


def dul_reading(data: bytes) -> Any:
    assoc = Association(AE(), "acceptor")
    assoc.dul.socket = Chunks(data)  # type: ignore[assignment]
    return assoc.dul


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def test_a_p_data_tf_is_read_as_views_with_its_events():
    values = [b"\x03cmd", b"\x02data"]
    raw = pdu(0x04, pdata_body(values))
    dul = dul_reading(raw)
    seen: dict[str, Any] = {}
    dul.assoc.bind(evt.EVT_DATA_RECV, lambda event: seen.setdefault("data", event.data))
    dul.assoc.bind(evt.EVT_PDU_RECV, lambda event: seen.setdefault("pdu", event.pdu))
    receive.read_pdu_data(dul)
    assert dul.event_queue.get_nowait() == "Evt10"
    got = dul._recv_pdu.get_nowait()
    assert seen == {"data": raw, "pdu": got}
    primitive = got.to_primitive()
    assert [(c, bytes(v)) for c, v in primitive.presentation_data_value_list] == [(CX, v) for v in values]
    assert all(isinstance(v, memoryview) for _, v in primitive.presentation_data_value_list)


def test_other_pdus_go_through_pynetdicoms_decoder():
    dul = dul_reading(pdu(0x05, b"\x00" * 4))  # A-RELEASE-RQ
    receive.read_pdu_data(dul)
    assert dul.event_queue.get_nowait() == "Evt12"
    assert type(dul._recv_pdu.get_nowait()).__name__ == "A_RELEASE_RQ"


@pytest.mark.parametrize(
    ("raw", "event"),
    [
        (pdu(0x04, struct.pack(">LB", 100, CX) + b"\x02x"), "Evt19"),
        (pdu(0x04, pdata_body([b"\x02data"]))[:-2], "Evt17"),
        (b"\x04\x00\x00", "Evt17"),
        (pdu(0x09, b""), "Evt19"),
    ],
    ids=["bad-pdv-length", "short-body", "short-header", "unknown-type"],
)
def test_bad_pdus_are_answered_as_pynetdicom_answers_them(raw: bytes, event: str, caplog):
    """The same event and the same ERROR lines as pynetdicom's own ``_read_pdu_data`` (the text
    of a decoding exception aside: ours says what is wrong)."""
    answers = []
    for read in (receive.read_pdu_data, stock("DULServiceProvider._read_pdu_data")):
        dul = dul_reading(raw)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="pynetdicom.dul"):
            read(dul)
        assert dul._recv_pdu.empty()
        lines = [r.getMessage() if r.exc_info is None else "(the exception)" for r in caplog.records]
        answers.append((dul.event_queue.get_nowait(), lines))
    assert answers[0] == answers[1]
    assert answers[0][0] == event
