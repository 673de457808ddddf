"""Who made each version of an instance: its blocks, and the receipts that made them.

A block does not name its sender (the block is the node's statement about content); the
``instance.received`` event of the receipt that made it does (``actor``: the calling AE title,
or the local user for ``dicom-chain ingest``), and names the block by hash. Versions are
legitimate (corrections) but are evidence: C-FIND answers and ``verify --db`` show them, and
the version policy (``Node.ingest``) reads the original's sender from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_chain.ledger import BLOCKS, EVENTS
from dicom_chain.vocab import EventType, IngestOutcome

_MADE = (IngestOutcome.STORED, IngestOutcome.NEW_VERSION)  # receipts that made a block


@dataclass(frozen=True)
class Version:
    version: int
    sender: str  # "" when no receipt names the block (a ledger older than its events)
    timestamp: str  # the block's


def versions_of(session: Session, chain_id: str, sop_instance_uid: str) -> list[Version]:
    """Every version of the instance on this chain, oldest first. Two indexed reads: the blocks by
    SOP UID, then the receipts by study UID (events have no SOP index; a study's are few)."""
    blocks = session.execute(
        select(BLOCKS.c.version, BLOCKS.c.block_hash, BLOCKS.c.study_instance_uid, BLOCKS.c.timestamp)
        .where(BLOCKS.c.chain_id == chain_id, BLOCKS.c.sop_instance_uid == sop_instance_uid)
        .order_by(BLOCKS.c.version)
    ).all()
    if not blocks:
        return []
    receipts = session.execute(
        select(EVENTS.c.actor, EVENTS.c.details).where(
            EVENTS.c.type == EventType.INSTANCE_RECEIVED,
            EVENTS.c.study_uid.in_({b.study_instance_uid for b in blocks}),
            EVENTS.c.sop_uid == sop_instance_uid,
            EVENTS.c.chain_id == chain_id,
            EVENTS.c.reason.in_(_MADE),
        )
    ).all()
    senders = {}
    for actor, details in receipts:
        made = json.loads(details) if isinstance(details, str) else details
        senders[made.get("block_hash")] = actor
    return [Version(b.version, senders.get(b.block_hash, ""), b.timestamp) for b in blocks]
