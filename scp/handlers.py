"""Event handlers: each translates one DICOM event into one core call and back, and stays tiny.

Log lines are ``key=value`` pairs, one per association and one per instance, so that a hospital's
log tooling can filter by AE title or UID without parsing prose.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import evt

from dicom_chain.carriers.dicom.splice import EncodedInstance
from dicom_chain.errors import MalformedDatasetError
from dicom_chain.events import EventDraft
from dicom_chain.node import Node
from dicom_chain.qr.query import Model
from dicom_chain.qr.runs import RetrieveItem, RetrieveRun, record_refused
from dicom_chain.vocab import EventType, Outcome

from .access import AccessList
from .contexts import contexts_for
from .statuses import (
    CANCELLED,
    ERROR_COMMENT_MAX,
    PENDING,
    PENDING_UNSUPPORTED_KEYS,
    SUCCESS,
    query_status,
    store_status,
)

log = logging.getLogger("dicom_chain.scp")

QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only; elsewhere peers keep their delayed ACKs

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
            EventType.ASSOCIATION_REJECTED,
            outcome=Outcome.MINOR_FAILURE,
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


def quick_ack(event: evt.Event) -> None:
    """ACK each PDU at once (Linux TCP_QUICKACK, which the kernel clears again, hence per PDU).

    A peer that keeps Nagle's algorithm on (Debian's DCMTK, and PACS and workstations built on it)
    holds the second small segment of a request, a C-FIND's identifier after its command, until
    its first is ACKed; a delayed ACK makes that ~40 ms per request (measured: C-FIND 55 ms -> 10 ms).
    """
    sock = getattr(getattr(getattr(event.assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None and QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


def handle_accepted(event: evt.Event) -> None:
    log.info("association accepted %s", _peer(event))


def handle_released(event: evt.Event) -> None:
    log.info("association released %s", _peer(event))


def handle_aborted(event: evt.Event) -> None:
    log.warning("association aborted %s", _peer(event))


# Query/Retrieve information models by SOP class (PS3.4 C.6): Patient Root and Study Root.
FIND_MODELS: dict[str, Model] = {
    "1.2.840.10008.5.1.4.1.2.1.1": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.1": "STUDY",
}
MOVE_MODELS: dict[str, Model] = {
    "1.2.840.10008.5.1.4.1.2.1.2": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.2": "STUDY",
}
GET_MODELS: dict[str, Model] = {
    "1.2.840.10008.5.1.4.1.2.1.3": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.3": "STUDY",
}


def _failure(status: int, exc: BaseException) -> Dataset:
    """A failure status with the reason in Error Comment, for the peer's log."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = str(exc).replace("\\", "/")[:ERROR_COMMENT_MAX]
    return ds


def _refused(node: Node, event_type: EventType, calling: str, reason: str, **details: Any) -> None:
    """Put a turned-away query or retrieval on the record; if the ledger itself is what failed,
    the peer still gets its failure status (the log keeps the reason)."""
    try:
        record_refused(node, event_type, calling, reason, **details)
    except Exception:
        log.exception("could not record a refused %s from %s", event_type, calling)


def _identifier(event: evt.Event) -> Dataset:
    try:
        return event.identifier
    except Exception as exc:
        raise MalformedDatasetError(f"identifier does not decode: {exc}") from exc


def handle_find(event: evt.Event, node: Node, ae_title: str) -> Iterator[tuple[Any, Dataset | None]]:
    calling = event.assoc.requestor.ae_title.strip()
    model = FIND_MODELS[event.request.AffectedSOPClassUID]
    try:
        run = node.find(_identifier(event), model, calling, ae_title)
    except Exception as exc:
        log.warning("c-find calling_ae=%s status=refused error=%r", calling, str(exc))
        _refused(node, EventType.QUERY_FIND, calling, str(exc), model=model)
        yield _failure(query_status(exc), exc), None
        return
    pending = PENDING_UNSUPPORTED_KEYS if run.query.unsupported else PENDING
    try:
        for answer in run.answers():
            if event.is_cancelled:
                run.finish("cancelled")
                yield CANCELLED, None
                return
            yield pending, answer
        run.finish("completed")
    except Exception as exc:
        run.finish("failed", str(exc))
        yield _failure(query_status(exc), exc), None
        return
    finally:
        run.finish("failed", "association ended during the query")  # no-op once finished
    log.info("c-find calling_ae=%s level=%s matches=%d", calling, run.query.level, run.matches)
    yield SUCCESS, None


def _counting(run: RetrieveRun, by_uid: dict[str, Any]) -> Callable[[evt.Event], None]:
    """An EVT_DIMSE_RECV handler that hands each C-STORE-RSP of the sub-operations to ``run``."""

    def on_message(event: evt.Event) -> None:
        cs = event.message.command_set
        if int(cs.get("CommandField", 0)) != 0x8001:  # C-STORE-RSP, PS3.7 E.1
            return
        item = by_uid.get(str(cs.get("AffectedSOPInstanceUID", "")))
        if item is None:
            return
        status = int(cs.get("Status", 0xC000))
        run.sent(item, "success" if status == 0 else "warning" if status >> 12 == 0xB else "failure")

    return on_message


def _sub_operations(event: evt.Event, run: RetrieveRun, items: list[RetrieveItem]) -> Iterator[Any]:
    """Pending yields of decoded datasets: pynetdicom's C-MOVE/C-GET take nothing else, and
    re-encode each for whatever context the peer accepted (uncompressed syntaxes convert)."""
    for item in items:
        if event.is_cancelled:
            run.finish("cancelled")
            yield CANCELLED, None
            return
        try:
            payload = dcmread(run.node.storage.path(item.path))
        except Exception as exc:  # the file is gone or unreadable: this one sub-operation fails
            log.warning("retrieve sop=%s cannot be read: %r", item.sop_instance_uid, str(exc))
            yield PENDING, Dataset()  # pynetdicom counts a dataset it cannot send as a failure
            continue
        yield PENDING, payload
    run.finish("completed")


def handle_move(event: evt.Event, node: Node, ae_title: str) -> Iterator[Any]:
    calling = event.assoc.requestor.ae_title.strip()
    model = MOVE_MODELS[event.request.AffectedSOPClassUID]
    target = (event.move_destination or "").strip()
    destination = node.move_destinations.get(target)
    if destination is None:
        log.warning("c-move calling_ae=%s destination=%s status=unknown-destination", calling, target)
        reason = f"move destination {target!r} is not configured"
        _refused(node, EventType.RETRIEVE_MOVE, calling, reason, destination=target)
        yield None, None  # pynetdicom answers A801, Move Destination Unknown
        return
    try:
        run = node.retrieve(_identifier(event), model, "move", calling, str(destination))
        items = run.plan()
    except Exception as exc:
        log.warning("c-move calling_ae=%s status=refused error=%r", calling, str(exc))
        _refused(node, EventType.RETRIEVE_MOVE, calling, str(exc), destination=target)
        yield destination.host, destination.port
        yield 1
        yield _failure(query_status(exc, retrieve=True), exc), None
        return
    if not items:  # pynetdicom answers Success with no sub-operations and never resumes us
        run.finish("completed", "nothing matched")
        yield destination.host, destination.port
        yield 0
        return
    by_uid = {item.sop_instance_uid: item for item in items}
    yield (
        destination.host,
        destination.port,
        {
            "contexts": contexts_for(items),
            "evt_handlers": [
                (evt.EVT_DIMSE_RECV, _counting(run, by_uid)),
                (evt.EVT_CONN_OPEN, handle_conn_open),
            ],
        },
    )
    yield len(items)
    try:
        yield from _sub_operations(event, run, items)
    finally:
        run.finish("failed", "association ended during the move")
        log.info(
            "c-move calling_ae=%s destination=%s matched=%d completed=%d failed=%d",
            calling, target, len(items), run.completed, len(run.failed),
        )  # fmt: skip


def handle_get(event: evt.Event, node: Node) -> Iterator[Any]:
    calling = event.assoc.requestor.ae_title.strip()
    model = GET_MODELS[event.request.AffectedSOPClassUID]
    try:
        run = node.retrieve(_identifier(event), model, "get", calling, calling)
        items = run.plan()
    except Exception as exc:
        log.warning("c-get calling_ae=%s status=refused error=%r", calling, str(exc))
        _refused(node, EventType.RETRIEVE_GET, calling, str(exc))
        yield 1
        yield _failure(query_status(exc, retrieve=True), exc), None
        return
    if not items:
        run.finish("completed", "nothing matched")
        yield 0
        return
    counter = _counting(run, {item.sop_instance_uid: item for item in items})
    event.assoc.bind(evt.EVT_DIMSE_RECV, counter)
    yield len(items)
    try:
        yield from _sub_operations(event, run, items)
    finally:
        event.assoc.unbind(evt.EVT_DIMSE_RECV, counter)
        run.finish("failed", "association ended during the get")
        log.info("c-get calling_ae=%s matched=%d completed=%d failed=%d",
                 calling, len(items), run.completed, len(run.failed))  # fmt: skip
