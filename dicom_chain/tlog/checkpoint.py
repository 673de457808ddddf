"""Checkpoints (c2sp.org/tlog-checkpoint): the log's origin, size and root, as a signed note.

The body is three lines, each ending in a newline: the origin (the log's name: here
``<node's key ID>.dicom-chain/<institution>``, with spaces as ``_``), the tree size in decimal,
and the root hash in base64; extension lines may follow (none are written). The note's signer is
the node's key under the origin as key name (tlog/note.py), so transparency tooling that reads
checkpoints reads ours.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from dicom_chain.errors import NoteError
from dicom_chain.keys import NodeKey
from dicom_chain.tlog import note

DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")  # a tree size: ASCII digits (str.isdigit takes "²", "١")


def origin_for(key: NodeKey, institution: str) -> str:
    name = re.sub(r"[\s+]+", "_", institution.strip()) or "node"
    return f"{key.key_id}.dicom-chain/{name}"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return "".join(line + "\n" for line in lines)

    def sign(self, key: NodeKey) -> str:
        return note.sign(self.body(), self.origin, key)

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        lines = body.split("\n")
        if len(lines) < 4 or lines[-1] != "" or not lines[0]:
            raise NoteError("a checkpoint is an origin, a size and a root hash, each on its line")
        origin, size, root, *extensions = lines[:-1]
        if not DECIMAL.fullmatch(size):
            raise NoteError(f"checkpoint size {size!r} is not a decimal number")
        try:
            raw = base64.b64decode(root, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise NoteError("checkpoint root hash is not base64") from exc
        if len(raw) != 32:
            raise NoteError("checkpoint root hash is not 32 bytes")
        if any(not line for line in extensions):
            raise NoteError("a checkpoint has no empty line")
        return cls(origin, int(size), raw, tuple(extensions))


def open_signed(signed: str, public_key: bytes, origin: str | None = None) -> Checkpoint:
    """The checkpoint a signed note holds, once the key (under the checkpoint's own origin, or
    ``origin`` when given) verifies it; NoteError otherwise."""
    text, _ = note.parse(signed)
    checkpoint = Checkpoint.parse(text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint of {checkpoint.origin}, not of {origin}")
    note.verify(signed, checkpoint.origin, public_key)
    return checkpoint
