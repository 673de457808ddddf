"""Sharing policy: whether something may leave the node, and why, in words. Pure.

No I/O and no clock of its own: a decision depends only on the policy (from settings) and the
request, so it can be tested exhaustively, asked twice, and recorded with its reasons. Today it
holds C-MOVE destinations (``--move-destination``, ``SharingPolicy``) and the release of a study
to another institution (``decide``): consent, the patient's research opt-in, and both parties'
scores against the policy file's requirements (policyfile.py, scores.py, consent.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from dicom_chain.events import Event
from dicom_chain.sharing import consent as consents
from dicom_chain.sharing import scores
from dicom_chain.sharing.policyfile import Policy
from dicom_chain.vocab import EventType


class Peer(Protocol):
    """A DICOM peer as settings name it (outbox.Destination is one)."""

    @property
    def ae_title(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


@dataclass(frozen=True)
class Decision:
    """Allowed or denied, with the reasons a person reads (and the ledger records) in words."""

    allowed: bool
    reasons: tuple[str, ...]

    @property
    def denied(self) -> bool:
        return not self.allowed

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class MoveDecision(Decision):
    destination: Peer | None = None  # where to send, when allowed


@dataclass(frozen=True)
class SharingPolicy:
    move_destinations: tuple[Peer, ...] = ()  # the only AEs a C-MOVE may send to

    @classmethod
    def of(cls, move_destinations: Iterable[Peer]) -> SharingPolicy:
        return cls(tuple(move_destinations))

    def move(self, destination_ae: str) -> MoveDecision:
        """May a C-MOVE send to ``destination_ae``? Only to a configured destination: a C-MOVE
        names an AE title, and an AE title alone says nothing about where it is or who runs it."""
        for peer in self.move_destinations:
            if peer.ae_title == destination_ae:
                reason = f"{destination_ae} is a configured move destination"
                return MoveDecision(True, (reason,), destination=peer)
        return MoveDecision(False, (f"move destination {destination_ae!r} is not configured",))


# -- releases to other institutions --------------------------------------------------------------

FACT_TYPES = frozenset({
    EventType.INSTITUTION_ADDED, EventType.INSTITUTION_REMOVED,
    EventType.CONSENT_GRANTED, EventType.CONSENT_REVOKED,
    EventType.RELEASE_GRANTED, EventType.RELEASE_DENIED,
    EventType.RELEASE_RECEIVED, EventType.RELEASE_REFUSED,
    EventType.PATIENT_RESEARCH_OPT_IN, EventType.PATIENT_RESEARCH_OPT_OUT,
    EventType.LOG_SPLIT_VIEW,
})  # fmt: skip
# Why a release was denied, recorded in its details ("grounds"): scores read the consent one.
GROUND_INSTITUTION = "institution"
GROUND_PURPOSE = "purpose"
GROUND_CONSENT = scores.CONSENT_GROUND
GROUND_OPT_IN = "opt-in"
GROUND_SCORE = "score"


@dataclass(frozen=True)
class Facts:
    """The events the rules read (FACT_TYPES), in sequence order: what the engine has seen."""

    events: tuple[Event, ...]

    @classmethod
    def of(cls, events: Iterable[Event]) -> Facts:
        return cls(tuple(sorted((e for e in events if e.type in FACT_TYPES), key=lambda e: e.seq)))

    def institutions(self) -> dict[str, bool]:
        """Name -> registered now (False: added once, since removed)."""
        state: dict[str, bool] = {}
        for e in self.events:
            if e.type == EventType.INSTITUTION_ADDED:
                state[str(e.details.get("name"))] = True
            elif e.type == EventType.INSTITUTION_REMOVED:
                state[str(e.details.get("name"))] = False
        return state

    def research_opt_in(self, patient_id: str) -> bool:
        opted = False
        for e in self.events:
            if e.patient_id == patient_id and e.type == EventType.PATIENT_RESEARCH_OPT_IN:
                opted = True
            elif e.patient_id == patient_id and e.type == EventType.PATIENT_RESEARCH_OPT_OUT:
                opted = False
        return opted


@dataclass(frozen=True)
class ReleaseRequest:
    patient_id: str
    study_uid: str
    to: str  # an institution's name
    purpose: str
    modalities: tuple[str, ...] = ()  # the study's, from the query index


@dataclass(frozen=True)
class ReleaseDecision(Decision):
    consent_id: str | None = None
    scores: tuple[tuple[str, float], ...] = ()  # (party, score at the decision)
    grounds: tuple[str, ...] = ()  # why denied, as kinds (GROUND_*); empty when allowed
    policy_hash: str = ""


def decide(policy: Policy, facts: Facts, request: ReleaseRequest, now: str) -> ReleaseDecision:
    """May ``request`` be released at ``now``? Only the arguments decide: no clock, no I/O."""
    r = request
    denied: list[tuple[str, str]] = []  # (ground, reason)
    granted: list[str] = []
    registered = facts.institutions().get(r.to)
    if not registered:
        was = "is no longer" if registered is False else "is not"
        denied.append((GROUND_INSTITUTION, f"{r.to} {was} a registered institution"))
    rule = policy.purpose(r.purpose)
    consent_id = None
    if rule is None:
        denied.append((GROUND_PURPOSE, f"purpose {r.purpose!r} is not in the policy"))
    else:
        if rule.consent:
            cover = consents.covering(
                consents.fold(facts.events), patient_id=r.patient_id, study_uid=r.study_uid,
                institution=r.to, purpose=r.purpose, now=now,
            )  # fmt: skip
            if cover.consent is None:
                denied.append((GROUND_CONSENT, cover.reason))
            else:
                consent_id = cover.consent.consent_id
                granted.append(cover.reason)
        else:
            granted.append(f"{r.purpose} needs no consent under this policy")
        if rule.research_opt_in:
            if facts.research_opt_in(r.patient_id):
                granted.append(f"patient {r.patient_id} opted in to research")
            else:
                denied.append((GROUND_OPT_IN, f"patient {r.patient_id} has not opted in to research"))
    inst = scores.compute(policy, facts.events, scores.INSTITUTION, r.to, now)
    pat = scores.compute(policy, facts.events, scores.PATIENT, r.patient_id, now)
    named, req = policy.requirement_for(r.modalities)
    needed = req.min_institution_score
    guarded = ""
    if pat.value < req.min_patient_score:
        needed = max(needed, req.guarded_institution_score)
        guarded = f" (patient score {scores.shown(pat.value)} below {scores.shown(req.min_patient_score)})"
    if inst.value < needed:
        denied.append((GROUND_SCORE, f"score {scores.shown(inst.value)} below {scores.shown(needed)} "
                                     f"required for {named}{guarded}"))  # fmt: skip
    else:
        met = f"score {scores.shown(inst.value)} meets {scores.shown(needed)} required for {named}{guarded}"
        granted.append(met)
    allowed = not denied
    return ReleaseDecision(
        allowed,
        tuple(granted) if allowed else tuple(reason for _, reason in denied),
        consent_id=consent_id if allowed else None,
        scores=((scores.INSTITUTION, inst.value), (scores.PATIENT, pat.value)),
        grounds=tuple(dict.fromkeys(g for g, _ in denied)),
        policy_hash=policy.hash,
    )
