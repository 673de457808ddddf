"""Releasing studies to other institutions: the rules decide (``sharing.service.decide_release``,
which records the decision), this module sends (docs/design.md 10.6).

Two ways out, one rule. ``dicom-chain release`` calls ``release_study``: decide, then C-STORE the
study's newest instances, files as stored (our blocks in them), over one association to the
institution's gateway. A C-MOVE whose destination AE is a registered institution's calls
``decide_move`` from its handler: decide each study the move would send; the sub-operations then
go to the institution's registered host and port, or, denied, nothing goes and the peer gets
0124 "Refused: Not authorized".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_chain.block import utc_now
from dicom_chain.carriers.dicom.embedding import attach_checkpoint
from dicom_chain.errors import DicomChainError, ReleaseDenied
from dicom_chain.node import Node
from dicom_chain.qr import index
from dicom_chain.qr.matching import parse_key
from dicom_chain.qr.query import Query
from dicom_chain.qr.runs import RetrieveItem
from dicom_chain.sharing.policy import ReleaseDecision
from dicom_chain.sharing.registry import Institution, Registry
from dicom_chain.sharing.service import decide_release
from dicom_chain.tlog.publishing import carried_request, carried_to
from dicom_chain.verify import stored_file_fault
from dicom_chain.vocab import SubOperation

from .contexts import Sending, contexts_for, sending
from .statuses import sub_operation

MOVE_PURPOSE = "treatment"  # a C-MOVE carries no purpose: another institution's retrieval is for care
RELEASE_ACSE_TIMEOUT_S = 30  # association set-up with the other institution's gateway
RELEASE_DIMSE_TIMEOUT_S = 120  # one C-STORE response: a large instance into a slow archive
RELEASE_NETWORK_TIMEOUT_S = 60  # silence on the socket before giving up on a gateway that vanished


def decision_time(node: Node) -> str:
    """The ``now`` a release is decided at: the clock, or ``policy_now`` (set by tests and audits
    only, so that a consent's end can be crossed without waiting)."""
    return node.settings.policy_now or utc_now()


def institution_at(node: Node, ae_title: str) -> Institution | None:
    """The registered institution whose gateway is ``ae_title`` (None: not an institution's AE)."""
    return Registry(node.ledger, None).by_ae_title(ae_title) if ae_title else None


def decide_move(node: Node, institution: Institution, items: Sequence[RetrieveItem], actor: str) -> None:
    """Decide (and record) the release of every study a C-MOVE to ``institution`` would send;
    ReleaseDenied with the reasons of the first study denied. Nothing matched: nothing to decide."""
    now = decision_time(node)
    for study_uid in dict.fromkeys(item.study_instance_uid for item in items):
        decision = decide_release(
            node, study_uid=study_uid, to=institution.name, purpose=MOVE_PURPOSE, actor=actor, via="c-move",
            now=now,
        )  # fmt: skip
        if not decision.allowed:
            raise ReleaseDenied(f"not authorized: {decision.reason}")


@dataclass(frozen=True)
class Sent:
    """One instance of a release, as the receiving gateway answered it."""

    sop_instance_uid: str
    status: int | None  # None: no answer (association lost, nothing accepted for it)
    outcome: SubOperation
    reason: str = ""


@dataclass(frozen=True)
class Released:
    decision: ReleaseDecision
    institution: Institution
    sent: tuple[Sent, ...] = ()

    @property
    def complete(self) -> bool:
        """Allowed, and every instance stored (Success or Warning) by the receiving gateway."""
        return self.decision.allowed and all(s.outcome is not SubOperation.FAILURE for s in self.sent)


def release_study(node: Node, study_uid: str, to: str, *, purpose: str, actor: str) -> Released:
    """``dicom-chain release``: decide (recorded), then, allowed, send the study's newest instances."""
    institution = Registry(node.ledger, None).get(to)
    decision = decide_release(
        node, study_uid=study_uid, to=to, purpose=purpose, actor=actor, via="cli", now=decision_time(node)
    )
    if not decision.allowed:
        return Released(decision, institution)
    items = _items(node, study_uid)
    return Released(decision, institution, tuple(send_study(node, institution, items)))


def _items(node: Node, study_uid: str) -> list[RetrieveItem]:
    """The study's newest instances, as the query index lists them (each file carries its block)."""
    query = Query(
        model="STUDY", level="IMAGE", keys={"StudyInstanceUID": parse_key("UI", study_uid)}, requested=()
    )
    return [RetrieveItem.from_values(values) for values in index.find(node.db, query, level="IMAGE")]


def send_study(node: Node, institution: Institution, items: Iterable[RetrieveItem]) -> list[Sent]:
    """C-STORE each item to the institution's gateway over one association: the file as stored
    when its context was accepted (no decode), else re-encoded by pynetdicom; one result each."""
    items = list(items)
    if not items:
        return []
    ae = AE(ae_title=node.settings.ae_title)
    ae.acse_timeout = RELEASE_ACSE_TIMEOUT_S
    ae.dimse_timeout = RELEASE_DIMSE_TIMEOUT_S
    ae.network_timeout = RELEASE_NETWORK_TIMEOUT_S
    assoc = ae.associate(
        institution.host, institution.port, contexts=contexts_for(items), ae_title=institution.ae_title
    )
    if not assoc.is_established:
        reason = f"association with {institution.ae_title}@{institution.host}:{institution.port} failed"
        return [Sent(i.sop_instance_uid, None, SubOperation.FAILURE, reason) for i in items]
    try:
        carried = carried_request(node, node.settings.institution, institution)
        sent = [_send(node, assoc, item, carried) for item in items]
    finally:
        if assoc.is_established:
            assoc.release()
    if any(s.outcome == SubOperation.SUCCESS for s in sent):
        carried_to(node, institution, carried)
    return sent


def _send(node: Node, assoc: Association, item: RetrieveItem, carried: str = "") -> Sent:
    """One instance, carrying our checkpoint (``carried``, tlog/publishing.carried_request) in its
    block for the receiver to judge as a witness would."""
    uid = item.sop_instance_uid
    if not assoc.is_established:
        return Sent(uid, None, SubOperation.FAILURE, "association lost")
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
    how = sending(accepted, item.sop_class_uid, item.transfer_syntax)
    if how is None:
        return Sent(uid, None, SubOperation.FAILURE, f"no accepted context for {item.sop_class_uid}")
    path = Path(node.storage.path(item.path))
    fault = stored_file_fault(path, item.block_hash)
    if fault:
        return Sent(uid, None, SubOperation.FAILURE, f"not released: {fault}")
    try:
        if carried:  # the file as stored, our checkpoint added to its block
            payload: Path | pydicom.Dataset = pydicom.dcmread(path)
            attach_checkpoint(payload, carried)
        else:
            payload = path if how is Sending.AS_STORED else pydicom.dcmread(path)
        response = assoc.send_c_store(payload)  # our block travels in the file
    except (OSError, ValueError, RuntimeError, DicomChainError) as exc:
        return Sent(uid, None, SubOperation.FAILURE, str(exc))
    status = int(getattr(response, "Status", -1)) if response is not None and len(response) else None
    if status is None:
        return Sent(uid, None, SubOperation.FAILURE, "no response")
    comment = str(getattr(response, "ErrorComment", "") or "")
    return Sent(uid, status, sub_operation(status), comment)


class Carrying:
    """Our checkpoint on each instance a C-MOVE sends another institution, as ``release`` sends
    it (``_send``); once any arrived, the institution has seen our log at that size."""

    def __init__(self, node: Node, institution: Institution) -> None:
        self.node = node
        self.institution = institution
        self.request = carried_request(node, node.settings.institution, institution)

    def attach(self, payload: object) -> None:
        if isinstance(payload, pydicom.Dataset):
            with contextlib.suppress(DicomChainError):  # no single block: the instance goes without
                attach_checkpoint(payload, self.request)

    def arrived(self) -> None:
        carried_to(self.node, self.institution, self.request)
