"""Recompute recorded release decisions from the events before them, under the policy then in force. Pure.

Every ``release.granted`` / ``release.denied`` event names the policy's hash and the time it was
decided at; the ``policy.changed`` events before it carry that policy's text. Deciding again from
exactly the events that preceded it must give the same answer and the same reasons: that is what
makes a decision checkable by anyone holding the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dicom_chain.events import Event
from dicom_chain.sharing.policy import Facts, ReleaseDecision, ReleaseRequest, decide
from dicom_chain.sharing.policyfile import Policy, parse
from dicom_chain.vocab import EventType

RELEASE_DECISIONS = (EventType.RELEASE_GRANTED, EventType.RELEASE_DENIED)


@dataclass(frozen=True)
class Replayed:
    event: Event
    recomputed: ReleaseDecision | None  # None: the policy it names was never recorded

    @property
    def agrees(self) -> bool:
        r, d = self.recomputed, self.event.details
        return (
            r is not None
            and r.allowed == (self.event.type == EventType.RELEASE_GRANTED)
            and list(r.reasons) == list(d.get("reasons") or [])
            and r.consent_id == d.get("consent_id")
        )


def request_of(event: Event) -> ReleaseRequest:
    d = event.details
    return ReleaseRequest(
        patient_id=event.patient_id,
        study_uid=event.study_uid,
        to=str(d.get("to", "")),
        purpose=str(d.get("purpose", "")),
        modalities=tuple(d.get("modalities") or ()),
    )


def replay(events: Iterable[Event]) -> list[Replayed]:
    ordered = sorted(events, key=lambda e: e.seq)
    policies: dict[str, Policy] = {}
    out = []
    for i, event in enumerate(ordered):
        if event.type == EventType.POLICY_CHANGED:
            policy = parse(str(event.details.get("text", "")), source=f"policy of event {event.seq}")
            policies[policy.hash] = policy
        elif event.type in RELEASE_DECISIONS:
            policy = policies.get(str(event.details.get("policy_hash", "")))
            recomputed = None
            if policy is not None:
                recomputed = decide(
                    policy, Facts.of(ordered[:i]), request_of(event), str(event.details["at"])
                )
            out.append(Replayed(event, recomputed))
    return out
