"""Signed notes (c2sp.org/signed-note): text signed by Ed25519 keys, one signature line each.

A note is its text (ending in a newline), a blank line, then lines ``— <key name> <base64(key
ID || signature)>``. The key ID is the first four bytes of SHA-256(key name || 0x0A || 0x01 ||
public key), 0x01 naming Ed25519 (the spec's signature type), and the signature is Ed25519 over
the text's UTF-8 bytes. Verifiers ignore lines from keys they do not know, and refuse a note if
no known key's signature verifies or any known key's fails. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dicom_chain.errors import NoteError
from dicom_chain.keys import NodeKey

ED25519 = 0x01  # c2sp.org/signed-note, signature types
EM_DASH = "\u2014"
MAX_SIGNATURES = 64  # the spec asks verifiers to take at least 16; a bound keeps a note small
_SIGNATURE_SIZE = 64


def key_id(name: str, public_key: bytes, kind: int = ED25519) -> bytes:
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([kind]) + public_key).digest()[:4]


def vkey(name: str, public_key: bytes) -> str:
    """The verifier key as Go's note package and the transparency tooling write it."""
    blob = base64.b64encode(bytes([ED25519]) + public_key).decode("ascii")
    return f"{name}+{key_id(name, public_key).hex()}+{blob}"


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes  # what follows the key ID: for Ed25519, 64 bytes

    def line(self) -> str:
        return f"{EM_DASH} {self.name} {base64.b64encode(self.key_id + self.signature).decode('ascii')}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text ends in a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("a note holds no control character but newline")


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError(f"key name {name!r}: non-empty, no spaces, no '+'")


def sign(text: str, name: str, key: NodeKey) -> str:
    """``text`` signed by ``key`` under ``name``: the whole note."""
    _check_text(text)
    _check_name(name)
    signature = Signature(name, key_id(name, key.public_key), key.private_key.sign(text.encode("utf-8")))
    return text + "\n" + signature.line()


def add_signature(note: str, signature: Signature) -> str:
    """``note`` with one more signature line (a cosignature)."""
    text, signatures = parse(note)
    if any((s.name, s.key_id) == (signature.name, signature.key_id) for s in signatures):
        return note
    return text + "\n" + "".join(s.line() for s in [*signatures, signature])


def parse(note: str) -> tuple[str, list[Signature]]:
    """The text and the signature lines; NoteError for anything not shaped as the spec says."""
    if "\n\n" not in note or not note.endswith("\n"):
        raise NoteError("not a signed note: no blank line before signatures, or no final newline")
    at = note.rindex("\n\n")
    text, block = note[: at + 1], note[at + 2 :]
    _check_text(text)
    signatures = []
    for line in block[:-1].split("\n"):  # newline only: no CR (Go's note refuses "\r\n" lines too)
        if not line.startswith(EM_DASH + " "):
            raise NoteError("a signature line starts with an em dash and a space")
        parts = line[2:].split(" ")
        if len(parts) != 2:
            raise NoteError("a signature line is a key name and a signature")
        name, encoded = parts
        _check_name(name)
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise NoteError("a signature is not base64") from exc
        if len(raw) < 5:
            raise NoteError("a signature is a key ID and more")
        signatures.append(Signature(name, raw[:4], raw[4:]))
    if not signatures or len(signatures) > MAX_SIGNATURES:
        raise NoteError(f"a note has 1 to {MAX_SIGNATURES} signatures")
    return text, signatures


def verify(note: str, name: str, public_key: bytes) -> str:
    """The note's text, if ``public_key`` (under ``name``) signed it; NoteError otherwise."""
    text, signatures = parse(note)
    wanted = key_id(name, public_key)
    ours = [s for s in signatures if s.name == name and s.key_id == wanted]
    if not ours:
        raise NoteError(f"not signed by {name} (key ID {wanted.hex()})")
    verifier = Ed25519PublicKey.from_public_bytes(public_key)
    for s in ours:
        if len(s.signature) != _SIGNATURE_SIZE:
            raise NoteError(f"signature of {name} is not an Ed25519 signature")
        try:
            verifier.verify(s.signature, text.encode("utf-8"))
        except InvalidSignature as exc:
            raise NoteError(f"signature of {name} does not verify") from exc
    return text
