"""Event handlers: each translates one DICOM event into one core call and back, and stays tiny.

Log lines are ``key=value`` pairs, one per association and one per instance, so that a hospital's
log tooling can filter by AE title or UID without parsing prose.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable

from pynetdicom import evt

from dicom_chain.errors import MalformedDatasetError
from dicom_chain.events import MINOR_FAILURE, EventDraft
from dicom_chain.node import Node
from dicom_chain.splice import EncodedInstance

from .access import AccessList
from .statuses import SUCCESS, store_status

log = logging.getLogger("dicom_chain.scp")

# A-ASSOCIATE-RJ: rejected-permanent, by the DUL service user, calling AE title not recognised
# (PS3.8 9.3.4, Table 9-21)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


def _peer(event: evt.Event) -> str:
    requestor = event.assoc.requestor
    return f"calling_ae={requestor.ae_title.strip()} peer={requestor.address}:{requestor.port}"


def handle_echo(event: evt.Event) -> int:
    return SUCCESS


def handle_store(event: evt.Event, node: Node, stored: Callable[[], None]) -> int:
    calling = event.assoc.requestor.ae_title.strip()
    try:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            encoded = EncodedInstance.from_network(ds, event.request.DataSet.getvalue())
        except Exception as exc:  # pynetdicom decodes lazily; garbage surfaces here
            raise MalformedDatasetError(f"dataset does not decode: {exc}") from exc
        result = node.ingest(ds, actor=calling, encoded=encoded)
    except Exception as exc:
        status = store_status(exc)
        log.warning("c-store calling_ae=%s status=0x%04X error=%r", calling, status, str(exc))
        return status
    h = result.block.header
    log.info(
        "c-store calling_ae=%s sop=%s study=%s outcome=%s height=%d",
        calling, h.sop_instance_uid, h.study_instance_uid, result.outcome, h.height,
    )  # fmt: skip
    if result.outcome in ("stored", "new-version"):
        stored()
    return SUCCESS


def handle_requested(event: evt.Event, node: Node, access: AccessList) -> None:
    """Refuse callers not on the allow-list with A-ASSOCIATE-RJ, before any negotiation."""
    requestor = event.assoc.requestor
    calling = requestor.primitive.calling_ae_title.strip()
    if access.permits(calling, requestor.address):
        return
    log.warning(
        "association rejected calling_ae=%s peer=%s reason=not-on-allow-list", calling, requestor.address
    )
    node.record(  # on the record before the peer hears of it
        EventDraft(
            "association.rejected",
            outcome=MINOR_FAILURE,
            actor=calling,
            reason="calling AE title or host not on the allow-list",
            details={"peer": requestor.address},
        )
    )
    event.assoc.acse.send_reject(*REJECT_CALLING_AE)
    event.assoc.is_rejected = True
    event.assoc.kill()  # as pynetdicom's own rejections do: returns once the A-ASSOCIATE-RJ is out


def no_delay(assoc: object) -> None:
    """Turn Nagle's algorithm off on an association's socket.

    With Nagle on, the tail of each message waits for the peer's delayed ACK (~40 ms); a PACS
    or modality built on DCMTK delays its ACKs, and every C-STORE then stalls (shared/peers.md).
    """
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handle_conn_open(event: evt.Event) -> None:
    no_delay(event.assoc)


def handle_accepted(event: evt.Event) -> None:
    log.info("association accepted %s", _peer(event))


def handle_released(event: evt.Event) -> None:
    log.info("association released %s", _peer(event))


def handle_aborted(event: evt.Event) -> None:
    log.warning("association aborted %s", _peer(event))
