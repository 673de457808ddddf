"""A witness: keeps the latest checkpoint it has seen of each log it knows, cosigns a newer one
only with a valid consistency proof from it, and keeps the evidence when a log shows two
histories (c2sp.org/tlog-witness semantics, without the transport).

Pure: the state (what was last seen of each log) comes in and goes out; where it is stored, and
how requests arrive, is the caller's. The evidence of a split view is two checkpoints the log
signed that no consistency proof joins: anyone with the log's public key checks it offline.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from dicom_chain.errors import NoteError
from dicom_chain.keys import NodeKey
from dicom_chain.tlog import cosignature, merkle, note
from dicom_chain.tlog.checkpoint import DECIMAL, Checkpoint, open_signed


@dataclass(frozen=True)
class Seen:
    """The latest consistent checkpoint of one log, as the witness cosigned it."""

    size: int
    root: bytes
    signed: str  # the log's signed note, as received


# What a witness answers, and the status c2sp.org/tlog-witness gives each over HTTP.
Kind = Literal["cosigned", "conflict", "malformed", "unknown-log", "bad-signature", "bad-proof", "split-view"]
HTTP_STATUS: dict[str, int] = {
    "cosigned": 200,
    "malformed": 400,  # not a checkpoint, or an old size beyond it
    "bad-signature": 403,  # no signature of the log's key verifies
    "unknown-log": 404,
    "conflict": 409,  # the old size is not the witness's: the body says which is
    "split-view": 422,  # a proof that fails what the witness cosigned (409 for two roots at one size)
    "bad-proof": 422,
}


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    reason: str = ""
    seen: Seen | None = None  # cosigned: the new state; conflict: the state the caller must prove from
    cosignature: note.Signature | None = None
    evidence: tuple[str, str] | None = None  # split view: the two signed checkpoints
    status: int = 0  # the HTTP status, when not the kind's (HTTP_STATUS)

    @property
    def http_status(self) -> int:
        return self.status or HTTP_STATUS[self.kind]


class Witness:
    def __init__(self, name: str, key: NodeKey, logs: dict[str, bytes]) -> None:
        """``logs``: origin -> the log's public key, for every log this witness watches."""
        self.name = name
        self.key = key
        self.logs = logs

    def add_checkpoint(
        self,
        seen: Seen | None,
        old_size: int,
        proof: list[bytes],
        signed: str,
        now: int,
        at_old: Callable[[int], str | None] | None = None,
    ) -> Outcome:
        """Judge ``signed`` (a checkpoint note), offered with a consistency proof from ``old_size``,
        given what was last ``seen`` of its log.

        A proof that fails accuses nobody by itself: anyone may offer a log's public checkpoint
        with a wrong proof. ``at_old`` asks the log for its own signed checkpoint at the size last
        seen (over its API, or as a release carried it); a root that differs from the one
        cosigned there is two roots the log signed at one size, evidence anyone checks offline.
        The same root means only the proof was wrong: ``bad-proof``, and nothing recorded."""
        try:
            text, _ = note.parse(signed)
            origin = Checkpoint.parse(text).origin
        except NoteError as exc:
            return Outcome("malformed", f"not a checkpoint: {exc}")
        public_key = self.logs.get(origin)
        if public_key is None:
            return Outcome("unknown-log", f"unknown log {origin}")
        try:
            cp = open_signed(signed, public_key, origin)
        except NoteError as exc:
            return Outcome("bad-signature", f"checkpoint of {origin} not signed by its key: {exc}")
        if not 0 <= old_size <= cp.size:
            return Outcome("malformed", f"old size {old_size} is beyond the checkpoint's {cp.size}")
        last = seen or Seen(0, merkle.EMPTY_ROOT, "")
        if old_size != last.size:
            return Outcome("conflict", f"the witness's latest size of {origin} is {last.size}", seen=last)
        if cp.size == last.size and cp.root != last.root and last.signed:
            return Outcome(
                "split-view",
                f"{origin} signed two roots at size {cp.size}",
                evidence=(last.signed, signed),
                status=409,  # the spec's status for a root that differs at the cosigned size
            )
        if cp.size == last.size and cp.root != last.root:  # nothing cosigned yet: size 0, not empty
            return Outcome("conflict", f"a tree of {cp.size} has the empty tree's root", seen=last)
        if not merkle.verify_consistency(last.size, cp.size, proof, last.root, cp.root):
            again = at_old(last.size) if at_old is not None and last.signed else None
            if again:
                try:
                    then = open_signed(again, public_key, origin)
                except NoteError:
                    then = None
                if then is not None and then.size == last.size and then.root != last.root:
                    return Outcome(
                        "split-view",
                        f"{origin} at {cp.size} does not extend what it showed at {last.size}: "
                        f"it now signs another root at {last.size}",
                        evidence=(last.signed, again),
                    )
            return Outcome("bad-proof", "invalid consistency proof")
        line = cosignature.cosign(text, self.name, self.key, now)
        return Outcome("cosigned", seen=Seen(cp.size, cp.root, signed), cosignature=line)


# -- c2sp.org/tlog-witness add-checkpoint: the request body -----------------------------------

MAX_PROOF_LINES = 63  # the spec's bound: a proof between two 64-bit sizes needs fewer
MAX_REQUEST_BYTES = 64 * 1024  # an old size, 63 hashes and a checkpoint with its signatures fit in far less


def format_request(old_size: int, proof: list[bytes], signed: str) -> bytes:
    """``old <size>``, the proof's hashes in base64 one a line, a blank line, the signed note."""
    lines = [f"old {old_size}", *(base64.b64encode(p).decode("ascii") for p in proof)]
    return ("".join(line + "\n" for line in lines) + "\n" + signed).encode("utf-8")


def parse_request(body: bytes) -> tuple[int, list[bytes], str]:
    """The old size, proof and signed note of a request; NoteError for anything else."""
    if len(body) > MAX_REQUEST_BYTES:
        raise NoteError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError("request is not UTF-8") from exc
    head, blank, signed = text.partition("\n\n")
    lines = head.split("\n")
    if not blank or not lines[0].startswith("old "):
        raise NoteError("request starts 'old <size>', then the proof, a blank line and the checkpoint")
    size = lines[0][4:]
    if not DECIMAL.fullmatch(size):
        raise NoteError(f"old size {size!r} is not a decimal number")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise NoteError(f"a consistency proof has at most {MAX_PROOF_LINES} hashes")
    try:
        proof = [base64.b64decode(line, validate=True) for line in lines[1:]]
    except (binascii.Error, ValueError) as exc:
        raise NoteError("proof hashes are base64") from exc
    if any(len(p) != merkle.HASH_SIZE for p in proof):
        raise NoteError("proof hashes are 32 bytes")
    return int(size), proof, signed
