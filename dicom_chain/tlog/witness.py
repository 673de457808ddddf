"""A witness: keeps the latest checkpoint it has seen of each log it knows, cosigns a newer one
only with a valid consistency proof from it, and keeps the evidence when a log shows two
histories (c2sp.org/tlog-witness semantics, without the transport).

Pure: the state (what was last seen of each log) comes in and goes out; where it is stored, and
how requests arrive, is the caller's. The evidence of a split view is two checkpoints the log
signed that no consistency proof joins: anyone with the log's public key checks it offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dicom_chain.errors import NoteError
from dicom_chain.keys import NodeKey
from dicom_chain.tlog import cosignature, merkle, note
from dicom_chain.tlog.checkpoint import Checkpoint, open_signed


@dataclass(frozen=True)
class Seen:
    """The latest consistent checkpoint of one log, as the witness cosigned it."""

    size: int
    root: bytes
    signed: str  # the log's signed note, as received


@dataclass(frozen=True)
class Outcome:
    kind: Literal["cosigned", "conflict", "refused", "split-view"]
    reason: str = ""
    seen: Seen | None = None  # cosigned: the new state; conflict: the state the caller must prove from
    cosignature: note.Signature | None = None
    evidence: tuple[str, str] | None = None  # split view: the two signed checkpoints


class Witness:
    def __init__(self, name: str, key: NodeKey, logs: dict[str, bytes]) -> None:
        """``logs``: origin -> the log's public key, for every log this witness watches."""
        self.name = name
        self.key = key
        self.logs = logs

    def add_checkpoint(
        self, seen: Seen | None, old_size: int, proof: list[bytes], signed: str, now: int
    ) -> Outcome:
        """Judge ``signed`` (a checkpoint note), offered with a consistency proof from ``old_size``,
        given what was last ``seen`` of its log."""
        try:
            text, _ = note.parse(signed)
            origin = Checkpoint.parse(text).origin
        except NoteError as exc:
            return Outcome("refused", f"not a checkpoint: {exc}")
        public_key = self.logs.get(origin)
        if public_key is None:
            return Outcome("refused", f"unknown log {origin}")
        try:
            cp = open_signed(signed, public_key, origin)
        except NoteError as exc:
            return Outcome("refused", f"checkpoint of {origin} not signed by its key: {exc}")
        last = seen or Seen(0, merkle.EMPTY_ROOT, "")
        if old_size != last.size:
            return Outcome("conflict", f"the witness's latest size of {origin} is {last.size}", seen=last)
        if cp.size < last.size:
            return Outcome("refused", f"checkpoint of size {cp.size} is older than {last.size}")
        if cp.size == last.size and cp.root != last.root and last.signed:
            return Outcome(
                "split-view", f"{origin} signed two roots at size {cp.size}", evidence=(last.signed, signed)
            )
        if not merkle.verify_consistency(last.size, cp.size, proof, last.root, cp.root):
            if last.signed:
                return Outcome(
                    "split-view",
                    f"{origin} at {cp.size} does not extend what it showed at {last.size}",
                    evidence=(last.signed, signed),
                )
            return Outcome("refused", "invalid consistency proof")
        line = cosignature.cosign(text, self.name, self.key, now)
        return Outcome("cosigned", seen=Seen(cp.size, cp.root, signed), cosignature=line)
