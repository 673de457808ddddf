"""Scores of institutions and patients, recomputed from events each time they are asked for. Pure.

A score is never stored: it is the policy's ``initial`` value moved by each event that concerns
the party (the policy's ``effects``), held within its bounds, recovering towards ``initial`` by
``recovery_per_day`` between events. The explanation lists every step, so a person can follow a
number back to the events that made it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dicom_chain.events import Event
from dicom_chain.sharing import times
from dicom_chain.sharing.policyfile import Policy, ScoreRule
from dicom_chain.vocab import EventType

INSTITUTION = "institution"
PATIENT = "patient"
CONSENT_GROUND = "consent"  # a denial for want of consent (release.* details["grounds"])
# Institutions' own sending, as the receiving side records it: the sender's name in details.
SENDER_KEYS = ("from", "institution", "sender")
SHOWN_STEP = 0.05  # recovery smaller than this rounds away in a shown score: not listed as a step


@dataclass(frozen=True)
class Step:
    """One thing that moved a score: an event (seq > 0) or the recovery since the last one."""

    seq: int
    time: str
    what: str  # "release.denied.consent", "recovery over 3.0 days"
    effect: float
    score: float  # after this step


@dataclass(frozen=True)
class Score:
    party: str
    name: str
    value: float
    steps: tuple[Step, ...]

    def explain(self) -> list[str]:
        lines = [f"{self.party} {self.name}: starts at {shown(self.steps[0].score)}"]
        for s in self.steps[1:]:
            where = f"event {s.seq} " if s.seq else ""
            lines.append(f"{s.time}  {where}{s.what}: {s.effect:+.1f} -> {shown(s.score)}")
        lines.append(f"score {shown(self.value)}")
        return lines


def shown(value: float) -> str:
    """A score as reasons and listings print it (one decimal at most)."""
    return f"{round(value, 1):g}"


def event_key(event: Event) -> str:
    """The key of ``effects`` an event answers to (a denial for want of consent has its own)."""
    if event.type == EventType.RELEASE_DENIED and CONSENT_GROUND in (event.details.get("grounds") or ()):
        return "release.denied.consent"
    return str(event.type)


def concerns(event: Event, party: str, name: str) -> bool:
    d = event.details
    if party == PATIENT:
        return event.patient_id == name
    if event.type in (EventType.RELEASE_GRANTED, EventType.RELEASE_DENIED):
        return d.get("to") == name
    if event.type in (EventType.RELEASE_RECEIVED, EventType.RELEASE_REFUSED, EventType.LOG_SPLIT_VIEW):
        return any(d.get(k) == name for k in SENDER_KEYS)
    return False


def compute(policy: Policy, events: Iterable[Event], party: str, name: str, now: str) -> Score:
    """``name``'s score at ``now`` from ``events`` (any order; only those before ``now`` and
    concerning the party, with an effect in the policy, count)."""
    rule = policy.score_rule(party)
    steps = [Step(0, "", "initial", 0.0, rule.initial)]
    value, last = rule.initial, None
    moving = []
    for e in sorted(events, key=lambda e: e.seq):
        effect = rule.effect(event_key(e))
        if effect is None or not concerns(e, party, name) or times.parse(e.time) > times.parse(now):
            continue
        moving.append((e, effect))
    for e, effect in moving:
        if last is not None:
            value = _recover(rule, value, last, e.time, steps)
        value = _clamp(rule, value + effect)
        steps.append(Step(e.seq, e.time, event_key(e), effect, value))
        last = e.time
    if last is not None:
        value = _recover(rule, value, last, now, steps)
    return Score(party, name, value, tuple(steps))


def _clamp(rule: ScoreRule, value: float) -> float:
    return max(rule.low, min(rule.high, value))


def _recover(rule: ScoreRule, value: float, since: str, until: str, steps: list[Step]) -> float:
    days = max(0.0, times.days_between(since, until))
    room = rule.initial - value
    move = max(-abs(room), min(abs(room), rule.recovery_per_day * days)) if room else 0.0
    move = move if room > 0 else -move
    if abs(move) >= SHOWN_STEP:  # smaller ones still count, but would only clutter the explanation
        steps.append(Step(0, until, f"recovery over {days:.1f} days", move, value + move))
    return value + move
