"""Event handlers: each translates one DICOM event into one library call and back, and stays tiny.

Failures are answered in one place, ``answers_failures``: whatever a handler raises is logged and
answered with the status statuses.py reads from the error, and the association stays up. Log
lines are ``key=value`` pairs, so that a hospital's log tooling can filter by AE title or UID
without parsing prose: at INFO one per association, its C-STOREs counted when it ends (a line per
instance cost ~0.1 ms of a ~7 ms instance, and buried everything else in a study of thousands);
each instance at DEBUG, and each refusal at WARNING, since those are rare and need a name.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pynetdicom import StoragePresentationContexts, build_context, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_chain import timing
from dicom_chain.carriers.dicom.carrier import read_dataset
from dicom_chain.errors import DicomChainError, MalformedDatasetError, NotAuthorized
from dicom_chain.events import EventDraft
from dicom_chain.node import Node
from dicom_chain.permissions import Permission
from dicom_chain.qr import index
from dicom_chain.qr.query import Model
from dicom_chain.qr.runs import MISSING as MISSING_FILE
from dicom_chain.qr.runs import FindRun, RetrieveItem, RetrieveRun, record_refused, start_find, start_retrieve
from dicom_chain.sharing.policy import MoveDecision, Peer
from dicom_chain.vocab import EventType, IngestOutcome, Outcome, RunStatus, SubOperation

from .access import Access, Caller
from .chunked import Spool, received
from .contexts import MAX_CONTEXTS, Sending, contexts_for, decompress, prefer_stored, sending
from .receive import ack_at_once
from .release import Carrying, decide_move, institution_at
from .statuses import (
    CANCELLED,
    ERROR_COMMENT_MAX,
    PENDING,
    PENDING_UNSUPPORTED_KEYS,
    STORED_NOT_CONFORMING,
    SUB_OPERATION_WARNING,
    SUCCESS,
    find_status,
    retrieve_status,
    store_status,
    sub_operation,
)
from .transport import RejectionLog

log = logging.getLogger("dicom_chain.scp")


# A-ASSOCIATE-RJ: rejected-permanent, by the DUL service user, calling AE title not recognised
# (PS3.8 9.3.4, Table 9-21)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
# ... and the same, called AE title not recognised: a peer that dialled another AE on our port
REJECT_CALLED_AE = (0x01, 0x01, 0x07)


def _peer(event: evt.Event) -> str:
    requestor = event.assoc.requestor
    return f"calling_ae={requestor.ae_title.strip()} peer={requestor.address}:{requestor.port}"


def _calling(event: evt.Event) -> str:
    return event.assoc.requestor.ae_title.strip()


TALLY_ATTRIBUTE = "dicom_chain_store_tally"  # on the association: its C-STOREs so far


@dataclass
class StoreTally:
    """One association's C-STOREs by what was answered, for its closing log line."""

    outcomes: Counter[str] = field(default_factory=Counter)  # IngestOutcome: stored, duplicate, ...
    warnings: int = 0  # answered B0xx: stored as received, not conforming
    refused: Counter[int] = field(default_factory=Counter)  # failure status -> how many

    def __str__(self) -> str:
        counts = {"stored": self.outcomes["stored"], **dict(sorted(self.outcomes.items()))}
        counted = " ".join(f"{outcome}={n}" for outcome, n in counts.items())
        refused = ",".join(f"0x{status:04X}:{n}" for status, n in sorted(self.refused.items()))
        return " ".join(x for x in (counted, f"warnings={self.warnings}", f"refused={refused or 0}") if x)


def store_tally(assoc: object) -> StoreTally:
    """The association's tally (made on its first C-STORE); handlers and its end run on its thread."""
    tally = getattr(assoc, TALLY_ATTRIBUTE, None)
    if tally is None:
        tally = StoreTally()
        setattr(assoc, TALLY_ATTRIBUTE, tally)
    return tally


def _ended(event: evt.Event) -> str:
    tally = getattr(event.assoc, TALLY_ATTRIBUTE, None)
    return _peer(event) + (f" c-store {tally}" if tally is not None else "")


def _failure(status: int, exc: BaseException) -> Dataset:
    """A failure status with the reason in Error Comment, for the peer's log."""
    return _commented(status, str(exc))


def _commented(status: int, comment: str) -> Dataset:
    """A status with Error Comment: a failure's reason, or what a C-STORE warning warns of
    (PS3.4 Table B.2-1 gives B0xx warnings the same field)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment.replace("\\", "/")[:ERROR_COMMENT_MAX]
    return ds


def _answered(operation: str, event: evt.Event, exc: BaseException, status: int) -> None:
    line = "%s calling_ae=%s status=0x%04X error=%r"
    if operation == "c-store":
        store_tally(event.assoc).refused[status] += 1
    if isinstance(exc, DicomChainError):  # named and expected: one line says it all
        log.warning(line, operation, _calling(event), status, str(exc))
    else:  # a bug: the traceback is what will fix it
        log.error(line, operation, _calling(event), status, str(exc), exc_info=exc)


Handler = TypeVar("Handler", bound=Callable[..., Any])
# What a generator handler that failed early still owes pynetdicom before its final status:
# given how many values it yielded, the event and the handler's bound arguments.
Prelude = Callable[..., Iterator[Any]]


def answers_failures(
    operation: str, status_for: Callable[[BaseException], int], prelude: Prelude | None = None
) -> Callable[[Handler], Handler]:
    """An exception inside the handler becomes its failure status, logged; never a dropped association.

    Like pynetdicom's own handler-error handling, with our statuses instead of its generic Cx11:
    a plain handler returns the status with the reason; a generator handler yields ``(failure,
    None)`` as its final response, after what ``prelude`` says pynetdicom still expects when the
    handler failed before yielding it (C-GET: the number of sub-operations; C-MOVE: the destination first).
    """

    def decorate(handler: Handler) -> Handler:
        if inspect.isgeneratorfunction(handler):

            @functools.wraps(handler)
            def generator(event: evt.Event, *args: Any) -> Iterator[Any]:
                inner = handler(event, *args)
                yielded = 0
                try:
                    for value in inner:
                        yield value
                        yielded += 1
                except Exception as exc:
                    status = status_for(exc)
                    _answered(operation, event, exc, status)
                    if prelude is not None:
                        yield from prelude(yielded, event, *args)
                    yield _failure(status, exc), None
                finally:
                    inner.close()  # pynetdicom stopped asking: the handler's own clean-up runs now

            return generator  # type: ignore[return-value]

        @functools.wraps(handler)
        def plain(event: evt.Event, *args: Any) -> Any:
            try:
                return handler(event, *args)
            except Exception as exc:
                status = status_for(exc)
                _answered(operation, event, exc, status)
                return _failure(status, exc)  # the reason in Error Comment, for the sender's log

        return plain  # type: ignore[return-value]

    return decorate


def handle_echo(event: evt.Event) -> int:
    return SUCCESS


def _permitted(event: evt.Event, access: Access, permission: Permission) -> Caller:
    """The caller, if it holds ``permission``; else NotAuthorized (0124), naming who and what."""
    caller = access.caller(event.assoc)
    if not caller.may(permission):
        raise NotAuthorized(f"{caller.ae_title} lacks permission '{permission}'")
    return caller


def _store_refused(node: Node, event: evt.Event, exc: NotAuthorized) -> None:
    """A C-STORE turned away before it was read: on the record, with the SOP UID the command named."""
    sop = str(event.request.AffectedSOPInstanceUID or "")
    details = {"peer": _address(event), "sop_instance_uid": sop}
    node.record(
        EventDraft(
            EventType.INSTANCE_REFUSED,
            outcome=Outcome.MINOR_FAILURE,
            actor=_calling(event),
            sop_uid=sop,
            chain_id=node.chain_id,
            reason=str(exc),
            details=details,
        )
    )


@answers_failures("c-store", store_status)
def handle_store(
    event: evt.Event, node: Node, stored: Callable[[], None], access: Access, spool: Spool
) -> int | Dataset:
    timing.begin()
    calling = _calling(event)
    try:
        caller = _permitted(event, access, Permission.STORE)
    except NotAuthorized as exc:  # refused unread; pynetdicom unlinks the received file on return
        _store_refused(node, event, exc)
        raise
    with received(event, spool) as item:  # the data set as received to disk, removed on the way out
        result = node.ingest(
            item,
            actor=calling,
            may_correct=caller.may(Permission.CORRECT),
            peer=_address(event),
        )
    h = result.block.header
    log.debug(
        "c-store calling_ae=%s sop=%s study=%s outcome=%s height=%d%s",
        calling, h.item_id, h.group_id, result.outcome, h.height,
        f" anomalies={'; '.join(result.anomalies)!r}" if result.anomalies else "",
    )  # fmt: skip
    tally = store_tally(event.assoc)
    tally.outcomes[str(result.outcome)] += 1
    timing.end("log")
    if result.outcome in (IngestOutcome.STORED, IngestOutcome.NEW_VERSION):
        stored()
    if result.anomalies:  # kept as received, yet the sender should hear it does not conform
        tally.warnings += 1
        return _commented(STORED_NOT_CONFORMING, "; ".join(result.anomalies))
    return SUCCESS


def handle_requested(
    event: evt.Event, access: Access, rejections: RejectionLog, called_aes: frozenset[str] | None = None
) -> None:
    """Refuse, with A-ASSOCIATE-RJ before any negotiation, a call to an AE title not ours
    (``called_aes``; None answers to any) and callers with no permission at all; each refusal is
    counted per host (transport.RejectionLog), the first of a minute recorded at once."""
    caller = access.caller(event.assoc)
    primitive = event.assoc.requestor.primitive
    called = (primitive.called_ae_title if primitive else "").strip()
    if called_aes is not None and called not in called_aes:
        rejections.note(caller.host, "called-ae", caller.ae_title, called_ae=called)
        _reject(event, rejections, REJECT_CALLED_AE)
        return
    if caller.permissions:
        return
    subject = caller.describe().partition(" certificate ")[2] if caller.subject else ""
    rejections.note(caller.host, "no-permission", caller.ae_title, subject)
    _reject(event, rejections, REJECT_CALLING_AE)


def _reject(event: evt.Event, rejections: RejectionLog, reason: tuple[int, int, int]) -> None:
    rejections.flush()  # the first of a minute is on the record before the peer hears of it
    event.assoc.acse.send_reject(*reason)
    event.assoc.is_rejected = True
    event.assoc.kill()  # as pynetdicom's own rejections do: returns once the A-ASSOCIATE-RJ is out


def handle_get_contexts(event: evt.Event, node: Node) -> None:
    """Choose, before negotiation, the syntax of each storage context a C-GET peer proposed with
    the SCP role: what this node holds that class in, if the peer offered it and every held
    instance can go that way, else an uncompressed one (contexts.py ``preferred_syntax``).

    pynetdicom accepts the first of the acceptor's syntaxes the requestor proposed, Implicit VR
    first, and a context carries one syntax: a JPEG-LS instance then had no way out. The choice is
    this association's, so its own copy of the supported contexts is reordered (a peer that only
    stores is left alone).
    """
    assoc = event.assoc
    primitive = assoc.requestor.primitive
    if assoc.is_rejected or assoc.is_aborted or primitive is None:
        return
    storing = {str(uid) for uid, item in assoc.requestor.role_selection.items() if item.scp_role}
    offered: dict[str, list[str]] = {}
    for cx in primitive.presentation_context_definition_list:
        if str(cx.abstract_syntax) in storing:
            syntaxes = offered.setdefault(str(cx.abstract_syntax), [])
            syntaxes += [str(s) for s in cx.transfer_syntax if str(s) not in syntaxes]
    if offered:
        held = index.stored_syntaxes(node.db, offered)
        assoc.acceptor.supported_contexts = prefer_stored(assoc.acceptor.supported_contexts, offered, held)


def no_delay(assoc: object) -> None:
    """Turn Nagle's algorithm off on an association's socket.

    With Nagle on, the tail of each message waits for the peer's delayed ACK (~40 ms); a PACS
    or modality built on DCMTK delays its ACKs, and every C-STORE then stalls (measured on this
    project's machines: DCMTK storescu -> storescp, 22 instances/s with Nagle on, 347 with it off).
    """
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def handle_conn_open(event: evt.Event) -> None:
    no_delay(event.assoc)


def quick_ack(event: evt.Event) -> None:
    """ACK each PDU at once, for an association pynetdicom runs stock (the reactor does it itself
    as it reads each PDU's header: receive.ack_at_once, which says why).

    Measured: a C-FIND from a Nagle-on DCMTK peer 55 ms -> 10 ms.
    """
    ack_at_once(getattr(getattr(getattr(event.assoc, "dul", None), "socket", None), "socket", None))


def handle_accepted(event: evt.Event) -> None:
    log.info("association accepted %s", _peer(event))


def handle_released(event: evt.Event) -> None:
    timing.flush()
    log.info("association released %s", _ended(event))


def handle_aborted(event: evt.Event) -> None:
    timing.flush()
    log.warning("association aborted %s", _ended(event))


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


def _refused(node: Node, event_type: EventType, calling: str, reason: str, **details: Any) -> None:
    """Put a turned-away query or retrieval on the record; if the ledger itself is what failed,
    the peer still gets its failure status (the log keeps the reason)."""
    try:
        record_refused(node, event_type, calling, reason, **details)
    except Exception:
        log.exception("could not record a refused %s from %s", event_type, calling)


def _address(event: evt.Event) -> str:
    """The requestor's network address: the audit's NetworkAccessPointID, refusals included."""
    return str(event.assoc.requestor.address or "")


def _identifier(event: evt.Event) -> Dataset:
    try:
        return event.identifier
    except Exception as exc:
        raise MalformedDatasetError(f"identifier does not decode: {exc}") from exc


@contextlib.contextmanager
def _refusal_recorded(node: Node, event_type: EventType, calling: str, **details: Any) -> Iterator[None]:
    """A query or retrieval turned away before it ran goes on the record; the error goes on to
    ``answers_failures``, which answers it."""
    try:
        yield
    except Exception as exc:
        _refused(node, event_type, calling, str(exc), **details)
        raise


@contextlib.contextmanager
def _run_recorded(run: FindRun | RetrieveRun, what: str) -> Iterator[None]:
    """A run that did not finish goes on the record as failed: in the error's words when one ended
    it, else because the association ended (pynetdicom stopped asking). ``finish`` counts once."""
    try:
        yield
    except Exception as exc:
        run.finish(RunStatus.FAILED, str(exc))
        raise
    finally:
        run.finish(RunStatus.FAILED, f"association ended during the {what}")


@answers_failures("c-find", find_status)
def handle_find(
    event: evt.Event, node: Node, ae_title: str, access: Access
) -> Iterator[tuple[Any, Dataset | None]]:
    calling = _calling(event)
    model = FIND_MODELS[event.request.AffectedSOPClassUID]
    with _refusal_recorded(node, EventType.QUERY_FIND, calling, model=model, peer=_address(event)):
        _permitted(event, access, Permission.FIND)
        run = start_find(node, _identifier(event), model, calling, ae_title, _address(event))
    pending = PENDING_UNSUPPORTED_KEYS if run.query.unsupported else PENDING
    with _run_recorded(run, "query"):
        for answer in run.answers():
            if event.is_cancelled:
                run.finish(RunStatus.CANCELLED)
                yield CANCELLED, None
                return
            yield pending, answer
        run.finish(RunStatus.COMPLETED)
    log.info("c-find calling_ae=%s level=%s matches=%d", calling, run.query.level, run.matches)
    yield SUCCESS, None


def _counting(run: RetrieveRun, by_uid: dict[str, Any]) -> Callable[[evt.Event], None]:
    """An EVT_DIMSE_RECV handler that hands each C-STORE-RSP of the sub-operations to ``run``.

    An instance sent with our warning (altered, ``serve_altered = "warn"``) that the peer stored
    with Success is counted by pynetdicom as a warning too, so that the requestor's final status
    is B000 (PS3.4 C.4.2.1.5, C.4.3.1.4): pynetdicom counts sub-operations from the C-STORE-RSP
    status alone and ignores any status yielded after the last one (service_class.py ``_get_scp``,
    ``_move_scp``), so the response's status is read as B000 here, before pynetdicom reads it.
    """

    def on_message(event: evt.Event) -> None:
        if not isinstance(event.message, C_STORE_RSP):
            return
        cs = event.message.command_set
        item = by_uid.get(str(cs.get("AffectedSOPInstanceUID", "")))
        if item is None:
            return
        status = cs.get("Status")
        if status is None:
            run.sent(item, SubOperation.FAILURE, "C-STORE-RSP without a status")
            return
        outcome = sub_operation(int(status))
        comment = str(cs.get("ErrorComment", "") or "")
        run.sent(item, outcome, f"peer answered 0x{int(status):04X}" + (f": {comment}" if comment else ""))
        if outcome is SubOperation.SUCCESS and item.sop_instance_uid in run.warned:
            cs.Status = SUB_OPERATION_WARNING

    return on_message


def _accepted(assoc: Any) -> set[tuple[str, str]]:
    """(SOP class, syntax) of the storage contexts we may send C-STOREs on (our SCU role)."""
    if assoc is None:
        return set()
    return {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts if cx.as_scu
    }


def _unsendable(item: RetrieveItem) -> Dataset:
    """What pynetdicom counts as a failed sub-operation, listing the UID in Failed SOP Instance UID
    List: a data set it cannot send (no SOP Class UID). An empty one would not count at all."""
    ds = Dataset()
    ds.SOPInstanceUID = item.sop_instance_uid
    return ds


def _payload(run: RetrieveRun, item: RetrieveItem, accepted: set[tuple[str, str]]) -> Dataset | None:
    """The data set to send for ``item`` over ``accepted`` contexts; None (the reason on ``run``)
    when it cannot go: refused for its state, no syntax both sides can use, unreadable, undecodable."""
    if not run.admit(item):
        return None
    how = sending(accepted, item.sop_class_uid, item.transfer_syntax, decompressing=True)
    if how is None:
        offered = sorted(s for c, s in accepted if c == item.sop_class_uid)
        run.not_sent(
            item,
            f"stored as {item.transfer_syntax}, which the peer did not accept and this node cannot "
            f"convert to what it did accept ({', '.join(offered) or 'nothing for ' + item.sop_class_uid})",
        )
        return None
    try:
        payload = read_dataset(run.node.storage.path(item.path))
    except FileNotFoundError:  # gone since the last verification: this one sub-operation fails
        run.not_sent(item, f"{MISSING_FILE} ({item.path})")
        return None
    except (DicomChainError, OSError) as exc:
        run.not_sent(item, f"stored file unreadable: {exc}")
        return None
    if how is Sending.DECOMPRESSED:
        try:
            decompress(payload)
        except Exception as exc:  # pydicom's decoders raise many types on data they cannot decode
            run.not_sent(item, f"cannot decompress {item.transfer_syntax}: {exc}")
            return None
    return payload


def _sub_operations(
    event: evt.Event,
    run: RetrieveRun,
    items: list[RetrieveItem],
    accepted: Callable[[], set[tuple[str, str]]],
    carrying: Carrying | None = None,
) -> Iterator[Any]:
    """Pending yields of decoded datasets: pynetdicom's C-MOVE/C-GET take nothing else; each is as
    stored, or re-encoded by pynetdicom, or decompressed here (scp/contexts.py ``sending``); to
    another institution, each carries our checkpoint (``carrying``)."""
    for item in items:
        if event.is_cancelled:
            run.finish(RunStatus.CANCELLED)
            yield CANCELLED, None
            return
        payload = _payload(run, item, accepted())
        if payload is None:
            log.warning(
                "retrieve sop=%s not sent: %r", item.sop_instance_uid, run.reasons[item.sop_instance_uid]
            )
            yield PENDING, _unsendable(item)
            continue
        if carrying is not None:
            carrying.attach(payload)
        yield PENDING, payload
    run.finish(RunStatus.COMPLETED)
    if carrying is not None and run.completed:
        carrying.arrived()


def _move_decision(event: evt.Event, node: Node) -> MoveDecision:
    return node.sharing.move((event.move_destination or "").strip())


def _destination(event: evt.Event, node: Node) -> Peer | None:
    """Where a C-MOVE's sub-operations would go: a configured move destination (this institution's
    workstations, no release rules), else a registered institution's gateway (the rules decide)."""
    configured = _move_decision(event, node).destination
    return configured or institution_at(node, (event.move_destination or "").strip())


# Proposed to a move destination only to hand a peer our final failure status (``_move_prelude``):
# Verification and pynetdicom's 120 common storage classes, within PS3.8's 128 contexts.
FAILURE_ONLY_CONTEXTS = [build_context(Verification), *StoragePresentationContexts][:MAX_CONTEXTS]


def _move_prelude(
    yielded: int, event: evt.Event, node: Node, _ae_title: str, _access: Access
) -> Iterator[Any]:
    """What a C-MOVE that failed before naming its destination and count still owes pynetdicom.

    pynetdicom takes a final status only once it has associated with the destination; before
    that, any failure is its own C51x, not the status we chose. So the destination gets an
    association proposing what a storage SCP accepts, released at once with nothing sent. The
    policy is pure: asking it again here is safe.
    """
    if yielded == 0:
        peer = _destination(event, node)
        if peer is None:
            yield None, None
            return
        yield peer.host, peer.port, {"contexts": FAILURE_ONLY_CONTEXTS}
    if yielded <= 1:
        yield 1


def _get_prelude(yielded: int, _event: evt.Event, _node: Node, _access: Access) -> Iterator[Any]:
    if yielded == 0:
        yield 1  # the number of sub-operations, before the final status


@answers_failures("c-move", retrieve_status, prelude=_move_prelude)
def handle_move(event: evt.Event, node: Node, ae_title: str, access: Access) -> Iterator[Any]:
    calling = _calling(event)
    model = MOVE_MODELS[event.request.AffectedSOPClassUID]
    target = (event.move_destination or "").strip()
    with _refusal_recorded(node, EventType.RETRIEVE_MOVE, calling, destination=target, peer=_address(event)):
        _permitted(event, access, Permission.MOVE)  # refused: the prelude answers 0124
    decision = _move_decision(event, node)
    institution = None if decision.destination is not None else institution_at(node, target)
    destination = decision.destination or institution
    if destination is None:
        log.warning("c-move calling_ae=%s destination=%s status=unknown-destination", calling, target)
        _refused(
            node, EventType.RETRIEVE_MOVE, calling, decision.reason, destination=target, peer=_address(event)
        )
        yield None, None  # pynetdicom answers A801, Move Destination Unknown
        return
    address = f"{destination.ae_title}@{destination.host}:{destination.port}"
    with _refusal_recorded(node, EventType.RETRIEVE_MOVE, calling, destination=target, peer=_address(event)):
        run = start_retrieve(
            node,
            _identifier(event),
            model,
            "move",
            calling,
            address,
            node.settings.serve_altered,
            _address(event),
        )
        items = run.plan()
        carrying = None
        if institution is not None:  # another institution: the release rules decide (0124 if denied)
            decide_move(node, institution, items, calling)
            run.release = True
            carrying = Carrying(node, institution) if items else None
    if not items:  # pynetdicom answers Success with no sub-operations and never resumes us
        run.finish(RunStatus.COMPLETED, "nothing matched")
        yield destination.host, destination.port
        yield 0
        return
    by_uid = {item.sop_instance_uid: item for item in items}
    sub_association: list[Any] = []  # pynetdicom makes it; we need what it accepted
    yield (
        destination.host,
        destination.port,
        {
            "contexts": contexts_for(items, decompressing=True),
            "evt_handlers": [
                (evt.EVT_DIMSE_RECV, _counting(run, by_uid)),
                (evt.EVT_CONN_OPEN, handle_conn_open),
                (evt.EVT_ACCEPTED, lambda e: sub_association.append(e.assoc)),
            ],
        },
    )
    yield len(items)
    try:
        with _run_recorded(run, "move"):
            yield from _sub_operations(
                event,
                run,
                items,
                lambda: _accepted(sub_association[0] if sub_association else None),
                carrying,
            )
    finally:
        log.info(
            "c-move calling_ae=%s destination=%s matched=%d completed=%d failed=%d",
            calling, target, len(items), run.completed, len(run.failed),
        )  # fmt: skip


@answers_failures("c-get", retrieve_status, prelude=_get_prelude)
def handle_get(event: evt.Event, node: Node, access: Access) -> Iterator[Any]:
    calling = _calling(event)
    model = GET_MODELS[event.request.AffectedSOPClassUID]
    with _refusal_recorded(node, EventType.RETRIEVE_GET, calling, peer=_address(event)):
        _permitted(event, access, Permission.GET)
        run = start_retrieve(
            node,
            _identifier(event),
            model,
            "get",
            calling,
            calling,
            node.settings.serve_altered,
            _address(event),
        )
        items = run.plan()
    if not items:
        run.finish(RunStatus.COMPLETED, "nothing matched")
        yield 0
        return
    counter = _counting(run, {item.sop_instance_uid: item for item in items})
    event.assoc.bind(evt.EVT_DIMSE_RECV, counter)
    yield len(items)
    try:
        with _run_recorded(run, "get"):
            yield from _sub_operations(event, run, items, lambda: _accepted(event.assoc))
    finally:
        event.assoc.unbind(evt.EVT_DIMSE_RECV, counter)
        log.info("c-get calling_ae=%s matched=%d completed=%d failed=%d",
                 calling, len(items), run.completed, len(run.failed))  # fmt: skip
