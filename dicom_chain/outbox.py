"""The store-and-forward queue: what each upstream PACS still has to receive.

Rows are queued in the receipt's own transaction (``Outbox.enqueue``, called by receipt.py), so
nothing a modality got Success for can be missing from it. Workers *lease* a batch (one study at a time),
send it, then settle each row: done, retry later with exponential back-off, or failed for good.
Leases expire, so a worker that dies (or a process killed with -9) gives its rows back.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from dicom_chain.block import Block
from dicom_chain.db import owners
from dicom_chain.db.models import OutboxRow
from dicom_chain.errors import ConfigError
from dicom_chain.events import EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger, append_event
from dicom_chain.vocab import EventType, ForwardVerdict, OutboxState, Outcome

BACKOFF_FIRST_S = 2.0  # first retry soon: a PACS restart takes seconds
BACKOFF_MAX_S = 300.0  # never wait more than 5 minutes once the PACS is back
BACKOFF_JITTER = 0.2  # +-20%, so many workers do not retry in lock step
LEASE_S = 120.0  # longer than any batch takes; a dead worker's rows come back after this at the latest
MAX_REFUSED_ATTEMPTS = 5  # a PACS that keeps refusing an instance (not "busy") fails it for good

OUTBOX = OutboxRow.__table__
_DESTINATION = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


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


def _item(row: OutboxRow) -> OutboxItem:
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

    def __init__(self, ledger: Ledger, key: NodeKey | None) -> None:
        """``key`` signs the forward events; a read-only user (``status``) passes None."""
        self.ledger = ledger
        self.db = ledger.db
        self.key = key

    def enqueue(
        self,
        session: Session,
        destinations: Iterable[str],
        block: Block,
        *,
        path: str,
        sop_class_uid: str,
        transfer_syntax: str,
        patient_id: str,
    ) -> None:
        """Queue the new block's instance for every upstream PACS, in the receipt's transaction."""
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
                "state": OutboxState.PENDING,
                "attempts": 0,
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
            session.execute(insert(OUTBOX), rows)

    def claim(self, destination: str, limit: int, now: float | None = None) -> list[OutboxItem]:
        """Lease up to ``limit`` due rows of one study (the oldest due row's) for ``destination``."""
        now = time.time() if now is None else now
        due = (
            (OutboxRow.destination == destination)
            & (OutboxRow.state == OutboxState.PENDING)
            & (OutboxRow.next_attempt_at <= now)
            & (OutboxRow.lease_until <= now)
        )
        owner = str(owners.current())  # per process, so right after a fork too
        with self.db.writing() as session:
            first = session.scalars(
                select(OutboxRow).where(due).order_by(OutboxRow.id).limit(1).with_for_update(skip_locked=True)
            ).first()
            if first is None:
                return []
            rows = list(
                session.scalars(
                    select(OutboxRow)
                    .where(due & (OutboxRow.study_instance_uid == first.study_instance_uid))
                    .order_by(OutboxRow.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            for row in rows:
                row.lease_until = now + LEASE_S
                row.lease_owner = owner
            return [_item(row) for row in rows]

    def free_dead_leases(self) -> int:
        """Give back rows leased by processes that no longer run (kill -9, crash), judged as
        owners.py judges: on this host and boot only. Other leases are left to expire."""
        with self.db.writing() as session:
            holders = session.scalars(
                select(OutboxRow.lease_owner)
                .where(OutboxRow.state == OutboxState.PENDING, OutboxRow.lease_owner != "")
                .distinct()
            ).all()
            dead = [h for h in holders if (owner := owners.Owner.parse(h)) is not None and owners.dead(owner)]
            if not dead:
                return 0
            result = session.execute(
                update(OutboxRow)
                .where(OutboxRow.state == OutboxState.PENDING, OutboxRow.lease_owner.in_(dead))
                .values(lease_until=0.0, lease_owner="")
            )
            return int(result.rowcount or 0)

    def settle(self, results: list[Settled], now: float | None = None) -> None:
        """Record each item's fate in one transaction.

        The verdict (a ForwardVerdict) is DONE, RETRY (busy or unreachable: try again, forever) or
        REFUSED (the PACS said no: try again up to MAX_REFUSED_ATTEMPTS, then fail for good). Every
        done or final failure is an event in the ledger.
        """
        if self.key is None:
            raise ValueError("settling needs the node key")
        key = self.key
        now = time.time() if now is None else now
        with self.db.writing() as session:
            for result in results:
                item, status = result.item, result.status
                row = session.get(OutboxRow, item.id, with_for_update=True)
                if row is None or row.state != OutboxState.PENDING:
                    continue
                row.attempts += 1
                row.last_status = status
                row.last_error = result.reason
                row.lease_until, row.lease_owner = 0.0, ""
                if result.verdict is ForwardVerdict.DONE:
                    row.state, row.done_at = OutboxState.DONE, now
                    append_event(session, key, self._event(item, status, row.attempts, Outcome.SUCCESS, ""))
                elif result.verdict is ForwardVerdict.REFUSED and row.attempts >= MAX_REFUSED_ATTEMPTS:
                    row.state = OutboxState.FAILED
                    failure = self._event(item, status, row.attempts, Outcome.MAJOR_FAILURE, result.reason)
                    append_event(session, key, failure)
                else:
                    row.next_attempt_at = now + backoff_delay(row.attempts)

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
                last_error = session.scalar(
                    select(OutboxRow.last_error)
                    .where(OutboxRow.destination == destination, OutboxRow.last_error != "")
                    .order_by(OutboxRow.id.desc())
                    .limit(1)
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

    def pending_count(self, destination: str | None = None) -> int:
        with self.db.reading() as session:
            query = select(func.count()).select_from(OutboxRow).where(OutboxRow.state == OutboxState.PENDING)
            if destination is not None:
                query = query.where(OutboxRow.destination == destination)
            return int(session.scalar(query) or 0)
