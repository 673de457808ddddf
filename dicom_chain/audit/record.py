"""An exported event: the ledger row as a flat record every format carries in full.

Whatever the format shows people, each exported event also carries this record, from which
``audit verify`` recomputes the event's hash and checks its signature and links offline.
"""

from __future__ import annotations

import json
from typing import Any

from dicom_chain import canonjson
from dicom_chain.events import Event

FIELDS = (
    "seq",
    "hash",
    "prev_hash",
    "time",
    "type",
    "outcome",
    "actor",
    "patient_id",
    "study_uid",
    "sop_uid",
    "chain_id",
    "reason",
    "details",
    "key_id",
    "public_key",
    "signature",
)


def from_row(row: Any, *, decode_details: bool = True) -> dict[str, Any]:
    """A row of ``events`` as a record. Unpacked by position (this runs a million times per
    export); details decoded from their canonical JSON, or kept as that text (``details_json``)."""
    (
        seq,
        prev_hash,
        event_hash,
        time,
        key_id,
        public_key,
        event_type,
        outcome,
        actor,
        patient_id,
        study_uid,
        sop_uid,
        chain_id,
        reason,
        details,
        signature,
    ) = row
    return {
        "seq": seq,
        "hash": event_hash,
        "prev_hash": prev_hash,
        "time": time,
        "type": event_type,
        "outcome": outcome,
        "actor": actor,
        "patient_id": patient_id,
        "study_uid": study_uid,
        "sop_uid": sop_uid,
        "chain_id": chain_id,
        "reason": reason,
        "details": canonjson.loads(details) if decode_details else details,
        "key_id": key_id,
        "public_key": public_key,
        "signature": signature,
    }


def to_event(record: dict[str, Any]) -> Event:
    return Event(
        seq=int(record["seq"]),
        prev_hash=record["prev_hash"],
        time=record["time"],
        key_id=record["key_id"],
        type=record["type"],
        outcome=record["outcome"],
        actor=record["actor"],
        patient_id=record["patient_id"],
        study_uid=record["study_uid"],
        sop_uid=record["sop_uid"],
        chain_id=record["chain_id"],
        reason=record["reason"],
        details=record["details"],
        public_key=bytes.fromhex(record["public_key"]),
        signature=bytes.fromhex(record["signature"]),
    )


def dumps(record: dict[str, Any]) -> str:
    """One record as one line of JSON, details last in their canonical form. Details may still be
    the row's canonical text (spliced in, not decoded and encoded again) or already decoded: both
    give the same bytes, which is what lets a reader re-render a message and compare."""
    details = record["details"]
    text = details if isinstance(details, str) else canonjson.dumps(details).decode("utf-8")
    head = _ENCODER.encode({k: v for k, v in record.items() if k != "details"})
    return f'{head[:-1]},"details":{text}}}'


def details_of(record: dict[str, Any]) -> dict[str, Any]:
    details = record["details"]
    return canonjson.loads(details) if isinstance(details, str) else details


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


# Column order of ``events`` as the models declare it: from_row unpacks rows in this order.
ROW_COLUMNS = (
    "seq",
    "prev_hash",
    "hash",
    "time",
    "key_id",
    "public_key",
    "type",
    "outcome",
    "actor",
    "patient_id",
    "study_uid",
    "sop_uid",
    "chain_id",
    "reason",
    "details",
    "signature",
)
