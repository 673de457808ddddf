"""One query or one retrieval, from the identifier to its event in the ledger.

A run is what the SCP's handlers iterate: answers (or instances to send) come out one at a
time, and ``finish`` puts the outcome on the record: who asked, what, how many matched or were
sent, and whether it completed, was cancelled or failed. Nothing here touches the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from pydicom.dataset import Dataset

from dicom_chain.db.database import Database
from dicom_chain.events import EventDraft
from dicom_chain.qr import index
from dicom_chain.qr.query import Model, Query, add_versions, parse_query, response
from dicom_chain.storage import Storage
from dicom_chain.verify import stored_file_fault
from dicom_chain.versions import Version, versions_of_many
from dicom_chain.vocab import EventType, Outcome, RunStatus, ServeAltered, SubOperation, VerificationState

_OUTCOME = {
    RunStatus.COMPLETED: Outcome.SUCCESS,
    RunStatus.CANCELLED: Outcome.SUCCESS,
    RunStatus.PARTIAL: Outcome.MINOR_FAILURE,
    RunStatus.REFUSED: Outcome.MINOR_FAILURE,
    RunStatus.FAILED: Outcome.SERIOUS_FAILURE,
}
# IMAGE answers whose versions are read at once: a read per answer made 500 answers take 555 ms
# instead of 84 ms; one read per 100 rows, 75 ms against 68 ms without (the rows are read ahead,
# the answers still made one at a time, so C-CANCEL stops them as before).
VERSIONS_PAGE = 100
# Sub-operations a retrieval's event lists one by one (failed, or sent with a warning, each with
# its reason): a study of a few hundred images fits; beyond it they are counted, not named.
SUB_OPERATIONS_LISTED = 100
ALTERED = "altered since receipt: content hash mismatch"
MISSING = "missing: the stored file was not found"
NO_RESPONSE = "no C-STORE response (association ended)"


class RunHost(Protocol):
    """What a run needs of the node (a ``Node`` is one): the database its index lives in, the
    chain its events name, and a way to record them. A protocol, so this room never imports the
    node above it."""

    @property
    def db(self) -> Database: ...
    @property
    def chain_id(self) -> str: ...
    @property
    def storage(self) -> Storage: ...  # where a retrieval's files are read from (by the handlers)
    def record(self, draft: EventDraft) -> None: ...


def _paged(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    page: list[dict[str, Any]] = []
    for row in rows:
        page.append(row)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _single(values: set[str]) -> str:
    return next(iter(values)) if len(values) == 1 else ""


def disclosed(patients: set[str]) -> dict[str, Any]:
    """The ``patients`` detail of an event that disclosed these patients: every one, sorted and
    distinct. Queries count as access to each, and ``audit export --patient P`` must find every
    disclosure of P, so none is left unnamed; the list is bounded by the patients in the index
    (a sweep of 10,000 patients makes a ~140 KB event, written once per such query)."""
    return {"patients": sorted(patients)}


class FindRun:
    """A C-FIND: ``answers()`` yields one identifier per match; ``finish`` records the query and
    every patient its answers disclosed (a wildcard search reveals each patient it returns)."""

    def __init__(
        self, node: RunHost, query: Query, actor: str, retrieve_ae_title: str, peer: str = ""
    ) -> None:
        self.node = node
        self.query = query
        self.actor = actor
        self.peer = peer  # the caller's network address, for the audit (NetworkAccessPointID)
        self.retrieve_ae_title = retrieve_ae_title
        self.matches = 0
        self._patients: set[str] = set()
        self._finished = False

    def answers(self) -> Iterator[Dataset]:
        rows = index.find(self.node.db, self.query)
        pages = _paged(rows, VERSIONS_PAGE) if self.query.level == "IMAGE" else ([row] for row in rows)
        for page in pages:
            versions = self._versions(page)
            for values in page:  # each answer made only when it is due: C-CANCEL is checked between
                self.matches += 1
                # bounded by the index's patients, every one named in the event
                self._patients.add(str(values.get("PatientID") or ""))
                answer = response(self.query, values, self.retrieve_ae_title)
                if versions is not None:
                    found = versions.get(str(values.get("SOPInstanceUID") or ""), [])
                    senders = [v.sender for v in found] if len(found) > 1 else []
                    add_versions(answer, self.query, senders, len(found))
                yield answer

    def _versions(self, page: list[dict[str, Any]]) -> dict[str, list[Version]] | None:
        """IMAGE rows' versions (count, and senders when several), read for the page at once."""
        if self.query.level != "IMAGE":
            return None
        sops = [str(values.get("SOPInstanceUID") or "") for values in page]
        with self.node.db.reading() as session:
            return versions_of_many(session, self.node.chain_id, sops)

    def finish(self, status: RunStatus, reason: str = "") -> None:
        if self._finished:
            return
        self._finished = True
        q = self.query
        self.node.record(
            EventDraft(
                EventType.QUERY_FIND,
                outcome=_OUTCOME[status],
                actor=self.actor,
                patient_id=_single(self._patients) if self.matches else "",
                study_uid=_uid_key(q, "StudyInstanceUID"),
                chain_id=self.node.chain_id,
                reason=reason or status,
                details={
                    "model": q.model,
                    "level": q.level,
                    "keys": q.describe(),
                    "matches": self.matches,
                    "status": status,
                    **disclosed(self._patients - {""}),
                    **({"peer": self.peer} if self.peer else {}),
                },
            )
        )


def _uid_key(query: Query, keyword: str) -> str:
    match = query.keys.get(keyword)
    if match is not None and len(match.terms) == 1 and match.terms[0].kind == "equal":
        return match.terms[0].low
    return ""


@dataclass(frozen=True)
class RetrieveItem:
    """One stored instance a retrieval will send."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    study_instance_uid: str
    patient_id: str
    verification: str = VerificationState.VERIFIED  # the index's state: set at receipt, by verify
    block_hash: str = ""  # the ledger's block for the file (what a release checks it against)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> RetrieveItem:
        return cls(
            path=values["_path"],
            sop_class_uid=values["SOPClassUID"],
            sop_instance_uid=values["SOPInstanceUID"],
            transfer_syntax=values["_transfer_syntax"],
            study_instance_uid=values["StudyInstanceUID"],
            patient_id=values["PatientID"],
            verification=values.get("ChainVerificationState") or VerificationState.VERIFIED,
            block_hash=values.get("_block_hash") or "",
        )


@dataclass
class RetrieveRun:
    """A C-MOVE or C-GET: the instances to send, then the sub-operation counts on the record.

    Each failed sub-operation has its reason (``reasons``): the peer's status, or why it was never
    sent (no syntax both sides can use, a file that is gone, an instance altered since receipt).
    """

    node: RunHost
    query: Query
    kind: Literal["move", "get"]
    actor: str
    destination: str
    serve_altered: str = ServeAltered.REFUSE
    peer: str = ""  # the requestor's network address, for the audit (NetworkAccessPointID)
    # To another institution (a release): each file checked against its block just before it goes
    # (it would refuse an altered one, and count it against us), whatever serve_altered says.
    release: bool = False
    items: list[RetrieveItem] = field(default_factory=list)
    completed: int = 0
    warnings: int = 0
    failed: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> why failed or warned
    warned: dict[str, str] = field(default_factory=dict)  # sent despite its state, and why
    _answered: set[str] = field(default_factory=set)
    _finished: bool = False

    def plan(self) -> list[RetrieveItem]:
        """Every instance under the identifier's unique keys, in index order."""
        self.items = [
            RetrieveItem.from_values(v)
            for v in index.find(self.node.db, replace(self.query, requested=()), level="IMAGE")
        ]
        return self.items

    def admit(self, item: RetrieveItem) -> bool:
        """Whether ``item`` may be sent. MISSING never is; ALTERED is refused, or with
        ``serve_altered = "warn"`` sent and counted as a warning; in a release, only a file that
        still holds its block and content is. A refusal is a failed sub-operation with its reason."""
        if self.release:
            fault = stored_file_fault(self.node.storage.path(item.path), item.block_hash)
            if fault:
                self.not_sent(item, f"not released: {fault}")
            return not fault
        if item.verification == VerificationState.MISSING:
            self.not_sent(item, f"{MISSING} at the last verification")
            return False
        if item.verification == VerificationState.ALTERED:
            if self.serve_altered != ServeAltered.WARN:
                self.not_sent(item, f"{ALTERED}; refused (serve_altered = refuse)")
                return False
            self.warned[item.sop_instance_uid] = f"{ALTERED}; sent with a warning (serve_altered = warn)"
        return True

    def not_sent(self, item: RetrieveItem, reason: str) -> None:
        """One sub-operation that failed before any C-STORE: refused, unreadable, no context."""
        self._answered.add(item.sop_instance_uid)
        self.failed.append(item.sop_instance_uid)
        self.reasons[item.sop_instance_uid] = reason

    def sent(self, item: RetrieveItem, status: SubOperation, reason: str = "") -> None:
        """Count one sub-operation as the peer answered it (a success of an instance sent with our
        warning counts as a warning)."""
        uid = item.sop_instance_uid
        self._answered.add(uid)
        if uid in self.warned and status != SubOperation.FAILURE:  # our warning, and the peer's if any
            reason = self.warned[uid] + (f"; {reason}" if status == SubOperation.WARNING else "")
            status = SubOperation.WARNING
        if status == SubOperation.SUCCESS:
            self.completed += 1
            return
        if status == SubOperation.WARNING:
            self.warnings += 1
        else:
            self.failed.append(uid)
        self.reasons[uid] = reason

    def finish(self, status: RunStatus, reason: str = "") -> None:
        if self._finished:
            return
        self._finished = True
        # a sub-operation the peer never answered (no context for it, file unreadable) failed
        status = RunStatus(status)
        if status is RunStatus.COMPLETED:
            for item in self.items:
                if item.sop_instance_uid not in self._answered:
                    self.not_sent(item, NO_RESPONSE)
        if status is RunStatus.COMPLETED and self.failed:
            status = RunStatus.PARTIAL if self.completed or self.warnings else RunStatus.FAILED
        studies = {i.study_instance_uid for i in self.items}
        patients = {i.patient_id for i in self.items}
        failed = set(self.failed)
        self.node.record(
            EventDraft(
                EventType.RETRIEVE_MOVE if self.kind == "move" else EventType.RETRIEVE_GET,
                outcome=_OUTCOME[status],
                actor=self.actor,
                patient_id=_single(patients),
                study_uid=_single(studies) or _uid_key(self.query, "StudyInstanceUID"),
                chain_id=self.node.chain_id,
                reason=reason or status,
                details={
                    "model": self.query.model,
                    "level": self.query.level,
                    "keys": self.query.describe(),
                    "destination": self.destination,
                    "matched": len(self.items),
                    "completed": self.completed,
                    "warnings": self.warnings,
                    "failed": len(self.failed),
                    "failed_sop_uids": self.failed[:SUB_OPERATIONS_LISTED],
                    "failures": [
                        {"sop_instance_uid": uid, "reason": self.reasons.get(uid, "")}
                        for uid in self.failed[:SUB_OPERATIONS_LISTED]
                    ],
                    "warned": [
                        {"sop_instance_uid": uid, "reason": reason}
                        for uid, reason in self.reasons.items()
                        if uid not in failed
                    ][:SUB_OPERATIONS_LISTED],
                    "studies": sorted(studies)[:100],
                    "status": status,
                    **({"peer": self.peer} if self.peer else {}),
                    **disclosed(patients - {""}),
                },
            )
        )


def record_refused(node: RunHost, event_type: EventType, actor: str, reason: str, **details: Any) -> None:
    """A query or retrieval turned away before it ran (bad identifier, unknown destination)."""
    node.record(
        EventDraft(
            event_type,
            outcome=Outcome.MINOR_FAILURE,
            actor=actor,
            chain_id=node.chain_id,
            reason=reason,
            details={"status": RunStatus.REFUSED, **details},
        )
    )


def start_find(
    node: RunHost, identifier: Dataset, model: Model, actor: str, retrieve_ae_title: str, peer: str = ""
) -> FindRun:
    return FindRun(node, parse_query(identifier, model), actor, retrieve_ae_title, peer)


def start_retrieve(
    node: RunHost,
    identifier: Dataset,
    model: Model,
    kind: Literal["move", "get"],
    actor: str,
    destination: str,
    serve_altered: str = ServeAltered.REFUSE,
    peer: str = "",
) -> RetrieveRun:
    query = parse_query(identifier, model, retrieve=True)
    return RetrieveRun(node, query, kind, actor, destination, serve_altered, peer)
