"""The proof an export carries: what range of the event log it covers, signed by the node.

Pure: the exporter feeds every event of the range in sequence order, as exported or skipped
(filtered out: only its sequence number and hash go into the proof); the statement then names
the range, its first and last hashes, the ledger head it was cut from, digests of the export
file and of the skipped list, and is signed with the node's Ed25519 key. ``audit verify`` redoes
all of it from the files alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dicom_chain import canonjson
from dicom_chain.errors import AuditExportError
from dicom_chain.keys import NodeKey, key_id_for, verify_signature

PROOF_DOMAIN = b"DICOM_CHAIN audit export v1\n"
PROOF_VERSION = 1


def skipped_line(seq: int, event_hash: str) -> str:
    return json.dumps({"skipped": [seq, event_hash]}, separators=(",", ":"))


@dataclass
class RangeTracker:
    """Follows the exported range: first/last event, the link into it, the skipped digest."""

    count: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_hash: str = ""
    last_hash: str = ""
    prev_hash: str = ""  # the previous-event hash of the first exported event
    skipped_count: int = 0
    _skipped: Any = field(default_factory=hashlib.sha256)

    def exported(self, seq: int, event_hash: str, prev_hash: str) -> None:
        if self.first_seq is None:
            self.first_seq, self.first_hash, self.prev_hash = seq, event_hash, prev_hash
        self.count += 1
        self.last_seq, self.last_hash = seq, event_hash

    def skipped(self, seq: int, event_hash: str) -> None:
        self.skipped_count += 1
        self._skipped.update(f"{seq} {event_hash}\n".encode("ascii"))

    @property
    def skipped_sha256(self) -> str:
        return self._skipped.hexdigest()


def statement(
    tracker: RangeTracker,
    *,
    fmt: str,
    filters: dict[str, Any],
    file_name: str,
    file_sha256: str,
    head: tuple[int, str],
    exported_at: str,
    exported_by: str,
) -> dict[str, Any]:
    return {
        "version": PROOF_VERSION,
        "format": fmt,
        "file": file_name,
        "file_sha256": file_sha256,
        "filters": filters,
        "count": tracker.count,
        "first_seq": tracker.first_seq,
        "last_seq": tracker.last_seq,
        "first_hash": tracker.first_hash,
        "last_hash": tracker.last_hash,
        "prev_hash": tracker.prev_hash,
        "skipped_count": tracker.skipped_count,
        "skipped_sha256": tracker.skipped_sha256,
        "ledger_head": {"seq": head[0], "hash": head[1]},
        "exported_at": exported_at,
        "exported_by": exported_by,
    }


def sign(body: dict[str, Any], key: NodeKey) -> dict[str, Any]:
    signed = {**body, "key_id": key.key_id, "public_key": key.public_key.hex()}
    signature = key.sign(PROOF_DOMAIN + canonjson.dumps(signed))
    return {"statement": signed, "signature": signature.hex()}


def check_signature(signed: dict[str, Any], pinned: frozenset[bytes] | None) -> bytes:
    """The signing key, after checking the statement's signature (and that the key is pinned)."""
    body = signed["statement"]
    public_key = bytes.fromhex(body["public_key"])
    if key_id_for(public_key) != body["key_id"]:
        raise AuditExportError("proof: public key does not match its key id")
    if pinned is not None and public_key not in pinned:
        raise AuditExportError(
            f"proof is signed by key {body['key_id']}, not by a key given with --public-key"
        )
    verify_signature(public_key, bytes.fromhex(signed["signature"]), PROOF_DOMAIN + canonjson.dumps(body))
    return public_key


def read_proof(lines: Iterator[str]) -> tuple[list[tuple[int, str]], dict[str, Any]]:
    """(skipped events, signed statement) from a proof file's lines."""
    skipped: list[tuple[int, str]] = []
    signed: dict[str, Any] | None = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AuditExportError(f"proof line {number}: not JSON") from exc
        if "skipped" in item:
            seq, event_hash = item["skipped"]
            skipped.append((int(seq), str(event_hash)))
        elif "statement" in item:
            signed = item
    if signed is None:
        raise AuditExportError("proof has no signed statement")
    return skipped, signed
