"""Event records of the hash-linked, signed log: pure data, hashing and signing.

Every receipt, forward, query, release, consent and policy decision becomes one Event. Each
carries the previous event's hash, so a removed, inserted or rewritten event breaks the links.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

from dicom_chain import canonjson
from dicom_chain.block import GENESIS_HASH, utc_now
from dicom_chain.errors import MalformedBlockError
from dicom_chain.keys import NodeKey, key_id_for, verify_signature
from dicom_chain.vocab import EventType, Outcome

EVENT_DOMAIN = b"DICOM_CHAIN event v1\n"
EVENT_SIGNATURE_DOMAIN = b"DICOM_CHAIN event signature v1\n"


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
    seq: int
    prev_hash: str
    time: str
    key_id: str
    type: str
    outcome: str
    actor: str
    patient_id: str
    study_uid: str
    sop_uid: str
    chain_id: str
    reason: str
    details: dict[str, Any]
    public_key: bytes = b""
    signature: bytes = b""

    def body(self) -> dict[str, Any]:
        """Everything the hash covers (dataclasses.asdict deep-copies: too slow per instance)."""
        return {name: getattr(self, name) for name in _BODY_FIELDS}

    def canonical_bytes(self) -> bytes:
        return canonjson.dumps(self.body())

    @property
    def hash(self) -> str:
        return hashlib.sha256(EVENT_DOMAIN + self.canonical_bytes()).hexdigest()

    @classmethod
    def seal(
        cls, draft: EventDraft, seq: int, prev_hash: str, key: NodeKey, time: str | None = None
    ) -> Event:
        """Turn a draft into the signed event that follows ``prev_hash`` at ``seq``."""
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
            details=json.loads(canonjson.dumps(draft.details)),  # what survives a round trip
            public_key=key.public_key,
        )
        return replace(event, signature=key.sign(EVENT_SIGNATURE_DOMAIN + event.hash.encode("ascii")))

    def verify_signature(self) -> None:
        if key_id_for(self.public_key) != self.key_id:
            raise MalformedBlockError(f"event {self.seq}: public key does not match key id")
        verify_signature(self.public_key, self.signature, EVENT_SIGNATURE_DOMAIN + self.hash.encode("ascii"))


_BODY_FIELDS = tuple(f.name for f in fields(Event) if f.name not in ("public_key", "signature"))
FIRST_SEQ = 1
FIRST_PREV_HASH = GENESIS_HASH
