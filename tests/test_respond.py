"""The C-STORE response packed by hand (scp/respond.py): pynetdicom's bytes, or pynetdicom's path."""

from __future__ import annotations

import queue
import socket
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from scp import reactor, respond

from .peers import free_port

UIDS = st.text(alphabet="0123456789.", min_size=1, max_size=64)


def pynetdicoms(rsp: C_STORE, max_pdu: int = 131072) -> list[tuple[int, bytes]]:
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return [
        (cx, bytes(value)) for p in msg.encode_msg(1, max_pdu) for cx, value in p.presentation_data_value_list
    ]


def response(status: int, message_id: int, sop_class: str | None, sop_instance: str | None) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.Status = status
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    return rsp


class Recorder:
    """What a DIMSE provider hands its DUL, and the handlers its association has bound."""

    def __init__(self, max_pdu: int = 131072, bound: bool = False) -> None:
        self.sent: list[Any] = []
        self.maximum_pdu_size = max_pdu
        self.dul = SimpleNamespace(send_pdu=self.sent.append, socket=None)  # no transport: queued
        self.assoc = SimpleNamespace(get_handlers=lambda event: [print] if bound else [])


@given(
    status=st.sampled_from([0x0000, 0xB000, 0xB007, 0xA700, 0xC000, 0x0124, 0xFFFF]),
    message_id=st.integers(0, 0xFFFF),
    sop_class=st.one_of(st.none(), UIDS),
    sop_instance=st.one_of(st.none(), UIDS),
)
def test_a_plain_response_is_sent_as_the_bytes_pynetdicom_sends(status, message_id, sop_class, sop_instance):
    rsp = response(status, message_id, sop_class, sop_instance)
    dimse = Recorder()
    assert respond.send_store_response(dimse, rsp, 1)
    [pdata] = dimse.sent
    assert [(cx, bytes(v)) for cx, v in pdata.presentation_data_value_list] == pynetdicoms(rsp)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: setattr(r, "ErrorComment", "cannot store"),
        lambda r: setattr(r, "OffendingElement", [0x00100010]),
    ],
)
def test_anything_but_the_plain_case_is_left_to_pynetdicom(change):
    rsp = response(0xC000, 3, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    change(rsp)
    dimse = Recorder()
    assert not respond.send_store_response(dimse, rsp, 1) and dimse.sent == []


def test_a_request_a_bound_sent_handler_or_a_tiny_pdu_is_left_to_pynetdicom():
    rsp = response(0, 3, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    assert not respond.send_store_response(Recorder(bound=True), rsp, 1)
    assert not respond.send_store_response(Recorder(max_pdu=64), rsp, 1)
    assert respond.send_store_response(Recorder(max_pdu=0), rsp, 1)  # 0: no limit (PS3.8 D.1)
    request = C_STORE()
    request.MessageID = 3
    request.AffectedSOPClassUID = CTImageStorage
    assert not respond.send_store_response(Recorder(), request, 1)


def test_an_scp_with_the_reactor_answers_c_stores_through_it(monkeypatch):
    """End to end over TCP: the responses went out packed here, and the peer read them."""
    packed: list[int] = []
    real = respond.store_response_bytes

    def counting(rsp):
        out = real(rsp)
        packed.append(rsp.Status)
        return out

    monkeypatch.setattr(respond, "store_response_bytes", counting)
    scp = AE(ae_title="SCP")
    assert reactor.install(scp)
    scp.add_supported_context(CTImageStorage)
    port = free_port()
    statuses = iter([0x0000, 0xB000])
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: next(statuses))]
    )
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(CTImageStorage)
        received: list[Any] = []  # the responses' command sets, as the peer decoded them
        handlers = [(evt.EVT_DIMSE_RECV, lambda e: received.append(e.message.command_set))]
        assoc = scu.associate("127.0.0.1", port, ae_title="SCP", evt_handlers=handlers)
        assert assoc.is_established
        statuses_seen = []
        for n in range(2):
            ds = Dataset()
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"1.2.3.{n}"
            ds.PatientName = "X"
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            statuses_seen.append(int(assoc.send_c_store(ds, msg_id=7 + n).Status))
        assoc.release()
    finally:
        server.shutdown()
    assert statuses_seen == [0x0000, 0xB000]
    assert [(c.AffectedSOPInstanceUID, c.AffectedSOPClassUID, c.CommandField) for c in received] == [
        ("1.2.3.0", CTImageStorage, 0x8001),
        ("1.2.3.1", CTImageStorage, 0x8001),
    ]
    assert [c.MessageIDBeingRespondedTo for c in received] == [7, 8]
    assert packed == [0x0000, 0xB000]


class Wire(Recorder):
    """A DIMSE provider whose DUL holds a connected socket, as the server's transport does."""

    def __init__(self, state: str = "Sta6", queued: bool = False, lock: bool = True) -> None:
        super().__init__()
        self.mine, self.theirs = socket.socketpair()
        transport = SimpleNamespace(socket=self.mine, _is_connected=True)
        if lock:
            transport.sending = threading.Lock()
        waiting: queue.Queue = queue.Queue()
        if queued:
            waiting.put(object())
        self.dul = SimpleNamespace(
            send_pdu=self.sent.append,
            socket=transport,
            state_machine=SimpleNamespace(current_state=state),
            to_provider_queue=waiting,
            event_queue=queue.Queue(),
        )

    def wire(self) -> bytes:
        self.theirs.setblocking(False)
        try:
            return self.theirs.recv(65536)
        except BlockingIOError:
            return b""


def pynetdicoms_pdu(rsp: C_STORE, context_id: int) -> bytes:
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[context_id, pynetdicoms(rsp)[0][1]]]  # control byte first
    pdu = P_DATA_TF()
    pdu.from_primitive(pdata)
    return bytes(pdu.encode())


@given(message_id=st.integers(0, 0xFFFF), context_id=st.sampled_from([1, 3, 255]))
def test_a_response_is_written_by_its_own_thread_as_the_pdu_the_dul_would_write(message_id, context_id):
    """Through the server's transport (its ``sending`` lock), in Sta6, nothing queued: the same
    bytes on the wire, and nothing for the DUL."""
    rsp = response(0, message_id, CTImageStorage, "1.2.3.4")
    dimse = Wire()
    assert respond.send_store_response(dimse, rsp, context_id)
    assert dimse.sent == [] and dimse.wire() == pynetdicoms_pdu(rsp, context_id)


@pytest.mark.parametrize("wire", [Wire(state="Sta7"), Wire(queued=True), Wire(lock=False)], ids=str)
def test_another_state_something_queued_or_no_lock_goes_through_the_dul(wire: Wire):
    rsp = response(0, 3, CTImageStorage, "1.2.3.4")
    assert respond.send_store_response(wire, rsp, 1)
    assert len(wire.sent) == 1 and wire.wire() == b""


def test_a_closed_transport_is_the_dul_s_event_17():
    dimse = Wire()
    dimse.theirs.close()
    dimse.mine.shutdown(socket.SHUT_WR)
    assert respond.send_store_response(dimse, response(0, 3, CTImageStorage, "1.2.3.4"), 1)
    assert dimse.dul.event_queue.get_nowait() == "Evt17" and dimse.sent == []
