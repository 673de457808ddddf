"""Proof of an image's state at a time: a self-contained bundle anyone checks offline.

A bundle (JSON, ``"type": "image-state"``) holds, for one instance or every instance of a study:
its blocks (each content hash as chained), the events that name it (its receipts, forwards, and
its study's releases and retrievals), each event's signature and RFC 9162 inclusion proof, and the
checkpoint they are proved against, with the witnesses' cosignatures when one was published (the
first that covers them: the earliest moment the state was fixed before others). ``check`` replays
it: every event is in the log the checkpoint commits to and signed by the log's key; every block
is signed by it and is the one a receipt recorded; after a receipt, each later event that names a
block names the same one unless a new version was received; and a file given is the content the
block covers. Changing an event breaks its proof; changing the image breaks its content hash.

Building reads the node; checking is pure (a parsed document and optional file in, a report out).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select

from dicom_chain import canonjson
from dicom_chain.block import Block
from dicom_chain.carriers.base import Carried
from dicom_chain.db.models import BlockRow, PublishedCheckpointRow
from dicom_chain.errors import DicomChainError, NoteError, ProofError
from dicom_chain.events import Event
from dicom_chain.keys import key_id_for, verify_signature
from dicom_chain.ledger import EVENTS
from dicom_chain.sharing.registry import Registry
from dicom_chain.tlog import cosignature, merkle, note
from dicom_chain.tlog.checkpoint import Checkpoint, open_signed
from dicom_chain.tlog.store import EventTree
from dicom_chain.tlog.witnessing import WitnessHost, witness_name
from dicom_chain.vocab import EventType

BUNDLE_TYPE = "image-state"
BUNDLE_FORMAT = 1
MANIFEST_DOMAIN = b"DICOM_CHAIN bundle manifest v1\n"
# A block for the instance (its first, the same again, or a new version): what it is from this
# event on. A release from another institution is received as one too (its release.received
# event beside it names the sender's block).
RECEIPTS = frozenset({EventType.INSTANCE_RECEIVED})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProofError(f"{what} is not base64") from exc


def moment(text: str) -> datetime:
    """An ISO 8601 time (a Z or an offset; none means UTC), for comparing event times."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ProofError(f"{text!r} is not an ISO 8601 time") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# -- building --------------------------------------------------------------------------------


def build(host: WitnessHost, institution: str, uid: str, at: str | None = None) -> dict[str, Any]:
    """The bundle for the instance or study ``uid``, as the log stood at ``at`` (default: now);
    ProofError when the log names no such instance or study (before ``at``)."""
    limit = moment(at) if at else None
    with host.db.reading() as session:
        rows = session.execute(
            select(EVENTS)
            .where(or_(EVENTS.c.sop_uid == uid, EVENTS.c.study_uid == uid))
            .order_by(EVENTS.c.seq)
        ).all()
        study_uids = {r.study_uid for r in rows if r.study_uid}
        if study_uids:  # an instance's study-level events (releases, retrievals) concern it too
            rows = session.execute(
                select(EVENTS)
                .where(or_(EVENTS.c.sop_uid == uid, and_(EVENTS.c.study_uid.in_(study_uids))))
                .order_by(EVENTS.c.seq)
            ).all()
    events = [Event.from_stored(r._mapping) for r in rows]
    sop_uids = {e.sop_uid for e in events if e.type in RECEIPTS and e.sop_uid}
    if uid in sop_uids:
        sop_uids = {uid}
    events = [e for e in events if e.sop_uid in sop_uids or not e.sop_uid]
    if limit is not None:
        events = [e for e in events if moment(e.time) <= limit]
    if not any(e.type in RECEIPTS for e in events):
        when = f" by {at}" if at else ""
        raise ProofError(f"the log records no receipt of an instance or study {uid}{when}")
    block_hashes = {str(e.details.get("block_hash")) for e in events if e.type in RECEIPTS}
    blocks = _blocks(host, block_hashes)
    tree = EventTree(host.ledger)
    tree.grow()
    last = max(e.seq for e in events)
    published = _covering(host, last)
    if published is None:
        cp, signed = tree.checkpoint(host.key, institution)
        timestamp = None
    else:
        signed, timestamp = published
        cp = open_signed(signed, host.key.public_key)
    witnesses = [
        {"institution": i.name, "name": witness_name(i.key_id), "public_key": i.public_key.hex()}
        for i in Registry(host.ledger, None).all(include_removed=True)
    ]
    document = {
        "type": BUNDLE_TYPE,
        "format": BUNDLE_FORMAT,
        "subject": uid,
        "at": at,
        "public_key": host.key.public_key.hex(),
        "checkpoint": signed,
        "witnesses": witnesses,
        "timestamp": _b64(timestamp) if timestamp else None,
        "blocks": sorted(b.to_bytes().decode("utf-8") for b in blocks),
        "events": [
            {
                "seq": e.seq,
                "event": _b64(e.canonical_bytes()),
                "signature": e.signature.hex(),
                "proof": [_b64(p) for p in tree.inclusion(e.seq, cp.size).proof],
            }
            for e in events
        ],
    }
    document["manifest_signature"] = host.key.sign(MANIFEST_DOMAIN + manifest(document)).hex()
    return document


def manifest(document: dict[str, Any]) -> bytes:
    """What the log's key vouches for in a bundle: this subject, as at this time, is these blocks
    and these events (by sequence number), proved against this checkpoint. Leaving an event out,
    or adding another's, breaks the signature; and an event of the log naming the subject that is
    not listed is the log's own signed word against it."""
    blocks = sorted(Block.from_bytes(str(b).encode("utf-8")).hash for b in document["blocks"])
    body, _ = note.parse(document["checkpoint"])  # cosignatures gathered later may join it
    return canonjson.dumps({
        "subject": document["subject"], "at": document["at"], "checkpoint": body,
        "blocks": blocks, "events": [int(e["seq"]) for e in document["events"]],
    })  # fmt: skip


def _blocks(host: WitnessHost, hashes: set[str]) -> list[Block]:
    with host.db.reading() as session:
        rows = session.scalars(select(BlockRow).where(BlockRow.block_hash.in_(hashes))).all()
        return [Block.from_bytes(r.block.encode("utf-8")) for r in rows]


def _covering(host: WitnessHost, seq: int) -> tuple[str, bytes | None] | None:
    """The first published checkpoint whose tree holds event ``seq``."""
    with host.db.reading() as session:
        row = session.scalars(
            select(PublishedCheckpointRow)
            .where(PublishedCheckpointRow.size >= seq)
            .order_by(PublishedCheckpointRow.size)
            .limit(1)
        ).first()
        return (row.signed, row.timestamp) if row is not None else None


# -- checking (pure) -------------------------------------------------------------------------


@dataclass
class Checked:
    lines: list[str] = field(default_factory=list)  # what holds, in order
    problems: list[str] = field(default_factory=list)
    pinned: bool = False  # the log's key was given, not read from the bundle
    checkpoint: Checkpoint | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check(
    document: dict[str, Any],
    public_key: bytes | None = None,
    image: Carried | None = None,
    tsa_certificate: bytes | None = None,
    witnesses: Sequence[bytes] = (),
    quorum: int = 0,
) -> Checked:
    """``witnesses``: the public keys of the witnesses the verifier trusts (the bundle's own list
    is only who the log says they are); ``quorum`` of them must have cosigned the checkpoint."""
    out = Checked(pinned=public_key is not None)
    try:
        _check(document, public_key, image, tsa_certificate, out, list(witnesses), quorum)
    except (DicomChainError, KeyError, TypeError, ValueError) as exc:
        out.problems.append(f"bundle unreadable or broken: {exc}")
    return out


def _check(
    doc: dict[str, Any],
    public_key: bytes | None,
    image: Carried | None,
    tsa: bytes | None,
    out: Checked,
    witnesses: list[bytes],
    quorum: int,
) -> None:
    if doc.get("type") != BUNDLE_TYPE or doc.get("format") != BUNDLE_FORMAT:
        raise ProofError(f"not an {BUNDLE_TYPE} bundle of format {BUNDLE_FORMAT}")
    key = public_key if public_key is not None else bytes.fromhex(doc["public_key"])
    if public_key is not None and doc.get("public_key") != public_key.hex():
        out.problems.append("the bundle names another log key than the one given")
    try:
        cp = open_signed(doc["checkpoint"], key)
    except NoteError as exc:
        out.problems.append(f"checkpoint: {exc}")
        return
    out.checkpoint = cp
    out.lines.append(f"checkpoint of {cp.origin} at size {cp.size}, signed by the log's key")
    try:
        verify_signature(key, bytes.fromhex(doc["manifest_signature"]), MANIFEST_DOMAIN + manifest(doc))
    except DicomChainError as exc:
        out.problems.append(f"the bundle's manifest (its subject, blocks and events) is not the log's: {exc}")
    said = {str(w.get("public_key")): str(w.get("institution")) for w in doc.get("witnesses") or []}
    cosigners = 0
    for public in witnesses:
        name = witness_name(key_id_for(public))
        try:
            when = cosignature.verify(doc["checkpoint"], name, public)
        except NoteError:
            continue
        cosigners += 1
        out.lines.append(f"cosigned by {said.get(public.hex(), 'a pinned witness')} ({name}) at {_utc(when)}")
    if quorum and cosigners < quorum:
        out.problems.append(f"{cosigners} pinned witness(es) cosigned the checkpoint, {quorum} needed")
    elif not witnesses and doc.get("witnesses"):
        out.lines.append("witnesses not checked: give their keys (--witness) to count their cosignatures")
    if doc.get("timestamp") and tsa is not None:
        from dicom_chain.tlog.timestamps import check_token

        try:
            stamp_ = check_token(
                _unb64(doc["timestamp"], "timestamp"), doc["checkpoint"].encode("utf-8"), tsa
            )
            out.lines.append(f"timestamped by {stamp_.tsa} at {stamp_.time.isoformat()}")
        except DicomChainError as exc:
            out.problems.append(f"timestamp: {exc}")
    events = _events(doc["events"], key, cp, out)
    blocks = {}
    for text in doc["blocks"]:
        block = Block.from_bytes(text.encode("utf-8"))
        try:
            block.verify_signature(frozenset({key}))
        except DicomChainError as exc:
            out.problems.append(f"block {block.hash[:16]}: {exc}")
            continue
        blocks[block.hash] = block
    _bound(doc, events, blocks, out)
    _timeline(events, blocks, out)
    if image is not None:
        _image(image, events, blocks, out)


def _utc(seconds: int) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{seconds} (out of range)"


def _events(entries: list[dict[str, Any]], key: bytes, cp: Checkpoint, out: Checked) -> list[Event]:
    events = []
    for entry in entries:
        seq = int(entry["seq"])
        raw = _unb64(entry["event"], f"event {seq}")
        proof = [_unb64(p, f"event {seq}'s proof") for p in entry["proof"]]
        if not merkle.verify_inclusion(seq - 1, cp.size, merkle.leaf_hash(raw), proof, cp.root):
            out.problems.append(f"event {seq} is not in the log the checkpoint commits to (changed?)")
            continue
        body = json.loads(raw)
        event = Event.from_stored({**body, "public_key": key.hex(), "signature": entry["signature"]})
        if event.seq != seq or event.canonical_bytes() != raw:
            out.problems.append(f"event {seq}: its bytes are not its canonical form")
            continue
        try:
            event.verify_signature()
        except DicomChainError as exc:
            out.problems.append(f"event {seq}: {exc}")
            continue
        events.append(event)
    out.lines.append(f"{len(events)} of {len(entries)} events in the log and signed by its key")
    return sorted(events, key=lambda e: e.seq)


def _bound(doc: dict[str, Any], events: list[Event], blocks: dict[str, Block], out: Checked) -> None:
    """Every block and event is of the subject: its instance, or an instance of its study, or
    its study's own (study-level) events; and none is later than ``at``."""
    subject = str(doc.get("subject") or "")
    instances = {b.header.item_id for b in blocks.values()}
    studies = {b.header.group_id for b in blocks.values()}
    if subject not in instances and studies != {subject}:
        out.problems.append(f"the blocks are not of {subject}")
    limit = moment(str(doc["at"])) if doc.get("at") else None
    for e in events:
        if (e.sop_uid and e.sop_uid not in instances) or e.study_uid not in studies:
            out.problems.append(f"event {e.seq} ({e.type}) is of another instance or study")
        if limit is not None and moment(e.time) > limit:
            out.problems.append(f"event {e.seq} is later than the bundle's time {doc['at']}")


def _timeline(events: list[Event], blocks: dict[str, Block], out: Checked) -> None:
    """Each instance's block from receipt on, and each later event checked against it."""
    current: dict[str, str] = {}  # SOP Instance UID -> block hash in force
    for e in events:
        named = str(e.details.get("block_hash") or "")
        if e.type in RECEIPTS:
            block = blocks.get(named)
            if block is None:
                out.problems.append(f"event {e.seq} ({e.type}) names block {named[:16]}, not in the bundle")
                continue
            if block.header.item_id != e.sop_uid:
                out.problems.append(f"event {e.seq}: block {named[:16]} is of another instance")
                continue
            before = current.get(e.sop_uid)
            what = "received" if before is None else ("received again" if before == named else "new version")
            current[e.sop_uid] = named
            out.lines.append(
                f"{e.time}  event {e.seq} {e.type}: {e.sop_uid} {what}, content {block.header.content_hash}"
            )
        elif e.sop_uid:
            held = current.get(e.sop_uid)
            if held is None:
                out.problems.append(f"event {e.seq} ({e.type}) names {e.sop_uid} before any receipt")
            elif named and named != held:
                out.problems.append(f"event {e.seq} ({e.type}) names block {named[:16]}, not {held[:16]}")
            else:
                content = blocks[held].header.content_hash
                out.lines.append(f"{e.time}  event {e.seq} {e.type}: {e.sop_uid} still content {content}")
        else:  # a study-level event (a release, a retrieval): the instances as they stand
            held = f"{len(current)} instance(s), each with the content of its block above"
            out.lines.append(f"{e.time}  event {e.seq} {e.type} of the study: {held}")


def _image(image: Carried, events: list[Event], blocks: dict[str, Block], out: Checked) -> None:
    """The file is the content the bundle's last block of its instance covers."""
    latest: dict[str, str] = {}
    for e in events:
        if e.type in RECEIPTS and str(e.details.get("block_hash")) in blocks:
            latest[e.sop_uid] = str(e.details["block_hash"])
    item_id = image.item_id_hint
    candidates = [latest[item_id]] if item_id in latest else list(latest.values())
    for block_hash in candidates:
        try:
            image.check_content(blocks[block_hash])
        except DicomChainError:
            continue
        out.lines.append(f"the image file is the content of block {block_hash[:16]}: unchanged")
        return
    out.problems.append(
        f"the image file ({item_id or 'unknown instance'}) is not the content the log recorded"
    )
