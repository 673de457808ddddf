"""Checking a proof document offline, with only the log's public key (``log verify-proof``).

An inclusion proof holds a signed checkpoint, the event's canonical bytes, its index and the
RFC 9162 path; a consistency proof, two signed checkpoints and the RFC's proof between them.
Pure: a parsed document and a key in, a one-line summary out, or NoteError / ProofError.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from dicom_chain.errors import ProofError
from dicom_chain.tlog import merkle
from dicom_chain.tlog.checkpoint import open_signed


def _hashes(values: Any) -> list[bytes]:
    if not isinstance(values, list):
        raise ProofError("proof is not a list of hashes")
    try:
        out = [base64.b64decode(v, validate=True) for v in values]
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ProofError("proof hashes are not base64") from exc
    if any(len(h) != merkle.HASH_SIZE for h in out):
        raise ProofError("proof hashes are 32 bytes")
    return out


def check_proof(document: dict[str, Any], public_key: bytes) -> str:
    kind = document.get("type")
    if kind == "inclusion":
        cp = open_signed(document["checkpoint"], public_key)
        index, size = int(document["index"]), int(document["size"])
        if size != cp.size:
            raise ProofError(f"proof is for a tree of {size}, the checkpoint's has {cp.size}")
        event = base64.b64decode(document["event"], validate=True)
        if not merkle.verify_inclusion(
            index, size, merkle.leaf_hash(event), _hashes(document["proof"]), cp.root
        ):
            raise ProofError(f"event {index + 1} is not in {cp.origin}'s log of {size} (inclusion fails)")
        what = json.loads(event)
        return (
            f"event {index + 1} ({what.get('type', '?')}, {what.get('time', '?')}) is in "
            f"{cp.origin}'s log at size {size}"
        )
    if kind == "consistency":
        old, new = open_signed(document["old"], public_key), open_signed(document["new"], public_key)
        if old.origin != new.origin:
            raise ProofError("the two checkpoints are of different logs")
        if not merkle.verify_consistency(old.size, new.size, _hashes(document["proof"]), old.root, new.root):
            what = f"{old.origin}'s log at {new.size} does not extend its log at {old.size}"
            raise ProofError(f"{what}: history was rewritten")
        return (
            f"{old.origin}'s log at size {new.size} extends it at size {old.size}: nothing before was changed"
        )
    if kind == "split-view":  # a witness's evidence (tlog/witnessing.py)
        old, new = open_signed(document["old"], public_key), open_signed(document["new"], public_key)
        if old.origin != new.origin:
            raise ProofError("the two checkpoints are of different logs")
        if old.size != new.size:  # a proof that fails between two sizes may be anyone's mistake
            raise ProofError("split-view evidence is two checkpoints of one size")
        if old.root == new.root:
            raise ProofError("the two checkpoints agree: no split view")
        return f"{old.origin} signed two histories: two roots at size {old.size}"
    raise ProofError(f"unknown proof type {kind!r}")
