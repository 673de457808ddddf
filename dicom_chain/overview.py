"""The node at a glance, for the console's dashboard: what ``status`` prints and more, read in a
few queries (counts by index, the newest rows only), so the page costs the same at any size."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select

from dicom_chain.errors import NoteError
from dicom_chain.events import Event
from dicom_chain.ledger import EVENTS, Ledger
from dicom_chain.outbox import Outbox, QueueStats
from dicom_chain.sharing.registry import Registry
from dicom_chain.storage import Storage
from dicom_chain.tlog import cosignature
from dicom_chain.tlog.publishing import Published, latest_published
from dicom_chain.tlog.witnessing import WitnessHost, witness_name
from dicom_chain.vocab import EventType, Outcome

RECENT_SECURITY = 10  # the dashboard's list: the newest few, the audit page has the rest
# Events a compliance officer wants to see first: refusals, intrusions, forgeries, failed logins.
SECURITY_TYPES = (
    EventType.ASSOCIATION_REJECTED, EventType.INSTANCE_REFUSED, EventType.RELEASE_REFUSED,
    EventType.LOG_SPLIT_VIEW, EventType.USER_LOGIN, EventType.PATIENT_LINK_OPENED, EventType.VERIFY_NODE,
)  # fmt: skip


@dataclass(frozen=True)
class Overview:
    events: int
    head: str
    instances_today: int
    checkpoint: Published | None
    cosigners: list[str]
    queues: list[QueueStats]
    storage_used: int
    storage_total: int
    security: list[Event] = field(default_factory=list)


def overview(host: WitnessHost, ledger: Ledger, storage: Storage) -> Overview:
    seq, head = ledger.event_head()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    with ledger.db.reading() as session:
        received = session.scalar(
            select(func.count())
            .select_from(EVENTS)
            .where(EVENTS.c.time >= today, EVENTS.c.type == EventType.INSTANCE_RECEIVED)
        )
        rows = session.execute(
            select(EVENTS)
            .where(EVENTS.c.type.in_(SECURITY_TYPES), EVENTS.c.outcome != Outcome.SUCCESS)
            .order_by(EVENTS.c.seq.desc())
            .limit(RECENT_SECURITY)
        ).all()
    published = latest_published(host)
    cosigners = []
    if published is not None:
        for inst in Registry(ledger, None).all(include_removed=True):
            try:
                cosignature.verify(published.signed, witness_name(inst.key_id), inst.public_key)
            except NoteError:  # not this institution's cosignature
                continue
            cosigners.append(inst.name)
    usage = shutil.disk_usage(storage.root)
    return Overview(
        events=seq,
        head=head,
        instances_today=int(received or 0),
        checkpoint=published,
        cosigners=cosigners,
        queues=Outbox(ledger, None).stats(),
        storage_used=usage.used,
        storage_total=usage.total,
        security=[Event.from_stored(r._mapping) for r in rows],
    )
