"""Event records of the hash-linked, signed log: pure data, hashing and signing.

Every receipt, forward, query, release, consent and policy decision becomes one Event. Each
carries the previous event's hash, so a removed, inserted or rewritten event breaks the links.

``EVENT_FIELDS`` declares the stored event once: the ledger's table (db/models.py), the row
written per event, the record every audit export carries (audit/record.py) and the reading of
rows and records back into events are derived from it. Its order is the order of an exported
record, so it is part of the export formats: changing it changes every export.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from functools import cached_property
from typing import Any

from dicom_chain import canonjson
from dicom_chain.block import GENESIS_HASH, utc_now
from dicom_chain.errors import MalformedBlockError
from dicom_chain.keys import NodeKey, key_id_for, verify_signature
from dicom_chain.vocab import EventType, Outcome

EVENT_DOMAIN = b"DICOM_CHAIN event v1\n"
EVENT_SIGNATURE_DOMAIN = b"DICOM_CHAIN event signature v1\n"


class Stored(StrEnum):
    """How a field's value is stored (and exported): the event holds the decoded form."""

    TEXT = "text"  # a string as it is
    INTEGER = "integer"
    HEX = "hex"  # bytes as lowercase hex
    JSON = "json"  # a dict as canonical JSON text (canonjson)


@dataclass(frozen=True)
class EventField:
    name: str
    stored: Stored = Stored.TEXT
    size: int | None = None  # characters at most; None: unbounded text
    unique: bool = False
    key: bool = False  # the table's primary key
    signed: bool = True  # covered by the event's hash (its body); False for the hash and the signer's proof


HASH_CHARS = 64  # hex SHA-256
UID_CHARS = 64  # PS3.5 9.1

EVENT_FIELDS: tuple[EventField, ...] = (
    EventField("seq", Stored.INTEGER, key=True),
    # No unique constraint on the hash (migration 0010): the hash covers prev_hash, so two rows
    # with one hash would share a prev_hash, which its own constraint refuses; no query looks an
    # event up by hash, and the index cost every appended event a page written.
    EventField("hash", size=HASH_CHARS, signed=False),
    EventField("prev_hash", size=HASH_CHARS, unique=True),
    EventField("time", size=32),  # utc_now(): YYYY-MM-DDTHH:MM:SS.ffffffZ
    EventField("type", size=64),  # an EventType
    EventField("outcome", size=16),  # an Outcome
    EventField("actor"),  # calling AE, destination, user@host: free text
    EventField("patient_id", size=64),  # LO
    EventField("study_uid", size=UID_CHARS),
    EventField("sop_uid", size=UID_CHARS),
    EventField("chain_id", size=36),  # a UUID
    EventField("reason"),
    EventField("details", Stored.JSON),
    EventField("key_id", size=16),
    EventField("public_key", Stored.HEX, size=64, signed=False),  # Ed25519: 32 bytes
    EventField("signature", Stored.HEX, size=128, signed=False),  # Ed25519: 64 bytes
)
FIELD_NAMES = tuple(f.name for f in EVENT_FIELDS)


@dataclass(frozen=True)
class EventDraft:
    """What a caller knows about an event; the ledger adds sequence, time, links and signature."""

    type: EventType
    outcome: Outcome = Outcome.SUCCESS
    actor: str = ""
    patient_id: str = ""
    study_uid: str = ""
    sop_uid: str = ""
    chain_id: str = ""
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A type or outcome outside the vocabulary is a programming error: fail here, not in an export.
        object.__setattr__(self, "type", EventType(self.type))
        object.__setattr__(self, "outcome", Outcome(self.outcome))


@dataclass(frozen=True)
class Event:
    """A sealed event: the fields of EVENT_FIELDS but its hash, which is computed, never held."""

    seq: int
    prev_hash: str
    time: str
    type: str
    outcome: str
    actor: str
    patient_id: str
    study_uid: str
    sop_uid: str
    chain_id: str
    reason: str
    details: dict[str, Any]
    key_id: str
    public_key: bytes = b""
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        """Everything the hash covers (dataclasses.asdict deep-copies: too slow per instance)."""
        return {name: getattr(self, name) for name in _BODY_FIELDS}

    def canonical_bytes(self) -> bytes:
        return canonjson.dumps(self.body())

    @cached_property
    def hash(self) -> str:
        """Computed from the fields once per object (an event is immutable once sealed); an event
        read back from a row or a record computes its own, which is what verification compares."""
        return hashlib.sha256(EVENT_DOMAIN + self.canonical_bytes()).hexdigest()

    @classmethod
    def seal(
        cls, draft: EventDraft, seq: int, prev_hash: str, key: NodeKey, time: str | None = None
    ) -> Event:
        """Turn a draft into the signed event that follows ``prev_hash`` at ``seq``: its body
        serialised and hashed once (that hash is kept), signed, and the signature set on the one
        object (``dataclasses.replace`` would build a second and hash it again; this runs once
        per received instance)."""
        event = cls(
            seq=seq,
            prev_hash=prev_hash,
            time=time or utc_now(),
            key_id=key.key_id,
            type=draft.type,
            outcome=draft.outcome,
            actor=draft.actor,
            patient_id=draft.patient_id,
            study_uid=draft.study_uid,
            sop_uid=draft.sop_uid,
            chain_id=draft.chain_id,
            reason=draft.reason,
            details=_as_stored(draft.details),
            public_key=key.public_key,
        )
        signature = key.sign(EVENT_SIGNATURE_DOMAIN + event.hash.encode("ascii"))
        object.__setattr__(event, "signature", signature)  # not in the hash: the body is unchanged
        return event

    def verify_signature(self) -> None:
        if key_id_for(self.public_key) != self.key_id:
            raise MalformedBlockError(f"event {self.seq}: public key does not match key id")
        verify_signature(self.public_key, self.signature, EVENT_SIGNATURE_DOMAIN + self.hash.encode("ascii"))

    def stored(self) -> dict[str, Any]:
        """The event as stored and exported: every field of EVENT_FIELDS, in order, encoded."""
        out: dict[str, Any] = {}
        for f in EVENT_FIELDS:
            value = self.hash if f.name == "hash" else getattr(self, f.name)
            if f.stored is Stored.HEX:
                value = value.hex()
            elif f.stored is Stored.JSON:
                value = canonjson.dumps(value).decode("utf-8")
            out[f.name] = value
        return out

    @classmethod
    def from_stored(cls, values: Mapping[str, Any]) -> Event:
        """An event from a stored row or an exported record (details as JSON text or decoded); its
        stored hash is left out: ``hash`` recomputes it, which is what verification compares."""
        kwargs: dict[str, Any] = {}
        for f in _EVENT_ONLY:
            value = values[f.name]
            if f.stored is Stored.HEX:
                value = bytes.fromhex(value)
            elif f.stored is Stored.JSON and isinstance(value, str | bytes):
                value = canonjson.loads(value)
            elif f.stored is Stored.INTEGER:
                value = int(value)
            kwargs[f.name] = value
        return cls(**kwargs)


_PLAIN = (str, int, type(None))  # exact types (no subclass: an enum member) that read back as they are


def _as_stored(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` as they read back from the log (a JSON round trip: tuples become lists, keys
    strings, enum members their values, keys sorted). A flat dict of text keys and plain values,
    as a receipt's is, reads back as a sorted copy of itself: made so, without serialising and
    parsing it once per instance."""
    if all(type(k) is str and type(v) in _PLAIN for k, v in details.items()):
        return dict(sorted(details.items()))
    return json.loads(canonjson.dumps(details))


_EVENT_ONLY = tuple(f for f in EVENT_FIELDS if f.name != "hash")
_BODY_FIELDS = tuple(f.name for f in EVENT_FIELDS if f.signed)
if tuple(f.name for f in fields(Event)) != tuple(f.name for f in _EVENT_ONLY):
    raise TypeError("Event's fields must be EVENT_FIELDS (hash aside), in that order")
FIRST_SEQ = 1
FIRST_PREV_HASH = GENESIS_HASH
