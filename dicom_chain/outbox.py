"""The store-and-forward queue: what each upstream PACS still has to receive.

Rows are queued in the receipt's own transaction (``Outbox.enqueue``, called by receipt.py), so
nothing a modality got Success for can be missing from it. Workers *lease* a batch (one study at a time),
send it, then settle each row: done, retry later with exponential back-off, or failed for good.
Leases expire, so a worker that dies (or a process killed with -9) gives its rows back.

FAILED is the dead-letter state: an instance the PACS keeps refusing stops being tried after a
bounded number of refusals (an ``instance.forwarded`` major-failure event), so it never holds up
the rest of its study; ``dicom-chain forward retry`` (``Outbox.replay``) queues it again.

Every failed attempt's reason starts with its cause (``ForwardCause``), a small closed vocabulary
(``dns: ...``, ``refused: ...``), so ``status``, the log and the metrics can say what is wrong
with a destination without parsing prose.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Row, bindparam, func, select, update
from sqlalchemy.orm import Session

from dicom_chain.block import Block
from dicom_chain.config import DEFAULT_FORWARD_MAX_REFUSALS
from dicom_chain.db import owners
from dicom_chain.db.hot import HotCursor, insert_sql
from dicom_chain.db.models import OutboxRow
from dicom_chain.errors import ConfigError
from dicom_chain.events import Event, EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import EVENTS, Ledger, append_event, append_events
from dicom_chain.vocab import EventType, ForwardVerdict, OutboxState, Outcome

BACKOFF_FIRST_S = 2.0  # first retry soon: a PACS restart takes seconds
BACKOFF_MAX_S = 300.0  # never wait more than 5 minutes once the PACS is back
BACKOFF_JITTER = 0.2  # +-20%, so many workers do not retry in lock step
LEASE_S = 120.0  # longer than any batch takes; a dead worker's rows come back after this at the latest
# A PACS that refuses an instance this many times (not "busy": a failure status, its SOP class
# rejected, or the association dropped while that instance was being sent) will not take it on
# the next try either: it goes to the dead-letter state. Five with back-off spans ~30 s, longer
# than a PACS restart that happens to drop one send. Settings.forward_max_refusals sets it.
MAX_REFUSED_ATTEMPTS = DEFAULT_FORWARD_MAX_REFUSALS
# Instances settled per transaction. Each holds the write lock that every receipt needs, and
# sealing an event (canonical JSON, SHA-256, Ed25519) costs ~0.15 ms: a whole batch of 50 held it
# 16-35 ms on a loaded 2-core box, and a receipt arriving meanwhile waited all of it
# (benchmarks/bench_forward_contention.py). Ten keep a hold to a few ms for one more commit
# (one fsync in the forwarder) per ten instances sent.
SETTLE_CHUNK = 10
# Leases and settles commit without waiting for the disk (Database.writing(durable=False)): the
# fsync would be paid while holding the write lock a receipt waits for. A power cut can lose only
# the last of them, and what it loses is what a crash just before the settle loses today: the rows
# are leased or pending again, the instances are sent again (a PACS stores a SOP Instance UID it
# has once more, or answers a warning), and their events are recorded then. The log stays a
# prefix: the next durable commit (a receipt's) fsyncs the WAL with these frames in it.
FORWARD_WRITES_DURABLE = False

OUTBOX = OutboxRow.__table__
# What settling reads and writes of a row, in one statement each (settle).
_SETTLE_COLUMNS = ("id", "state", "attempts", "refusals", "last_status", "last_error")
_SETTLE_COLUMNS += ("next_attempt_at", "done_at")
_SETTLE_READ = (
    select(*(OUTBOX.c[name] for name in _SETTLE_COLUMNS))
    .where(OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .with_for_update()
)
_SETTLE_WRITE = (
    update(OUTBOX)
    .where(OUTBOX.c.id == bindparam("b_id"))
    .values(
        {name: bindparam(f"b_{name}") for name in _SETTLE_COLUMNS if name != "id"}
        | {"lease_until": 0.0, "lease_owner": ""}
    )
)
_ENQUEUE = insert_sql("outbox", [c.name for c in OUTBOX.c if c.name != "id"])
_DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


class ForwardCause(StrEnum):
    """Why one forward attempt failed: the first word of its reason (``failure``)."""

    DNS = "dns"  # the host name does not resolve
    REFUSED = "refused"  # nothing listens on the port (TCP RST)
    UNREACHABLE = "unreachable"  # no route, network down: the network, not the PACS
    TIMEOUT = "timeout"  # no TCP answer, no A-ASSOCIATE answer, or no C-STORE response in time
    REJECTED = "rejected"  # A-ASSOCIATE-RJ, with result, source and reason decoded
    ABORTED = "aborted"  # A-ABORT, or the connection closed, before an answer
    CONTEXTS = "contexts"  # the PACS accepted none of the presentation contexts proposed
    STATUS = "status"  # a C-STORE failure status (0xXXXX and its meaning)
    UNREADABLE = "unreadable"  # our stored file is missing or unreadable
    UNENCODABLE = "unencodable"  # pynetdicom cannot encode the instance for the accepted context
    INTERNAL = "internal"  # a bug in the forwarder: its traceback is in the log


def failure(cause: ForwardCause, detail: str) -> str:
    """A forward failure's reason as stored and shown: ``cause: detail``."""
    return f"{cause}: {detail}"


def cause_of(reason: str) -> ForwardCause | None:
    """The cause a stored reason starts with; None for none (success, older rows)."""
    try:
        return ForwardCause(reason.partition(":")[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class Destination:
    """An upstream PACS, written ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = _DESTINATION.match(text.strip())
        if not match or not 0 < int(match["port"]) < 65536:
            raise ConfigError(f"destination {text!r} is not AET@HOST:PORT")
        return cls(match["aet"].strip(), match["host"], int(match["port"]))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class OutboxItem:
    id: int
    destination: str
    block_hash: str
    path: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    study_instance_uid: str
    patient_id: str
    attempts: int


@dataclass(frozen=True)
class Settled:
    """What became of one forwarded item: the PACS's status (None: no answer), why, and the verdict."""

    item: OutboxItem
    status: int | None
    reason: str
    verdict: ForwardVerdict

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", ForwardVerdict(self.verdict))


@dataclass(frozen=True)
class QueueStats:
    destination: str
    pending: int
    failed: int
    done: int
    oldest_waiting_since: float | None
    oldest_waiting_sop: str
    last_error: str


def backoff_delay(attempts: int, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``attempts`` (1-based): doubling, capped, with jitter."""
    base = min(BACKOFF_FIRST_S * 2 ** max(0, attempts - 1), BACKOFF_MAX_S)
    jitter = (rng or random).uniform(-BACKOFF_JITTER, BACKOFF_JITTER)
    return base * (1 + jitter)


def _item(row: OutboxRow | Row[Any]) -> OutboxItem:
    return OutboxItem(
        row.id,
        row.destination,
        row.block_hash,
        row.path,
        row.sop_instance_uid,
        row.sop_class_uid,
        row.transfer_syntax,
        row.study_instance_uid,
        row.patient_id,
        row.attempts,
    )


class Outbox:
    """The queue's rows, on the ledger's database; forward events go to the ledger in the same
    transaction as the settle that causes them."""

    def __init__(self, ledger: Ledger, key: NodeKey | None, max_refusals: int = MAX_REFUSED_ATTEMPTS) -> None:
        """``key`` signs the forward events; a read-only user (``status``) passes None.
        ``max_refusals``: refusals before an instance goes to the dead-letter state (FAILED)."""
        self.ledger = ledger
        self.db = ledger.db
        self.key = key
        self.max_refusals = max_refusals
        self.locks: Path | None = None  # the node's liveness-lock folder (db/owners.py), set by Node

    def enqueue(  # constant SQL on the driver's cursor (db/hot.py): once per received instance
        self,
        session: Session | None,
        destinations: Iterable[str],
        block: Block,
        *,
        path: str,
        sop_class_uid: str,
        transfer_syntax: str,
        patient_id: str,
        cursor: HotCursor | None = None,
    ) -> None:
        """Queue the new block's instance for every upstream PACS, in the receipt's transaction
        (on its ``cursor`` when the caller has one open: then ``session`` may be None)."""
        now = time.time()
        rows = [
            {
                "destination": destination,
                "block_hash": block.hash,
                "chain_id": block.header.chain_id,
                "height": block.header.height,
                "sop_instance_uid": block.header.sop_instance_uid,
                "sop_class_uid": sop_class_uid,
                "transfer_syntax": transfer_syntax,
                "study_instance_uid": block.header.study_instance_uid,
                "patient_id": patient_id,
                "path": path,
                "state": str(OutboxState.PENDING),
                "attempts": 0,
                "refusals": 0,
                "created_at": now,
                "next_attempt_at": now,
                "lease_until": 0.0,
                "lease_owner": "",
                "last_status": None,
                "last_error": "",
                "done_at": None,
            }
            for destination in destinations
        ]
        if rows:
            (cursor or HotCursor(session)).run_many(_ENQUEUE, rows)  # type: ignore[arg-type]

    def claim(self, destination: str, limit: int, now: float | None = None) -> list[OutboxItem]:
        """Lease up to ``limit`` due rows of one study (the oldest due row's) for ``destination``;
        a row the PACS has refused before is leased alone, so it cannot hold up the others."""
        now = time.time() if now is None else now
        due = (
            (OutboxRow.destination == destination)
            & (OutboxRow.state == OutboxState.PENDING)
            & (OutboxRow.next_attempt_at <= now)
            & (OutboxRow.lease_until <= now)
        )
        owner = str(owners.current())  # per process, so right after a fork too
        with self.db.reading() as session:  # most polls find nothing: those take no write lock
            if session.execute(select(OUTBOX.c.id).where(due).limit(1)).first() is None:
                return []
        with self.db.writing(durable=FORWARD_WRITES_DURABLE) as session:
            first = session.execute(
                select(OUTBOX).where(due).order_by(OUTBOX.c.id).limit(1).with_for_update(skip_locked=True)
            ).first()
            if first is None:
                return []
            if first.refusals:  # a suspect goes alone: it never again holds up its study's others
                rows = [first]
            else:
                rows = list(
                    session.execute(
                        select(OUTBOX)
                        .where(due & (OutboxRow.study_instance_uid == first.study_instance_uid))
                        .where(OutboxRow.refusals == 0)
                        .order_by(OUTBOX.c.id)
                        .limit(limit)
                        .with_for_update(skip_locked=True)
                    )
                )
            session.execute(
                update(OUTBOX)
                .where(OUTBOX.c.id.in_([row.id for row in rows]))
                .values(lease_until=now + LEASE_S, lease_owner=owner)
            )
            return [_item(row) for row in rows]

    def free_dead_leases(self) -> int:
        """Give back rows leased by processes that no longer run (kill -9, crash), judged as
        owners.py judges: on this host only. Other leases are left to expire."""
        with self.db.writing() as session:
            holders = session.scalars(
                select(OutboxRow.lease_owner)
                .where(OutboxRow.state == OutboxState.PENDING, OutboxRow.lease_owner != "")
                .distinct()
            ).all()
            parsed = [(h, owners.Owner.parse(h)) for h in holders]
            dead = [h for h, owner in parsed if owner is not None and owners.dead(owner, self.locks)]
            if not dead:
                return 0
            result = session.execute(
                update(OutboxRow)
                .where(OutboxRow.state == OutboxState.PENDING, OutboxRow.lease_owner.in_(dead))
                .values(lease_until=0.0, lease_owner="")
            )
            return int(result.rowcount or 0)

    def settle(self, results: list[Settled], now: float | None = None) -> None:
        """Record each item's fate, SETTLE_CHUNK items per short transaction.

        The verdict (a ForwardVerdict) is DONE, RETRY (busy or unreachable: try again, forever) or
        REFUSED (the PACS said no: try again up to ``max_refusals`` times, then dead-letter). Only
        refusals count towards that bound: a PACS that is down for a day fails nothing. Every done
        or dead-lettered instance is an event in the ledger.

        Each transaction holds the write lock that every receipt needs, so it is a fixed handful
        of statements whatever its size: one read of the rows, one executemany update, the events
        in one insert (the ORM's per-row load and flush held it ~40 ms for 50 instances).
        """
        if self.key is None:
            raise ValueError("settling needs the node key")
        if not results:
            return
        key = self.key
        now = time.time() if now is None else now
        for start in range(0, len(results), SETTLE_CHUNK):
            self._settle(key, results[start : start + SETTLE_CHUNK], now)

    def _settle(self, key: NodeKey, results: list[Settled], now: float) -> None:
        ids = sorted({r.item.id for r in results})
        with self.db.writing(durable=FORWARD_WRITES_DURABLE) as session:
            rows = {row.id: row._asdict() for row in session.execute(_SETTLE_READ, {"ids": ids})}
            changed: dict[int, dict[str, object]] = {}
            drafts = []
            for result in results:
                item, status = result.item, result.status
                row = rows.get(item.id)
                if row is None or row["state"] != OutboxState.PENDING:
                    continue
                row["attempts"] += 1
                if result.verdict is ForwardVerdict.REFUSED:
                    row["refusals"] += 1
                row["last_status"], row["last_error"] = status, result.reason
                if result.verdict is ForwardVerdict.DONE:
                    row["state"], row["done_at"] = OutboxState.DONE, now
                    drafts.append(self._event(item, status, row["attempts"], Outcome.SUCCESS, ""))
                elif result.verdict is ForwardVerdict.REFUSED and row["refusals"] >= self.max_refusals:
                    row["state"] = OutboxState.FAILED
                    failed = self._event(item, status, row["attempts"], Outcome.MAJOR_FAILURE, result.reason)
                    drafts.append(failed)
                else:
                    row["next_attempt_at"] = now + backoff_delay(row["attempts"])
                changed[item.id] = row
            if changed:
                params = [{f"b_{k}": v for k, v in r.items()} for r in changed.values()]
                session.execute(_SETTLE_WRITE, params)
            append_events(session, key, drafts)

    def _event(
        self, item: OutboxItem, status: int | None, attempts: int, outcome: Outcome, error: str
    ) -> EventDraft:
        return EventDraft(
            type=EventType.INSTANCE_FORWARDED,
            outcome=outcome,
            actor=item.destination,
            patient_id=item.patient_id,
            study_uid=item.study_instance_uid,
            sop_uid=item.sop_instance_uid,
            reason=error or ("stored by the PACS" if outcome == Outcome.SUCCESS else ""),
            details={
                "destination": item.destination,
                "status": f"0x{status:04X}" if status is not None else None,
                "attempts": attempts,
                "block_hash": item.block_hash,
            },
        )

    def replay(self, actor: str, destination: str | None = None, sop_instance_uid: str | None = None) -> int:
        """Queue dead-lettered (FAILED) rows again, due now with their refusals reset: those of
        ``destination`` and/or one SOP Instance UID, or all. One ``forward.replayed`` event per
        instance names who asked; returns how many were queued."""
        if self.key is None:
            raise ValueError("replaying needs the node key")
        key = self.key
        now = time.time()
        query = select(OutboxRow).where(OutboxRow.state == OutboxState.FAILED).order_by(OutboxRow.id)
        if destination is not None:
            query = query.where(OutboxRow.destination == destination)
        if sop_instance_uid is not None:
            query = query.where(OutboxRow.sop_instance_uid == sop_instance_uid)
        with self.db.writing() as session:
            rows = list(session.scalars(query.with_for_update()))
            for row in rows:
                row.state, row.refusals, row.next_attempt_at = OutboxState.PENDING, 0, now
                row.lease_until, row.lease_owner = 0.0, ""
                event = EventDraft(
                    type=EventType.FORWARD_REPLAYED,
                    outcome=Outcome.SUCCESS,
                    actor=actor,
                    patient_id=row.patient_id,
                    study_uid=row.study_instance_uid,
                    sop_uid=row.sop_instance_uid,
                    reason=f"queued again for {row.destination} after: {row.last_error}",
                    details={
                        "destination": row.destination,
                        "attempts": row.attempts,
                        "block_hash": row.block_hash,
                    },
                )
                append_event(session, key, event)
            return len(rows)

    def destination_down(self, destination: str, reason: str, next_probe_s: float) -> None:
        """Record that ``destination`` cannot be reached (``reason`` starts with its cause): one
        event for the outage, where each instance that waits meanwhile records nothing."""
        self._destination_event(
            EventDraft(
                type=EventType.FORWARD_DOWN,
                outcome=Outcome.MINOR_FAILURE,  # PS3.15 A.5.3: failed, and will be tried again
                actor=destination,
                reason=reason,
                details={
                    "destination": destination,
                    "cause": str(cause_of(reason) or ""),
                    "next_probe_s": round(next_probe_s, 1),
                },
            )
        )

    def destination_up(self, destination: str, down_s: float | None) -> None:
        """Record that ``destination`` took an association again after being recorded down;
        ``down_s``: for how long this process saw it down (None: since before it started)."""
        down = f" after {down_s:.0f} s" if down_s is not None else ""
        self._destination_event(
            EventDraft(
                type=EventType.FORWARD_UP,
                actor=destination,
                reason=f"reachable again{down}",
                details={"destination": destination, "down_s": None if down_s is None else round(down_s, 1)},
            )
        )

    def _destination_event(self, draft: EventDraft) -> None:
        if self.key is None:
            raise ValueError("recording needs the node key")
        with self.db.writing() as session:
            append_event(session, self.key, draft)

    def last_outage(self, destination: str) -> Event | None:
        """The latest ``forward.down`` of ``destination`` when no ``forward.up`` came after it:
        the outage the ledger last recorded and has not seen end."""
        types = [str(EventType.FORWARD_DOWN), str(EventType.FORWARD_UP)]
        query = (
            select(EVENTS)
            .where(EVENTS.c.type.in_(types), EVENTS.c.actor == destination)
            .order_by(EVENTS.c.seq.desc())
            .limit(1)
        )
        with self.db.reading() as session:
            row = session.execute(query).first()
        if row is None or row.type != EventType.FORWARD_DOWN:
            return None
        return Event.from_stored(row._mapping)

    def dead_letters(self, destination: str | None = None) -> list[OutboxItem]:
        """The dead-lettered (FAILED) rows, oldest first: what ``replay`` would queue again."""
        query = select(OutboxRow).where(OutboxRow.state == OutboxState.FAILED).order_by(OutboxRow.id)
        if destination is not None:
            query = query.where(OutboxRow.destination == destination)
        with self.db.reading() as session:
            return [_item(row) for row in session.scalars(query)]

    def release(self, items: list[OutboxItem]) -> None:
        """Give leased rows back untouched (shutting down mid-batch)."""
        with self.db.writing() as session:
            session.execute(
                update(OutboxRow)
                .where(OutboxRow.id.in_([i.id for i in items]), OutboxRow.state == OutboxState.PENDING)
                .values(lease_until=0.0, lease_owner="")
            )

    def stats(self) -> list[QueueStats]:
        with self.db.reading() as session:
            counts: dict[str, dict[str, int]] = {}
            for destination, state, count in session.execute(
                select(OutboxRow.destination, OutboxRow.state, func.count()).group_by(
                    OutboxRow.destination, OutboxRow.state
                )
            ):
                counts.setdefault(destination, {})[state] = count
            out = []
            for destination in sorted(counts):
                oldest = session.execute(
                    select(OutboxRow.created_at, OutboxRow.sop_instance_uid)
                    .where(OutboxRow.destination == destination, OutboxRow.state == OutboxState.PENDING)
                    .order_by(OutboxRow.id)
                    .limit(1)
                ).first()
                # The current trouble first (a waiting row's), else what dead-lettered the last one.
                errors = select(OutboxRow.last_error).where(
                    OutboxRow.destination == destination, OutboxRow.last_error != ""
                )
                order = (OutboxRow.state != OutboxState.PENDING, OutboxRow.id.desc())
                last_error = session.scalar(
                    errors.where(OutboxRow.state != OutboxState.DONE).order_by(*order).limit(1)
                )
                c = counts[destination]
                out.append(
                    QueueStats(
                        destination,
                        c.get(OutboxState.PENDING, 0),
                        c.get(OutboxState.FAILED, 0),
                        c.get(OutboxState.DONE, 0),
                        oldest[0] if oldest else None,
                        oldest[1] if oldest else "",
                        last_error or "",
                    )
                )
            return out

    def failing(self) -> dict[tuple[str, str, str], int]:
        """Instances whose last attempt failed, by (destination, state, cause): the waiting ones
        (state pending) and the dead-lettered (failed); "unknown" for a reason with no cause
        (rows settled before causes were recorded). Read at scrape time by the metrics."""
        query = (
            select(OutboxRow.destination, OutboxRow.state, OutboxRow.last_error, func.count())
            .where(OutboxRow.state != OutboxState.DONE, OutboxRow.last_error != "")
            .group_by(OutboxRow.destination, OutboxRow.state, OutboxRow.last_error)
        )
        out: dict[tuple[str, str, str], int] = {}
        with self.db.reading() as session:
            for destination, state, reason, count in session.execute(query):
                key = (destination, state, str(cause_of(reason) or "unknown"))
                out[key] = out.get(key, 0) + count
        return out

    def last_queued_at(self) -> float | None:
        """When the newest row was queued (a receipt's time): the forwarder's sign that a modality
        is sending. The primary key's last row: one index step, whatever the queue's length."""
        with self.db.reading() as session:
            return session.scalar(select(OutboxRow.created_at).order_by(OutboxRow.id.desc()).limit(1))

    def pending_count(self, destination: str | None = None) -> int:
        with self.db.reading() as session:
            query = select(func.count()).select_from(OutboxRow).where(OutboxRow.state == OutboxState.PENDING)
            if destination is not None:
                query = query.where(OutboxRow.destination == destination)
            return int(session.scalar(query) or 0)
