"""C-STORE requests written by the sending thread (scp/request.py): pynetdicom's bytes, or its path."""

from __future__ import annotations

import socket
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from scp import reactor, receive, request

from .conftest import TEST_FILES
from .peers import free_port, wait_until

UIDS = st.text(alphabet="0123456789.", min_size=1, max_size=64)


def store_request(message_id: int = 7, priority: int = 2, data: bytes = b"\x08\x00") -> C_STORE:
    req = C_STORE()
    req.MessageID = message_id
    req.Priority = priority
    req.AffectedSOPClassUID = CTImageStorage
    req.AffectedSOPInstanceUID = "1.2.3.4"
    req.DataSet = BytesIO(data)
    return req


def pynetdicoms_command(req: C_STORE) -> bytes:
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    return encode(message.command_set, True, True)


def pynetdicoms_pdus(req: C_STORE, context_id: int, max_pdu: int) -> bytes:
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    return b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(context_id, max_pdu))


@given(message_id=st.integers(0, 0xFFFF), priority=st.sampled_from([0, 1, 2]), sop_class=UIDS, instance=UIDS)
def test_a_plain_request_is_packed_as_pynetdicom_encodes_it(message_id, priority, sop_class, instance):
    req = store_request(message_id, priority)
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = sop_class, instance
    assert request.store_request_bytes(req) == pynetdicoms_command(req)


def test_a_move_sub_operation_is_encoded_by_pynetdicom():
    req = store_request()
    req.MoveOriginatorApplicationEntityTitle = "VIEWER"
    req.MoveOriginatorMessageID = 3
    assert request.store_request_bytes(req) is None
    assert request._command(req) == pynetdicoms_command(req)  # and still sent straight


@settings(max_examples=60)
@given(
    data=st.binary(min_size=1, max_size=3000),
    max_pdu=st.sampled_from([0, 7, 64, 200, 1006, 16384]),
    context_id=st.sampled_from([1, 3, 255]),
)
def test_the_pdus_are_the_bytes_pynetdicom_sends(data: bytes, max_pdu: int, context_id: int):
    req = store_request(data=data)
    ours = request.message_buffers(request._command(req), memoryview(data), context_id, max_pdu)
    assert b"".join(ours) == pynetdicoms_pdus(req, context_id, max_pdu)


def test_send_all_finishes_what_sendmsg_leaves():
    """A socket with a timeout takes what fits (a partial sendmsg): every byte arrives, in order."""
    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    left.settimeout(10)
    buffers: list[bytes | memoryview] = [bytes([n % 251]) * (1000 + 37 * n) for n in range(300)]
    buffers += [memoryview(b"tail" * 10)]
    got = bytearray()

    def read() -> None:
        while chunk := right.recv(1000):
            got.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        request.send_all(left, buffers)
    finally:
        left.close()
        reader.join(10)
        right.close()
    assert bytes(got) == b"".join(buffers)


class Scp:
    """A stock pynetdicom SCP (no reactor) with 16 KB PDUs, keeping what it received."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.ae = AE(ae_title="SCP")
        self.ae.maximum_pdu_size = 16384
        self.ae.add_supported_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
        self.port = free_port()
        self.ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.store)]
        )

    def store(self, event: Any) -> int:
        path = getattr(event.request, "_dataset_path", None)  # another test may turn on chunked receive
        if path is None:
            self.received.append(event.request.DataSet.getvalue())
        else:
            _, offset = split_dataset(path)
            self.received.append(Path(path).read_bytes()[offset:])
        return 0x0000


def reactor_scu() -> AE:
    scu = AE(ae_title="SCU")
    assert reactor.install(scu)
    scu.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    return scu


@pytest.fixture
def ct_file() -> Path:
    return TEST_FILES / "CT_small.dcm"


def counting_sends(monkeypatch) -> list[bool]:
    taken: list[bool] = []
    real = request.send_store_request

    def counting(dimse, primitive, context_id):
        out = real(dimse, primitive, context_id)
        taken.append(out)
        return out

    monkeypatch.setattr(request, "send_store_request", counting)
    return taken


def test_a_stored_file_goes_straight_and_arrives_whole(ct_file: Path, monkeypatch):
    """End to end over TCP to a stock peer: the data set it decoded is the file's, byte for byte,
    sent in 16 KB PDUs from the sending thread, twice on one association."""
    taken = counting_sends(monkeypatch)
    scp = Scp()
    try:
        assoc = reactor_scu().associate("127.0.0.1", scp.port, ae_title="SCP")
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(ct_file).Status) for _ in range(2)]
        assoc.release()
    finally:
        scp.ae.shutdown()
    assert statuses == [0, 0] and taken == [True, True]
    _, offset = split_dataset(ct_file)
    assert scp.received == [ct_file.read_bytes()[offset:]] * 2


def test_with_a_sent_handler_bound_pynetdicom_sends_it(ct_file: Path, monkeypatch):
    """A handler that wants each PDU as an object gets them: the message goes pynetdicom's way."""
    taken = counting_sends(monkeypatch)
    pdus: list[str] = []
    scp = Scp()
    try:
        handlers = [(evt.EVT_PDU_SENT, lambda e: pdus.append(type(e.pdu).__name__))]
        assoc = reactor_scu().associate("127.0.0.1", scp.port, ae_title="SCP", evt_handlers=handlers)
        assert int(assoc.send_c_store(ct_file).Status) == 0
        assoc.release()
    finally:
        scp.ae.shutdown()
    assert taken == [False]
    assert pdus.count("P_DATA_TF") > 2  # command and data set fragments, through the DUL
    assert len(scp.received) == 1


def test_a_transport_that_breaks_while_sending_ends_the_association(ct_file: Path, monkeypatch):
    """As pynetdicom's own send: the DUL is told the transport closed (Evt17), the association
    ends, and the caller gets the empty answer of a C-STORE without a response, not an exception."""

    def broken(sock, buffers):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(request, "send_all", broken)
    scp = Scp()
    try:
        assoc = reactor_scu().associate("127.0.0.1", scp.port, ae_title="SCP")
        assoc.dimse_timeout = 5
        answer = assoc.send_c_store(ct_file)
        assert wait_until(lambda: not assoc.is_alive(), 10)
    finally:
        scp.ae.shutdown()
    assert len(answer) == 0
    assert not assoc.is_established
    assert scp.received == []


def test_the_header_of_a_pdu_is_acked_before_its_body_is_waited_for():
    """receive.read_pdu_data re-arms TCP_QUICKACK between reading a PDU's header and its body,
    so a header a Nagle-on peer sent alone is ACKed as it is read."""
    if receive.QUICKACK is None:
        pytest.skip("TCP_QUICKACK is Linux only")
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    armed_at_body: list[int] = []

    class Transport:
        socket = conn

        def recv(self, n: int) -> bytes:
            if n != 6:  # the body: what the kernel's quick-ACK flag is as we wait for it
                armed_at_body.append(conn.getsockopt(socket.IPPROTO_TCP, receive.QUICKACK))
            return conn.recv(n, socket.MSG_WAITALL)

    try:
        conn.setsockopt(socket.IPPROTO_TCP, receive.QUICKACK, 0)
        client.sendall(b"\x05\x00\x00\x00\x00\x04" + b"\x00" * 4)  # A-RELEASE-RQ
        dul = Association(AE(), "acceptor").dul
        dul.socket = Transport()  # type: ignore[assignment]
        receive.read_pdu_data(dul)
        assert dul.event_queue.get_nowait() == "Evt12"
    finally:
        for s in (client, conn, server):
            s.close()
    assert armed_at_body == [1]


def test_an_acceptor_sends_through_pynetdicom():
    """An acceptor's C-GET sends C-STORE sub-operations between C-GET responses that go through
    the DUL's queue: a response taken off the queue but not yet written must not be overtaken."""
    import queue
    from types import SimpleNamespace

    sent: list[object] = []
    raw = SimpleNamespace(sendmsg=lambda buffers: sent.append(buffers) or sum(len(b) for b in buffers))
    dul = SimpleNamespace(
        socket=SimpleNamespace(socket=raw, _is_connected=True),
        state_machine=SimpleNamespace(current_state="Sta6"),
        to_provider_queue=queue.Queue(),
        event_queue=queue.Queue(),
    )

    def dimse(requestor: bool) -> Any:
        assoc = SimpleNamespace(is_requestor=requestor, get_handlers=lambda event: [])
        return SimpleNamespace(assoc=assoc, dul=dul, maximum_pdu_size=16384)

    assert not request.send_store_request(dimse(False), store_request(), 1)
    assert sent == []
    assert request.send_store_request(dimse(True), store_request(), 1)  # the same, as requestor
    assert len(sent) == 1
