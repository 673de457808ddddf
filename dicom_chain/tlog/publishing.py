"""Publishing our log's checkpoints: a quorum of the institutions we share with cosigns each.

A round: grow the tree and sign a checkpoint; ask each witness (a registered institution with a
log address) to cosign it, proving consistency from the size that witness last cosigned (kept in
``log_cosignatures``; the witness answers with its own when ours is stale, and the request is made
again from there); keep each cosignature that verifies under the witness's registered key; and,
with at least ``quorum`` of them, publish: the checkpoint with every cosignature is what
``/log/checkpoint`` serves, what releases carry, and what ``prove`` bundles cite. Below the quorum
nothing is published and the previous checkpoint stands. The asking (HTTP) is the edge's
(web/publish.py); this module makes the requests and judges the answers. No network here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select

from dicom_chain.block import utc_now
from dicom_chain.db.models import LogCosignatureRow, PublishedCheckpointRow
from dicom_chain.errors import NoteError
from dicom_chain.sharing.registry import Institution, Registry
from dicom_chain.tlog import cosignature, note
from dicom_chain.tlog.checkpoint import Checkpoint
from dicom_chain.tlog.store import EventTree
from dicom_chain.tlog.witness import format_request
from dicom_chain.tlog.witnessing import WitnessHost, witness_name


@dataclass(frozen=True)
class Published:
    size: int
    signed: str  # our signature and the cosignatures
    cosigners: int
    published_at: str
    timestamp: bytes | None = None


class Publisher:
    def __init__(self, host: WitnessHost, institution: str, quorum: int) -> None:
        """``institution``: our own name, in our checkpoints' origin; ``quorum``: cosignatures needed."""
        self.host = host
        self.institution = institution
        self.quorum = quorum
        self.tree = EventTree(host.ledger)

    def witnesses(self) -> list[Institution]:
        """The registered institutions whose node we can ask: those with a log address."""
        return [i for i in Registry(self.host.ledger, None).all() if i.log_url]

    def checkpoint(self) -> tuple[Checkpoint, str]:
        return self.tree.checkpoint(self.host.key, self.institution)

    def last_cosigned(self, witness: Institution) -> int:
        with self.host.db.reading() as session:
            row = session.get(LogCosignatureRow, witness.name)
            return row.size if row is not None else 0

    def request(self, cp: Checkpoint, signed: str, old_size: int) -> bytes:
        """The add-checkpoint body proving ``cp`` extends our log at ``old_size``."""
        if not 0 <= old_size <= cp.size:
            raise NoteError(f"a witness's size {old_size} is beyond our checkpoint's {cp.size}")
        return format_request(old_size, self.tree.consistency(old_size, cp.size), signed)

    def accept(self, witness: Institution, cp: Checkpoint, signed: str, answer: str) -> note.Signature:
        """The witness's cosignature in ``answer`` (its response body: signature lines), once it
        verifies under the witness's registered key; kept as what it last cosigned."""
        name = witness_name(witness.key_id)
        try:
            _, lines = note.parse(cp.body() + "\n" + answer)
        except NoteError as exc:
            raise NoteError(f"{witness.name} answered no cosignature: {exc}") from exc
        wanted = cosignature.key_id(name, witness.public_key)
        ours = [s for s in lines if s.name == name and s.key_id == wanted]
        if not ours:
            raise NoteError(f"{witness.name} answered no cosignature of its key")
        cosignature.verify(note.add_signature(signed, ours[0]), name, witness.public_key)
        with self.host.db.writing() as session:
            row = session.get(LogCosignatureRow, witness.name)
            if row is None:
                session.add(LogCosignatureRow(
                    witness=witness.name, size=cp.size, line=ours[0].line(), updated_at=utc_now(),
                ))  # fmt: skip
            elif row.size <= cp.size:
                row.size, row.line, row.updated_at = cp.size, ours[0].line(), utc_now()
        return ours[0]

    def publish(self, cp: Checkpoint, signed: str, cosignatures: list[note.Signature]) -> Published | None:
        """The checkpoint with its cosignatures, kept and returned if they reach the quorum."""
        if len(cosignatures) < self.quorum:
            return None
        for line in cosignatures:
            signed = note.add_signature(signed, line)
        now = utc_now()
        with self.host.db.writing() as session:
            row = session.get(PublishedCheckpointRow, cp.size)
            if row is None:
                session.add(PublishedCheckpointRow(
                    size=cp.size, signed=signed, cosigners=len(cosignatures), published_at=now,
                ))  # fmt: skip
            elif len(cosignatures) > row.cosigners:
                row.signed, row.cosigners, row.published_at = signed, len(cosignatures), now
        return Published(cp.size, signed, len(cosignatures), now)


def latest_published(host: WitnessHost) -> Published | None:
    """Our newest published checkpoint (None: none reached a quorum yet)."""
    with host.db.reading() as session:
        row = session.scalars(
            select(PublishedCheckpointRow).order_by(PublishedCheckpointRow.size.desc()).limit(1)
        ).first()
        if row is None:
            return None
        return Published(row.size, row.signed, row.cosigners, row.published_at, row.timestamp)


def keep_timestamp(host: WitnessHost, size: int, token: bytes) -> None:
    """An RFC 3161 token (tlog/timestamps.py) on the published checkpoint of ``size``."""
    with host.db.writing() as session:
        row = session.get(PublishedCheckpointRow, size)
        if row is None:
            raise NoteError(f"no published checkpoint of size {size}")
        row.timestamp = token


def carried_request(host: WitnessHost, institution: str, receiver: Institution) -> str:
    """What a release to ``receiver`` carries (JSON): ``request``, an add-checkpoint body with our
    newest published checkpoint (a new one of our own when none is), proved consistent from the
    size the receiver last saw of our log; and ``old``, our checkpoint at that size signed now,
    which the receiver compares with the one it holds when the proof fails (tlog/witness.py)."""
    published = latest_published(host)
    tree = EventTree(host.ledger)
    if published is not None:
        signed = published.signed
        cp = Checkpoint.parse(note.parse(signed)[0])
    else:
        cp, signed = tree.checkpoint(host.key, institution)
    publisher = Publisher(host, institution, quorum=0)
    seen = publisher.last_cosigned(receiver)
    old = seen if seen <= cp.size else 0
    request = publisher.request(cp, signed, old).decode("utf-8")
    at_old = Checkpoint(cp.origin, old, tree.root(old)).sign(host.key) if old else ""
    return json.dumps({"request": request, "old": at_old})


def carried_to(host: WitnessHost, receiver: Institution, carried: str) -> None:
    """The receiver accepted instances carrying ``carried``: it has seen our log at that size,
    and the next release proves consistency from there (a witness's cosignature, if one comes
    later over HTTPS, is kept in the same row)."""
    from dicom_chain.tlog.witness import parse_request

    _, _, signed = parse_request(json.loads(carried)["request"].encode("utf-8"))
    size = Checkpoint.parse(note.parse(signed)[0]).size
    with host.db.writing() as session:
        row = session.get(LogCosignatureRow, receiver.name)
        if row is None:
            session.add(LogCosignatureRow(witness=receiver.name, size=size, line="", updated_at=utc_now()))
        elif row.size < size:
            row.size, row.line, row.updated_at = size, "", utc_now()  # seen, not cosigned
