"""Rewriting a node's history behind its back, as an insider with the database and the key could:
one event changed, every later one re-sealed and re-signed, the Merkle tree rebuilt. The ledger's
own checks pass afterwards; only what others saw before can tell."""

from __future__ import annotations

from sqlalchemy import delete, insert, text, update

from dicom_chain.events import Event, EventDraft
from dicom_chain.ledger import EVENTS
from dicom_chain.node import Node
from dicom_chain.tlog.store import HEAD, NODES


def rewrite_history(node: Node, seq: int, reason: str) -> None:
    events = list(node.ledger.iter_events())
    prev = events[seq - 2].hash if seq > 1 else events[0].prev_hash
    rows = []
    for e in events[seq - 1 :]:
        draft = EventDraft(
            type=e.type, outcome=e.outcome, actor=e.actor, patient_id=e.patient_id, study_uid=e.study_uid,
            sop_uid=e.sop_uid, chain_id=e.chain_id, reason=reason if e.seq == seq else e.reason,
            details=e.details,
        )  # fmt: skip
        sealed = Event.seal(draft, e.seq, prev, node.key, time=e.time)
        rows.append(sealed.stored())
        prev = sealed.hash
    with node.ledger.db.writing() as session:
        session.execute(delete(EVENTS).where(EVENTS.c.seq >= seq))
        session.execute(insert(EVENTS), rows)
        session.execute(text("UPDATE event_log_head SET hash = :h WHERE id = 1"), {"h": prev})
        session.execute(delete(NODES))
        session.execute(update(HEAD).values(size=0))
