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
    """Every version of the instance on this chain, oldest first."""
    return versions_of_many(session, chain_id, [sop_instance_uid], single=True).get(sop_instance_uid, [])


def versions_of_many(
    session: Session, chain_id: str, sop_instance_uids: list[str], *, single: bool = False
) -> dict[str, list[Version]]:
    """Every version of each instance, oldest first: one indexed read of the blocks by SOP UID for
    all of them, then their receipts by study UID (events have no SOP index; a study's are few), for
    the instances with several versions only unless ``single``: most instances have one version,
    and a C-FIND page of them then costs no second read (their sender is left "")."""
    if not sop_instance_uids:
        return {}
    blocks = session.execute(
        select(
            BLOCKS.c.sop_instance_uid,
            BLOCKS.c.version,
            BLOCKS.c.block_hash,
            BLOCKS.c.study_instance_uid,
            BLOCKS.c.timestamp,
        )
        .where(BLOCKS.c.chain_id == chain_id, BLOCKS.c.sop_instance_uid.in_(set(sop_instance_uids)))
        .order_by(BLOCKS.c.sop_instance_uid, BLOCKS.c.version)
    ).all()
    by_sop: dict[str, list] = {}
    for b in blocks:
        by_sop.setdefault(b.sop_instance_uid, []).append(b)
    senders: dict[str, str] = {}
    several = {sop: rows for sop, rows in by_sop.items() if single or len(rows) > 1}
    if several:
        receipts = session.execute(
            select(EVENTS.c.actor, EVENTS.c.details).where(
                EVENTS.c.type == EventType.INSTANCE_RECEIVED,
                EVENTS.c.study_uid.in_({b.study_instance_uid for rows in several.values() for b in rows}),
                EVENTS.c.sop_uid.in_(set(several)),
                EVENTS.c.chain_id == chain_id,
                EVENTS.c.reason.in_(_MADE),
            )
        ).all()
        for actor, details in receipts:
            made = json.loads(details) if isinstance(details, str) else details
            senders[made.get("block_hash")] = actor
    return {
        sop: [Version(b.version, senders.get(b.block_hash, ""), b.timestamp) for b in rows]
        for sop, rows in by_sop.items()
    }
