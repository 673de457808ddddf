"""The receive path of an association, without pynetdicom's copies of every byte it receives.

pynetdicom 3.0.4 copies a P-DATA-TF's bytes five times between the socket and the handler:
``DULServiceProvider._read_pdu_data`` appends the body to the header (``bytestream +=``),
``_decode_pdu`` makes ``bytes`` of it, ``PDU.decode`` slices off the header, ``P_DATA_TF.
_generate_items`` slices each PDV out, and ``DIMSEMessage.decode_msg`` slices off its control
byte (``data[1:]``) before writing it on. For a 0.5 MB CT slice that is 2.5 MB of copies on the
DUL thread. With ``STORE_RECV_CHUNKED_DATASET`` (scp/chunked.py), ``decode_msg`` also writes each
C-STORE's File Meta Information through pydicom (``create_file_meta``, ``write_file_meta_info``):
~0.2 ms per instance, more than the copies.

Here, for the associations of an AE the reactor was installed for (scp/reactor.py):

- ``_read_pdu_data`` reads a P-DATA-TF's body into a buffer of its own (``GuardedSocket`` fills
  it from the kernel directly) and decodes its PDVs as read-only ``memoryview`` slices of it
  (``pdv_items``): no copy until the DIMSE layer writes a fragment where it belongs (the command
  set's BytesIO, the spool). Every other PDU, and every error, goes as pynetdicom has it, with
  its log lines and events (Evt17 short, Evt19 undecodable); EVT_DATA_RECV still gets the PDU's
  bytes when a handler is bound for it.
- ``decode_msg`` is 3.0.4's, with the File Meta Information written by ``file_meta_bytes``:
  the same bytes pydicom writes (tests/test_receive.py compares them), packed by
  ``splice.meta_group`` as a stored file's meta is.
  A UID that is empty, not ASCII or longer than PS3.5's 64 characters goes to pydicom as before,
  so its errors are unchanged.

Written against pynetdicom 3.0.4 (reactor.KNOWN_VERSIONS): the reactor installs these with its
loops or not at all. docs/upstream-pynetdicom.md section 6 proposes the same change upstream.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, evt
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import dul as _dul
from pynetdicom.dsutils import create_file_meta, decode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.pdu_primitives import P_DATA

from dicom_chain.carriers.dicom.splice import PREAMBLE, meta_group

PDU_HEADER = struct.Struct(">BBL")  # type, reserved, length (PS3.8 9.3.1)
PDV_HEADER = struct.Struct(">LB")  # item length, presentation context ID (PS3.8 9.3.5.1)
P_DATA_TF_TYPE = 0x04
UID_MAX = 64  # PS3.5 9.1: longer goes to pydicom, which decides what to do with it
QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only; elsewhere peers keep their delayed ACKs


def ack_at_once(raw: Any) -> None:
    """ACK what has arrived at once, and what arrives next (Linux TCP_QUICKACK; the kernel turns
    it off again by itself, hence once per PDU).

    A peer that keeps Nagle's algorithm on (Debian's DCMTK, Orthanc, PACS and workstations built
    on them) writes a PDU's 12-byte header and its value separately and holds the second until
    the first is ACKed; a delayed ACK makes that ~40 ms. It bites wherever the kernel has gone
    back to delaying ACKs (it does so when we send soon after receiving): measured on the
    forwarder into Orthanc, 37% of C-STOREs waited 45-65 ms for the response's second segment.
    Re-armed when a PDU's header has been read and before its body is waited for, the ACK of a
    header that came alone goes out as it is read.
    """
    if raw is not None and QUICKACK is not None:
        with contextlib.suppress(OSError):
            raw.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


def pdv_items(body: memoryview) -> list[tuple[int, memoryview]]:
    """A P-DATA-TF's PDVs (context ID, value) as views of ``body`` (the PDU after its header).

    Refuses what pynetdicom's ``P_DATA_TF._generate_items`` refuses (a PDV whose length runs past
    the PDU, a length of 0, a truncated item header), with ValueError; the caller answers it as
    pynetdicom does, Evt19.
    """
    items = []
    offset, end = 0, len(body)
    unpack = PDV_HEADER.unpack_from
    while offset < end:
        if end - offset < PDV_HEADER.size:
            raise ValueError(f"PDV item header truncated at offset {offset}")
        length, context_id = unpack(body, offset)
        if length < 1 or offset + 4 + length > end:
            raise ValueError(f"PDV item length {length} at offset {offset} does not fit the PDU")
        items.append((context_id, body[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return items


def _pdata_pdu(body: memoryview) -> P_DATA_TF:
    pdu = P_DATA_TF()
    for context_id, value in pdv_items(body):
        item = PresentationDataValueItem()
        item.presentation_context_id = context_id
        item.presentation_data_value = value  # type: ignore[assignment]
        pdu.presentation_data_value_items.append(item)
    return pdu


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta Information as pynetdicom's chunked receive writes them
    (``create_file_meta`` then pydicom's ``write_file_meta_info``), byte for byte."""
    return PREAMBLE + meta_group(
        (
            (0x00020001, "OB", b"\x00\x01"),
            (0x00020002, "UI", sop_class.encode("ascii")),
            (0x00020003, "UI", sop_instance.encode("ascii")),
            (0x00020010, "UI", transfer_syntax.encode("ascii")),
            (0x00020012, "UI", PYNETDICOM_IMPLEMENTATION_UID.encode("ascii")),
            (0x00020013, "SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")),
        )
    )


def _fast_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= UID_MAX and value.isascii()


def write_file_meta(fp: Any, sop_class: Any, sop_instance: Any, transfer_syntax: Any) -> None:
    """What 3.0.4's ``decode_msg`` writes before a C-STORE's data set, cheaply when it can."""
    if _fast_uid(sop_class) and _fast_uid(sop_instance) and _fast_uid(transfer_syntax):
        fp.write(file_meta_bytes(sop_class, sop_instance, transfer_syntax))
        return
    fp.write(PREAMBLE)
    write_file_meta_info(
        fp,
        create_file_meta(
            sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=transfer_syntax
        ),
    )


def read_pdu_data(self: _dul.DULServiceProvider) -> None:
    """pynetdicom 3.0.4's ``_read_pdu_data``; a P-DATA-TF's body stays in its own buffer."""
    log = _dul.LOGGER
    sock = self.socket
    assert sock is not None
    try:
        header = sock.recv(6)
    except (OSError, TimeoutError) as exc:
        log.error("Connection closed before the entire PDU was received")
        log.exception(exc)
        self.event_queue.put("Evt17")
        return
    if len(header) != PDU_HEADER.size:
        self.event_queue.put("Evt17")
        return
    pdu_type, _, pdu_length = PDU_HEADER.unpack(header)
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        log.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
        self.event_queue.put("Evt19")
        return
    ack_at_once(sock.socket)
    try:
        body = sock.recv(pdu_length)
    except (OSError, TimeoutError) as exc:
        log.error("Connection closed before the entire PDU was received")
        log.exception(exc)
        self.event_queue.put("Evt17")
        return
    if len(body) != pdu_length:
        log.error(
            f"The received PDU is shorter than expected ({6 + len(body)} of {6 + pdu_length} bytes received)"
        )
        self.event_queue.put("Evt17")
        return
    try:
        if pdu_type == P_DATA_TF_TYPE:
            assoc = self.assoc
            if assoc.get_handlers(evt.EVT_DATA_RECV):
                evt.trigger(assoc, evt.EVT_DATA_RECV, {"data": bytes(header) + bytes(body)})
            pdu: Any = _pdata_pdu(memoryview(body).toreadonly())
            evt.trigger(assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
            event = "Evt10"
        else:
            pdu, event = self._decode_pdu(bytearray(header) + body)
        self.event_queue.put(event)
    except Exception as exc:
        log.error("Unable to decode the received PDU data")
        log.exception(exc)
        self.event_queue.put("Evt19")
        return
    self._recv_pdu.put(pdu)


def decode_msg(self: Any, primitive: P_DATA, assoc: Any = None) -> bool:
    """pynetdicom 3.0.4's ``DIMSEMessage.decode_msg``; fragments written as the views they are,
    and the chunked receive's File Meta Information by ``write_file_meta``."""
    if primitive.__class__ != P_DATA or primitive is None:
        return False
    for context_id, data in primitive.presentation_data_value_list:
        control_header_byte = data[0]  # PS3.8 E.2: bit 0 command/data, bit 1 last fragment
        if control_header_byte & 1:
            self.encoded_command_set.write(data[1:])
            if control_header_byte & 2:
                self.context_id = context_id
                self.command_set = decode(self.encoded_command_set, True, True)
                self.__class__ = _dimse_messages._MESSAGE_TYPES[cast(int, self.command_set.CommandField)][1]
                if self.command_set.CommandDataSetType == 0x0101:
                    return True
                if _config.STORE_RECV_CHUNKED_DATASET and isinstance(self, _dimse_messages.C_STORE_RQ):
                    # the module's name, not an import: scp/chunked.py replaces it there
                    self._data_set_file = _dimse_messages.NamedTemporaryFile(  # type: ignore[attr-defined]
                        delete=False, mode="wb", suffix=".dcm"
                    )
                    self._data_set_path = Path(self._data_set_file.name)
                    cs = self.command_set
                    cx = assoc._accepted_cx[context_id]
                    write_file_meta(
                        self._data_set_file,
                        cs.AffectedSOPClassUID,
                        cs.AffectedSOPInstanceUID,
                        cx.transfer_syntax[0],
                    )
        else:
            if self._data_set_file:
                self._data_set_file.write(data[1:])
                self._data_set_file.file.flush()
            else:
                cast(BytesIO, self.data_set).write(data[1:])
            if control_header_byte & 2 != 0:
                return True
    return False
