"""Patients' consents, folded from the ledger's events. Pure.

A consent is its ``consent.granted`` event; a ``consent.revoked`` event naming it ends it from the
moment it is recorded (whatever time a later question is asked about), and nothing is ever
rewritten: a decision made before the revocation stays on the ledger as it was made.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from dicom_chain.events import Event
from dicom_chain.sharing import times
from dicom_chain.vocab import EventType


@dataclass(frozen=True)
class Consent:
    consent_id: str
    patient_id: str
    issuer: str
    institution: str
    start: str  # ISO 8601 UTC
    until: str
    studies: tuple[str, ...]  # empty: every study of the patient
    purpose: str
    source: str
    granted_at: str  # the event's time
    revoked_at: str | None = None
    revoke_reason: str = ""

    def covers_study(self, study_uid: str) -> bool:
        return not self.studies or study_uid in self.studies

    def active(self, now: str) -> bool:
        at = times.parse(now)
        return self.revoked_at is None and times.parse(self.start) <= at < times.parse(self.until)

    @classmethod
    def from_event(cls, event: Event) -> Consent:
        d = event.details
        return cls(
            consent_id=str(d["consent_id"]),
            patient_id=str(d.get("patient_id") or event.patient_id),
            issuer=str(d.get("issuer") or ""),
            institution=str(d["institution"]),
            start=str(d["from"]),
            until=str(d["until"]),
            studies=tuple(d.get("studies") or ()),
            purpose=str(d.get("purpose") or "treatment"),
            source=str(d.get("source") or "cli"),
            granted_at=event.time,
        )

    def revoked(self, at: str, reason: str) -> Consent:
        """This consent as a revocation recorded at ``at`` leaves it."""
        return replace(self, revoked_at=at, revoke_reason=reason)


def fold(events: Iterable[Event]) -> dict[str, Consent]:
    """Every consent by id, as the events (in sequence order) leave it."""
    consents: dict[str, Consent] = {}
    for event in sorted(events, key=lambda e: e.seq):
        if event.type == EventType.CONSENT_GRANTED:
            consent = Consent.from_event(event)
            consents.setdefault(consent.consent_id, consent)  # an id granted twice keeps its first
        elif event.type == EventType.CONSENT_REVOKED:
            cid = str(event.details.get("consent_id", ""))
            if cid in consents and consents[cid].revoked_at is None:
                reason = str(event.details.get("reason", ""))
                consents[cid] = consents[cid].revoked(event.time, reason)
    return consents


def of_patient(consents: dict[str, Consent], patient_id: str) -> list[Consent]:
    return sorted((c for c in consents.values() if c.patient_id == patient_id), key=lambda c: c.granted_at)


@dataclass(frozen=True)
class Cover:
    """The answer to "does a consent cover this?": the consent, or why none does, in words."""

    consent: Consent | None
    reason: str


def covering(
    consents: dict[str, Consent], *, patient_id: str, study_uid: str, institution: str, purpose: str, now: str
) -> Cover:
    """The consent that covers (patient, study, institution, purpose) at ``now``; else the reason
    naming the nearest miss (the latest consent for that institution and how it falls short)."""
    mine = [c for c in of_patient(consents, patient_id) if c.institution == institution]
    for c in mine:
        if c.active(now) and c.covers_study(study_uid) and c.purpose == purpose:
            until = times.day(c.until)
            return Cover(c, f"consent {c.consent_id} for {institution} ({purpose}) until {until}")
    if not mine:
        return Cover(None, f"no consent of patient {patient_id} for {institution}")
    misses = []
    for c in reversed(mine):  # the newest first: it is the one the patient last meant
        if c.purpose != purpose:
            misses.append(f"consent for {institution} is for {c.purpose}, not {purpose}")
        elif not c.covers_study(study_uid):
            misses.append(f"consent for {institution} does not include study {study_uid}")
        elif c.revoked_at is not None:
            misses.append(f"consent for {institution} was revoked {times.day(c.revoked_at)}")
        elif times.parse(now) < times.parse(c.start):
            misses.append(f"consent for {institution} starts {times.day(c.start)}")
        else:
            misses.append(f"consent for {institution} ended {times.day(c.until)}")
    return Cover(None, misses[0])
