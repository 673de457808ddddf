"""The C-STORE response's command set packed with ``struct``, not built and encoded by pydicom.

pynetdicom 3.0.4's ``DIMSEServiceProvider.send_msg`` turns each response primitive into a pydicom
``Dataset`` (one ``DataElement`` per command field, every value set through ``__setattr__`` and
converted), encodes it once to learn the group length and again to send it: about 0.2 ms of the
association thread per C-STORE, on the path the sender waits on, for 7 elements of fixed layout.

Here, for the associations of an AE the reactor was installed for (scp/reactor.py), a C-STORE
response with nothing but the usual fields (no Error Comment, no Offending Element) is packed as
implicit VR little endian (PS3.7 6.3.1: every command set is) by ``store_response_bytes``, the
same bytes pynetdicom sends (tests/test_respond.py compares them), and is written as the one
P-DATA-TF PDU the DUL would write, by the association's own thread when the server's transport
lets it (``_write_directly``), else through the DUL's queue. Anything else, or a handler bound to
EVT_DIMSE_SENT (which needs the message object), goes through pynetdicom unchanged.
"""

from __future__ import annotations

import ssl
import struct
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from dicom_chain.storage import write_vectored

C_STORE_RSP_FIELD = 0x8001  # PS3.7 9.3.1.2, Command Field of a C-STORE-RSP
NO_DATA_SET = 0x0101  # PS3.7 E.1, Command Data Set Type: no data set follows
LAST_COMMAND_FRAGMENT = b"\x03"  # PS3.8 E.2: command, last fragment
PDV_OVERHEAD = 6  # PS3.8 9.3.5.1: item length (4), context ID (1), control header (1)
_ELEMENT = struct.Struct("<HHL")  # group, element, value length (implicit VR little endian)
US = struct.Struct("<H")
P_DATA_TF = 0x04  # PS3.8 9.3.1, the PDU type
# PDU type 0x04, reserved, PDU length; PDV item length, context ID, control header (PS3.8 9.3.5)
PDATA_HEADER = struct.Struct(">BBLLBB")
# Control headers (PS3.8 E.2): bit 0 command (1) or data set (0), bit 1 last fragment
COMMAND, COMMAND_LAST, DATA, DATA_LAST = 0x01, 0x03, 0x00, 0x02
# Handlers that want what is sent as pynetdicom's objects: a message written here has none
EVENTS_AS_OBJECTS = (evt.EVT_DIMSE_SENT, evt.EVT_PDU_SENT, evt.EVT_DATA_SENT)


def command_element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def command_set(*elements: bytes) -> bytes:
    """``elements`` (``command_element``s, in tag order) behind their group length."""
    group = b"".join(elements)
    return command_element(0x0000, struct.pack("<L", len(group))) + group


def command_uid(value: Any) -> bytes | None:
    """A UID value as pydicom writes it (padded with one NUL to even length); None where
    pydicom's own rules might differ (not ASCII, or padding already there)."""
    text = str(value)
    if not text.isascii() or text.endswith(("\x00", " ")):
        return None
    raw = text.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def store_response_bytes(rsp: C_STORE) -> bytes | None:
    """The encoded command set of C-STORE response ``rsp``; None when it is not the plain case
    (the caller then leaves it to pynetdicom)."""
    if rsp.ErrorComment is not None or rsp.OffendingElement is not None:
        return None
    status, message_id = rsp.Status, rsp.MessageIDBeingRespondedTo
    if not isinstance(status, int) or not isinstance(message_id, int):
        return None
    if not (0 <= status <= 0xFFFF and 0 <= message_id <= 0xFFFF):
        return None
    parts = []
    if rsp.AffectedSOPClassUID is not None:
        uid = command_uid(rsp.AffectedSOPClassUID)
        if uid is None:
            return None
        parts.append(command_element(0x0002, uid))
    parts.append(command_element(0x0100, US.pack(C_STORE_RSP_FIELD)))
    parts.append(command_element(0x0120, US.pack(message_id)))
    parts.append(command_element(0x0800, US.pack(NO_DATA_SET)))
    parts.append(command_element(0x0900, US.pack(status)))
    if rsp.AffectedSOPInstanceUID is not None:
        uid = command_uid(rsp.AffectedSOPInstanceUID)
        if uid is None:
            return None
        parts.append(command_element(0x1000, uid))
    return command_set(*parts)


def send_store_response(dimse: Any, primitive: Any, context_id: int) -> bool:
    """Send ``primitive`` if it is a plain C-STORE response (True); False: not handled here."""
    if primitive.__class__ is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
        return False
    if dimse.assoc.get_handlers(evt.EVT_DIMSE_SENT):
        return False
    command = store_response_bytes(primitive)
    if command is None:
        return False
    max_pdu = dimse.maximum_pdu_size
    if max_pdu and len(command) > max_pdu - PDV_OVERHEAD:
        return False  # fragments: pynetdicom's own splitting
    if _write_directly(dimse, context_id, command):
        return True
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, LAST_COMMAND_FRAGMENT + command))
    dimse.dul.send_pdu(pdata)
    return True


def _write_directly(dimse: Any, context_id: int, command: bytes) -> bool:
    """Write the response's one PDU from this thread (True), not through the DUL's queue: that
    hand-off (the DUL thread woken, then waiting for the GIL while this one goes on) took 0.26 ms
    median from the response's packing to its write, measured over 400 C-STOREs from storescu.

    Only on the server's transport, whose every write holds its ``sending`` lock (so no PDU is cut
    into), in Sta6 (P-DATA changes no state: PS3.8 9.2, DT-1), with nothing waiting in the DUL's
    queue and no handler wanting PDUs or data as objects. A peer that waits for each response
    before its next request (no asynchronous operations were negotiated) has nothing of ours still
    on its way when its request is answered; one that sends ahead may get two responses in another
    order, each whole and naming its request."""
    dul = dimse.dul
    transport = dul.socket
    lock = getattr(transport, "sending", None)
    sock = transport.socket if transport is not None and transport._is_connected else None
    if lock is None or sock is None or dul.state_machine.current_state != "Sta6":
        return False
    if not dul.to_provider_queue.empty() or any(dimse.assoc.get_handlers(e) for e in EVENTS_AS_OBJECTS):
        return False
    header = PDATA_HEADER.pack(
        P_DATA_TF, 0, PDV_OVERHEAD + len(command), 2 + len(command), context_id, COMMAND_LAST
    )
    with lock:
        try:
            send_all(sock, [header, command])
        except OSError:  # as pynetdicom's AssociationSocket.send: the transport closed (Evt17)
            dul.event_queue.put("Evt17")
    return True


def send_all(sock: Any, buffers: list[bytes | memoryview]) -> None:
    """Write every buffer, in order: ``sendmsg`` may take part of them (a socket with a timeout)."""
    if isinstance(sock, ssl.SSLSocket):  # no scatter-gather through TLS
        sock.sendall(b"".join(buffers))
        return
    write_vectored(sock.sendmsg, buffers)
