"""Receipts gathered per study and association, as IHE ATNA reports them (pure: no I/O, no clock).

The ledger keeps one ``instance.received`` event per instance; an audit record repository wants
one "DICOM Instances Transferred" message per study and association (IHE ITI TF-2 3.20.6, DICOM
PS3.15 A.5.3.2), its SOP classes counted. ``Transfers`` holds the receipts the live feed has read
until their transfer is complete: the association ended (the gateway says so, at the log's head
then), or nothing came for AGGREGATE_IDLE_S, or the transfer has been open AGGREGATE_MAX_AGE_S.
Each finished ``Transfer`` names the events it stands for (first and last seq, count, and a
SHA-256 over their seq and hash), so an auditor can match it with an export of the ledger.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dicom_chain.audit import record
from dicom_chain.vocab import EventType, Outcome

# A modality sends a study's instances back to back (seconds apart at most); a longer silence
# from the same AE about the same study is taken as the transfer's end when the gateway that
# received it is not the one feeding (it says when its associations end; another process's do not).
AGGREGATE_IDLE_S = 30.0
# An association that streams for hours still reports: one message per this long, at most (a
# repository must not wait an hour to hear that images arrived; IHE leaves the grouping to us).
AGGREGATE_MAX_AGE_S = 300.0

Key = tuple[str, str, str, str, str]  # actor, peer address, patient, study, signing key id


def aggregated(rec: dict[str, Any]) -> bool:
    """Whether a record is reported per study and association: successful receipts of a study."""
    return (
        rec["type"] == EventType.INSTANCE_RECEIVED
        and rec["outcome"] == Outcome.SUCCESS
        and bool(rec["study_uid"])
    )


def key_of(rec: dict[str, Any]) -> Key:
    peer = str(record.details_of(rec).get("peer", ""))
    return (rec["actor"], peer, rec["patient_id"], rec["study_uid"], rec["key_id"])


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass
class Transfer:
    """The receipts of one study from one association (or one sender, within the time bounds)."""

    key: Key
    first: dict[str, Any]  # the first record: who, which patient and study
    last_time: str = ""
    first_seq: int = 0
    last_seq: int = 0
    count: int = 0
    sop_classes: dict[str, int] = field(default_factory=dict)
    _digest: Any = field(default_factory=hashlib.sha256)

    def add(self, rec: dict[str, Any]) -> None:
        if not self.count:
            self.first_seq = rec["seq"]
        self.last_seq, self.last_time = rec["seq"], rec["time"]
        self.count += 1
        sop_class = str(record.details_of(rec).get("sop_class", ""))
        self.sop_classes[sop_class] = self.sop_classes.get(sop_class, 0) + 1
        self._digest.update(f"{rec['seq']} {rec['hash']}\n".encode("ascii"))

    @property
    def events_sha256(self) -> str:
        """SHA-256 over ``"SEQ HASH\\n"`` of each event, in order: what an export can be matched with."""
        return self._digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        return {
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "count": self.count,
            "events_sha256": self.events_sha256,
        }


class Transfers:
    """Open transfers by key, and finished ones waiting to be sent. ``add`` gathers a receipt;
    ``ended`` notes an association's end at the log's head; ``close_due`` finishes what is
    complete; ``finished`` is sent oldest first, each dropped only once it went out."""

    def __init__(self) -> None:
        self.open: dict[Key, Transfer] = {}
        self.finished: list[Transfer] = []
        # (actor, peer) -> the log's head at each end of its associations (a lagging feed may
        # learn of several before it reads their receipts: each still splits the transfers)
        self._ended: dict[tuple[str, str], list[int]] = {}

    def add(self, rec: dict[str, Any]) -> None:
        key = key_of(rec)
        current = self.open.get(key)
        ends = self._ended.get(key[:2], ())
        if current is not None and any(current.last_seq <= end < rec["seq"] for end in ends):
            self._finish(key)  # a new association of the same sender about the same study
            current = None
        if current is None:
            current = self.open[key] = Transfer(key, rec)
        current.add(rec)

    def ended(self, actor: str, peer: str, head_seq: int) -> None:
        """An association of ``actor`` from ``peer`` ended when the log's head was ``head_seq``."""
        self._ended.setdefault((actor, peer), []).append(head_seq)

    def close_due(self, position: int, now: float | None, *, everything: bool = False) -> None:
        """Finish the transfers complete once the log was read up to ``position``: their
        association ended by then, or (``now`` given: the feed has caught up with the log) they
        were silent or open long enough; ``everything`` finishes all (the gateway stops)."""
        for key, transfer in list(self.open.items()):
            ends = self._ended.get(key[:2], ())
            done = everything or any(transfer.last_seq <= end <= position for end in ends)
            if not done and now is not None:
                idle = now - _epoch(transfer.last_time)
                age = now - _epoch(transfer.first["time"])
                done = idle >= AGGREGATE_IDLE_S or age >= AGGREGATE_MAX_AGE_S
            if done:
                self._finish(key)
        oldest = self.oldest_seq()  # ends no transfer can still need are dropped
        for peer, ends in list(self._ended.items()):
            kept = [end for end in ends if end > position or (oldest is not None and end >= oldest)]
            if kept:
                self._ended[peer] = kept
            else:
                del self._ended[peer]

    def _finish(self, key: Key) -> None:
        self.finished.append(self.open.pop(key))
        self.finished.sort(key=lambda t: t.first_seq)

    def oldest_seq(self) -> int | None:
        """The first event of the oldest transfer not yet sent: the feed's cursor stays below it."""
        return min((t.first_seq for t in (*self.open.values(), *self.finished)), default=None)

    def clear(self) -> None:
        self.open.clear()
        self.finished.clear()
        self._ended.clear()
