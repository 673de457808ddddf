"""Sharing as library calls that read, decide and record: what the CLI and the DICOM edge call.

Each call that records does it in one transaction holding the event log's head: the facts it
reads are exactly the events before the one it appends, which is what lets ``replay`` recompute
every decision. The clock is the caller's (``now``): nothing here reads one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session

from dicom_chain.db.database import Database
from dicom_chain.errors import SharingError
from dicom_chain.events import Event, EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger, append_event
from dicom_chain.qr import index
from dicom_chain.sharing import consent as consents
from dicom_chain.sharing import facts as facts_io
from dicom_chain.sharing import fhirconsent, policyfile, scores, times
from dicom_chain.sharing.policy import ReleaseDecision, ReleaseRequest, decide
from dicom_chain.sharing.policyfile import Policy
from dicom_chain.sharing.registry import Registry
from dicom_chain.vocab import EventType, Outcome

CONSENT_SOURCES = ("cli", "fhir", "console")


class SharingHost(Protocol):
    """What these calls need of a node (``node.Node`` is one)."""

    ledger: Ledger
    key: NodeKey
    db: Database
    policy: Policy


def adopt_policy(ledger: Ledger, key: NodeKey, path: Path | None, actor: str) -> Policy:
    """The policy in force, recording ``policy.changed`` when ``path`` names one that differs from
    the one in force (the last recorded; the shipped default while none is).

    ``path`` None keeps the policy in force: a command run without ``--policy`` must not undo the
    one a service was started with. A node that never decides records no policy at all; the first
    decision records the one it is made under (``record_policy``).
    """
    history = facts_io.policy_history(ledger)
    current = (
        policyfile.parse(str(history[-1].details["text"]), source="the recorded policy")
        if history
        else policyfile.load(None)
    )
    if path is None:
        return current
    wanted = policyfile.load(path)
    if wanted.hash != current.hash:
        with ledger.db.writing() as session:
            ledger.lock_event_head(session)
            record_policy(ledger, key, session, wanted, actor, str(path))
    return wanted


def record_policy(
    ledger: Ledger, key: NodeKey, session: Session, policy: Policy, actor: str, source: str = ""
) -> None:
    """Record ``policy.changed`` unless ``policy`` is the last recorded (in the caller's locked
    transaction): a decision is only ever made under a policy the ledger holds the text of."""
    history = facts_io.policy_history(ledger, session)
    if history and history[-1].details.get("hash") == policy.hash:
        return
    append_event(session, key, EventDraft(
        type=EventType.POLICY_CHANGED, actor=actor,
        reason=f"policy {policy.hash[:16]} from {source or 'the shipped default'}",
        details={"hash": policy.hash, "text": policy.text, "source": source},
    ))  # fmt: skip


def check_release(
    host: SharingHost, *, study_uid: str, to: str, purpose: str, now: str, patient_id: str | None = None
) -> ReleaseDecision:
    """The decision a release would get at ``now``, neither acted on nor recorded."""
    study = facts_io.study(host.ledger, study_uid)
    patient = patient_id if patient_id is not None else (study.patient_id if study else "")
    if study is None and patient_id is None:
        raise SharingError(f"no study {study_uid} on this node (name the patient to ask anyway)")
    modalities = study.modalities if study else ()
    request = ReleaseRequest(patient, study_uid, to, purpose, modalities)
    return decide(host.policy, facts_io.load(host.ledger), request, now)


def decide_release(
    host: SharingHost, *, study_uid: str, to: str, purpose: str, actor: str, via: str, now: str
) -> ReleaseDecision:
    """Decide whether ``study_uid`` may go to institution ``to`` and record the decision
    (``release.granted`` or ``release.denied``, with its reasons) in the same transaction."""
    index.before_read(host.db)  # the study's index rows, before this transaction holds the lock
    with host.db.writing() as session:
        host.ledger.lock_event_head(session)
        study = facts_io.study(host.ledger, study_uid, session)
        if study is None:
            raise SharingError(f"no study {study_uid} on this node")
        record_policy(host.ledger, host.key, session, host.policy, actor)
        request = ReleaseRequest(study.patient_id, study_uid, to, purpose, study.modalities)
        facts = facts_io.load(host.ledger, session)
        decision = decide(host.policy, facts, request, now)
        event = append_event(session, host.key, EventDraft(
            type=EventType.RELEASE_GRANTED if decision.allowed else EventType.RELEASE_DENIED,
            outcome=Outcome.SUCCESS if decision.allowed else Outcome.MINOR_FAILURE,
            actor=actor, patient_id=study.patient_id, study_uid=study_uid, reason=decision.reason,
            details={
                "to": to, "purpose": purpose, "consent_id": decision.consent_id,
                "reasons": list(decision.reasons), "policy_hash": decision.policy_hash, "via": via,
                "instances": study.instances, "at": now, "modalities": list(study.modalities),
                "grounds": list(decision.grounds), "scores": dict(decision.scores),
            },
        ))  # fmt: skip
        parties = [(scores.INSTITUTION, to), (scores.PATIENT, study.patient_id)]
        note_score_changes(host, session, facts.events, event, parties, actor=actor)
    return decision


def record_fault(
    host: SharingHost, draft: EventDraft, institution: str, session: Session | None = None
) -> Event:
    """An institution's fault (a release refused on receipt, a log caught showing two histories),
    with the notice of the score change it causes, in one transaction (``session``'s, if given)."""
    if session is None:
        with host.db.writing() as own:
            return record_fault(host, draft, institution, own)
    host.ledger.lock_event_head(session)
    event = append_event(session, host.key, draft)
    before = facts_io.load(host.ledger, session, before_seq=event.seq).events
    note_score_changes(host, session, before, event, [(scores.INSTITUTION, institution)], actor=draft.actor)
    return event


SCORE_NOTICE_PLACES = 1  # a notice is recorded when the score as shown (one decimal) moves


def note_score_changes(
    host: SharingHost,
    session: Session,
    before: Sequence[Event],
    cause: Event,
    parties: Sequence[tuple[str, str]],
    *,
    actor: str,
) -> list[Event]:
    """Record a ``score.changed`` notice for each party whose score ``cause`` moved.

    A notice is derived, never a source: scores are always recomputed from the events the policy
    names (``score.changed`` is not one of them), and the notice says from what, to what and
    because of which event, so an auditor reading an export sees scores move where they move.
    Both scores are taken at the moment the cause was recorded; ``before`` are the facts the cause
    was appended after (the caller has them already, read in the same transaction)."""
    now = cause.time
    notices = []
    for party, name in parties:
        if not name:
            continue
        old = scores.compute(host.policy, before, party, name, now).value
        new = scores.compute(host.policy, [*before, cause], party, name, now).value
        if round(old, SCORE_NOTICE_PLACES) == round(new, SCORE_NOTICE_PLACES):
            continue
        moved = f"{scores.shown(old)} -> {scores.shown(new)}"
        notices.append(append_event(session, host.key, EventDraft(
            type=EventType.SCORE_CHANGED,
            outcome=Outcome.SUCCESS,
            actor=actor,
            patient_id=name if party == scores.PATIENT else "",
            study_uid=cause.study_uid,
            reason=f"{party} {name}: {moved} ({cause.type}, event {cause.seq})",
            details={
                "party": party, "name": name, "from": round(old, 3), "to": round(new, 3),
                "cause_seq": cause.seq, "cause_type": cause.type, "policy_hash": host.policy.hash, "at": now,
            },
        )))  # fmt: skip
    return notices


def grant_consent(
    host: SharingHost, *, patient_id: str, to: str, until: str, actor: str, now: str,
    start: str | None = None, studies: Sequence[str] = (), purpose: str = "treatment", issuer: str = "",
    source: str = "cli", consent_id: str | None = None,
) -> consents.Consent:  # fmt: skip
    """Record a patient's consent for institution ``to`` (registered) from ``start`` (``now``)
    to ``until``; ``studies`` empty: every study of the patient."""
    if not patient_id:
        raise SharingError("a consent needs a patient ID")
    if purpose not in policyfile.PURPOSES:
        raise SharingError(f"purpose {purpose!r}: one of {', '.join(policyfile.PURPOSES)}")
    if source not in CONSENT_SOURCES:
        raise SharingError(f"consent source {source!r}: one of {', '.join(CONSENT_SOURCES)}")
    Registry(host.ledger, None).get(to)
    begin, end = times.normalise(start or now), times.normalise(until)
    if times.parse(end) <= times.parse(begin):
        raise SharingError(f"consent until {until} does not come after its start {begin}")
    details: dict[str, Any] = {
        "consent_id": consent_id or str(uuid.uuid4()), "patient_id": patient_id, "issuer": issuer,
        "institution": to, "from": begin, "until": end, "studies": list(studies), "purpose": purpose,
        "source": source,
    }  # fmt: skip
    with host.db.writing() as session:
        host.ledger.lock_event_head(session)
        if details["consent_id"] in consents.fold(facts_io.load(host.ledger, session).events):
            raise SharingError(f"consent {details['consent_id']} is already recorded")
        event = append_event(session, host.key, EventDraft(
            type=EventType.CONSENT_GRANTED, actor=actor, patient_id=patient_id,
            reason=f"{purpose} by {to} until {times.day(end)}", details=details,
        ))  # fmt: skip
    return consents.Consent.from_event(event)


def revoke_consent(host: SharingHost, consent_id: str, *, actor: str, reason: str = "") -> consents.Consent:
    """End a consent from now on; decisions already made under it stay as they were recorded."""
    with host.db.writing() as session:
        host.ledger.lock_event_head(session)
        found = consents.fold(facts_io.load(host.ledger, session).events).get(consent_id)
        if found is None:
            raise SharingError(f"no consent {consent_id}")
        if found.revoked_at is not None:
            raise SharingError(f"consent {consent_id} was already revoked {found.revoked_at}")
        event = append_event(session, host.key, EventDraft(
            type=EventType.CONSENT_REVOKED, actor=actor, patient_id=found.patient_id, reason=reason,
            details={"consent_id": consent_id, "institution": found.institution, "reason": reason},
        ))  # fmt: skip
    return found.revoked(event.time, reason)


def import_consents(host: SharingHost, text: str, *, actor: str, now: str) -> list[consents.Consent]:
    """Record the consents of a FHIR Consent (or Bundle); one already recorded (same id) is skipped,
    so importing the same export twice changes nothing. An inactive one is recorded and revoked."""
    recorded = consents.fold(facts_io.load(host.ledger).events)
    done = []
    for terms in fhirconsent.read(text):
        if terms.consent_id and terms.consent_id in recorded:
            continue
        consent = grant_consent(
            host, patient_id=terms.patient_id, to=terms.institution, until=terms.until, start=terms.start,
            studies=terms.studies, purpose=terms.purpose, issuer=terms.issuer, actor=actor, now=now,
            source="fhir", consent_id=_as_uuid(terms.consent_id),
        )  # fmt: skip
        if not terms.active:
            consent = revoke_consent(
                host, consent.consent_id, actor=actor, reason="inactive in the FHIR import"
            )
        done.append(consent)
    return done


def _as_uuid(text: str | None) -> str | None:
    """A FHIR id kept as the consent's id when it is a UUID (ours are); else a new one is made."""
    try:
        return str(uuid.UUID(text)) if text else None
    except ValueError:
        return None


def all_consents(host: SharingHost, patient_id: str | None = None) -> list[consents.Consent]:
    folded = consents.fold(facts_io.load(host.ledger).events)
    found = sorted(folded.values(), key=lambda c: c.granted_at)
    return [c for c in found if patient_id is None or c.patient_id == patient_id]


def score(host: SharingHost, party: str, name: str, now: str) -> scores.Score:
    return scores.compute(host.policy, facts_io.load(host.ledger).events, party, name, now)
