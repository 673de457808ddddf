"""A C-STORE request written to the socket by the thread that sends it, in one system call.

pynetdicom 3.0.4 sends a DIMSE message as one P-DATA primitive per PDU: ``send_msg`` puts each
on the DUL's queue, and the DUL thread wakes, runs its state machine (Sta6 + Evt9: DT-1),
builds a ``P_DATA_TF``, encodes it (copying the fragment again) and writes it. A 0.5 MB CT slice
to a PACS that accepts 16 KB PDUs (Orthanc's and DCMTK's default) is 33 such hand-offs between
two threads that share the GIL: measured on the forwarder, about half its CPU per instance.

Here, for the associations of an AE the reactor was installed for (scp/reactor.py), a C-STORE
request whose data set is a stored file's (``send_c_store(path)``) or already encoded goes out
from the sending thread as the same PDUs (tests/test_request.py compares the bytes), in one
``sendmsg`` over the file's bytes and a 12-byte header per PDU. Only as the requestor (the
forwarder, a release to another institution), in Sta6 with nothing waiting in the DUL's queue
(nothing else is being sent, and P-DATA in Sta6 changes no state: PS3.8 9.2, DT-1), and only
while no handler wants the messages or PDUs as objects (EVT_DIMSE_SENT, EVT_PDU_SENT,
EVT_DATA_SENT); anything else goes through pynetdicom unchanged.
The response comes back through the DUL as before.
"""

from __future__ import annotations

from typing import Any

from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from .receive import P_DATA_TF_TYPE
from .respond import (
    COMMAND,
    COMMAND_LAST,
    DATA,
    DATA_LAST,
    EVENTS_AS_OBJECTS,
    PDATA_HEADER,
    PDV_OVERHEAD,
    US,
    command_element,
    command_set,
    command_uid,
    send_all,
)

C_STORE_RQ_FIELD = 0x0001  # PS3.7 9.3.1.1, Command Field of a C-STORE-RQ
DATA_SET_PRESENT = 0x0001  # PS3.7 E.1: any value but 0x0101; pynetdicom sends 0x0001
PRIORITIES = (0x0000, 0x0001, 0x0002)  # medium, high, low (PS3.7 9.1.1.1.6)


def fragments(
    context_id: int, value: memoryview, max_pdu: int, more: int, last: int
) -> list[bytes | memoryview]:
    """``value`` as P-DATA-TF PDUs of at most ``max_pdu`` bytes (0: one PDU), header then
    fragment, the fragments views of ``value``: pynetdicom's ``encode_msg`` splitting."""
    size = max_pdu - PDV_OVERHEAD if max_pdu else max(len(value), 1)
    out: list[bytes | memoryview] = []
    starts = range(0, max(len(value), 1), size)
    for start in starts:
        part = value[start : start + size]
        control = last if start + size >= len(value) else more
        out.append(
            PDATA_HEADER.pack(P_DATA_TF_TYPE, 0, PDV_OVERHEAD + len(part), 2 + len(part), context_id, control)
        )
        out.append(part)
    return out


def message_buffers(
    command: bytes, data: memoryview, context_id: int, max_pdu: int
) -> list[bytes | memoryview]:
    """The PDUs of a message with command set ``command`` and data set ``data``."""
    buffers = fragments(context_id, memoryview(command), max_pdu, COMMAND, COMMAND_LAST)
    if len(data):
        buffers += fragments(context_id, data, max_pdu, DATA, DATA_LAST)
    return buffers


def store_request_bytes(req: C_STORE) -> bytes | None:
    """The encoded command set of C-STORE request ``req`` (implicit VR little endian, PS3.7
    6.3.1), pynetdicom's bytes; None when it is not the plain case (a C-MOVE's sub-operation
    names its originator): pynetdicom encodes those."""
    if req.MoveOriginatorApplicationEntityTitle is not None or req.MoveOriginatorMessageID is not None:
        return None
    message_id, priority = req.MessageID, req.Priority
    if not isinstance(message_id, int) or not 0 <= message_id <= 0xFFFF or priority not in PRIORITIES:
        return None
    sop_class, sop_instance = command_uid(req.AffectedSOPClassUID), command_uid(req.AffectedSOPInstanceUID)
    if sop_class is None or sop_instance is None:
        return None
    return command_set(
        command_element(0x0002, sop_class),
        command_element(0x0100, US.pack(C_STORE_RQ_FIELD)),
        command_element(0x0110, US.pack(message_id)),
        command_element(0x0700, US.pack(priority)),
        command_element(0x0800, US.pack(DATA_SET_PRESENT)),
        command_element(0x1000, sop_instance),
    )


def _command(primitive: C_STORE) -> bytes | None:
    packed = store_request_bytes(primitive)
    if packed is not None:
        return packed
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)  # type: ignore[no-any-return]


def _data_set(primitive: C_STORE) -> memoryview | None:
    """The encoded data set the request carries: the stored file's bytes past its meta, or the
    BytesIO pynetdicom encoded; None for anything else."""
    where = getattr(primitive, "_dataset_path", None)
    if where is not None:
        path, offset = where
        with open(path, "rb") as f:
            f.seek(offset)
            return memoryview(f.read())
    data = primitive.DataSet
    if data is not None and hasattr(data, "getbuffer"):
        return data.getbuffer()
    return None


def send_store_request(dimse: Any, primitive: Any, context_id: int) -> bool:
    """Send ``primitive`` straight to the socket if it is a C-STORE request this module takes
    (True); False: not handled, nothing sent."""
    if primitive.__class__ is not C_STORE or primitive.MessageIDBeingRespondedTo is not None:
        return False
    assoc, dul = dimse.assoc, dimse.dul
    # A requestor's thread sends one message and waits for its answer before the next, so nothing
    # it queued earlier can still be on its way to the socket. An acceptor's C-GET sends its
    # C-STORE sub-operations between C-GET responses that go through the DUL's queue: one the DUL
    # has taken off the queue but not yet written would be overtaken (or cut into).
    if not assoc.is_requestor or any(assoc.get_handlers(event) for event in EVENTS_AS_OBJECTS):
        return False
    transport = dul.socket
    sock = transport.socket if transport is not None and transport._is_connected else None
    if sock is None or dul.state_machine.current_state != "Sta6" or not dul.to_provider_queue.empty():
        return False
    data = _data_set(primitive)
    if data is None or not len(data):
        return False
    command = _command(primitive)
    if command is None:
        return False
    try:
        send_all(sock, message_buffers(command, data, context_id, dimse.maximum_pdu_size))
    except OSError:  # as pynetdicom's AssociationSocket.send: the transport closed (Evt17)
        dul.event_queue.put("Evt17")
    return True
