"""Witness cosignatures (c2sp.org/tlog-cosignature, Ed25519 type): a cosigner's statement that, as
of its timestamp, this checkpoint is the largest consistent one it has seen of the log.

The signed message is ``cosignature/v1``, ``time <POSIX seconds>`` (each on its line) and the
checkpoint's body; the note signature is the key ID (SHA-256(name || 0x0A || 0x04 || public
key)[:4]), the timestamp as a big-endian u64 and the Ed25519 signature. Pure: no I/O.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dicom_chain.errors import NoteError
from dicom_chain.keys import NodeKey
from dicom_chain.tlog import note

COSIGNATURE_V1 = 0x04  # c2sp.org/signed-note, signature types
MAX_TIMESTAMP = 2**63 - 1


def key_id(name: str, public_key: bytes) -> bytes:
    return note.key_id(name, public_key, COSIGNATURE_V1)


def _message(body: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{body}".encode()


def cosign(body: str, name: str, key: NodeKey, timestamp: int) -> note.Signature:
    """The cosignature line of ``key`` (named ``name``) on the checkpoint whose body is ``body``."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature time {timestamp} out of range")
    signature = key.private_key.sign(_message(body, timestamp))
    return note.Signature(name, key_id(name, key.public_key), struct.pack(">Q", timestamp) + signature)


def verify(signed: str, name: str, public_key: bytes) -> int:
    """The time of ``name``'s cosignature on the checkpoint note ``signed``; NoteError if there is
    none from that key, or it does not verify."""
    body, signatures = note.parse(signed)
    wanted = key_id(name, public_key)
    ours = [s for s in signatures if s.name == name and s.key_id == wanted]
    if not ours:
        raise NoteError(f"not cosigned by {name} (key ID {wanted.hex()})")
    times = []
    for s in ours:
        if len(s.signature) != 8 + 64:
            raise NoteError(f"cosignature of {name} is not a timestamped Ed25519 signature")
        (timestamp,) = struct.unpack(">Q", s.signature[:8])
        if timestamp > MAX_TIMESTAMP:
            raise NoteError(f"cosignature time of {name} out of range")
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(s.signature[8:], _message(body, timestamp))
        except InvalidSignature as exc:
            raise NoteError(f"cosignature of {name} does not verify") from exc
        times.append(timestamp)
    return max(times)
