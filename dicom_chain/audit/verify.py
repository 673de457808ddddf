"""Check an audit export offline: every record, every link, nothing missing in its range.

Needs only the export, its ``.proof`` and (to pin who signed) the node's public key. A changed
line fails its hash (or its record check, for formats that render records); a removed line
leaves a hole in the sequence; a reordered or truncated file fails the links, the counts or the
file digest in the signed statement.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dicom_chain.audit import proof, record
from dicom_chain.audit.export import FORMATS, _sha256, proof_path
from dicom_chain.errors import DicomChainError
from dicom_chain.findings import Report
from dicom_chain.vocab import FindingKind, Severity


def _merged(records: Iterator[dict[str, Any]], skipped: list[tuple[int, str]]) -> Iterator[tuple[int, Any]]:
    exported = ((int(r["seq"]), 0, r) for r in records)
    gaps = ((seq, 1, h) for seq, h in skipped)
    for seq, kind, item in heapq.merge(exported, gaps, key=lambda t: (t[0], t[1])):
        yield seq, (item if kind == 0 else None, item if kind == 1 else None)


def verify_export(path: Path, pinned: frozenset[bytes] | None = None) -> tuple[Report, dict[str, Any]]:
    report = Report()
    proof_file = proof_path(path)
    try:
        with proof_file.open(encoding="utf-8") as fp:
            skipped, signed = proof.read_proof(iter(fp))
        proof.check_signature(signed, pinned)
    except (OSError, DicomChainError, KeyError, ValueError) as exc:
        report.add(Severity.ERROR, FindingKind.BAD_PROOF, f"{proof_file}: {exc}", path=str(path))
        return report, {}
    statement = signed["statement"]
    module = FORMATS.get(statement.get("format", ""))
    if module is None:
        report.add(
            Severity.ERROR, FindingKind.BAD_PROOF, f"proof names unknown format {statement.get('format')!r}"
        )
        return report, statement
    if pinned is None:
        report.add(
            Severity.INFO,
            FindingKind.KEY_NOT_PINNED,
            "signature checked against the key in the proof; give --public-key to check it is the node's",
            path=str(path),
        )
    expected_seq = statement["first_seq"]
    prev = statement["prev_hash"]
    count = 0
    last_hash = ""

    def altered(seq: Any, what: str) -> None:
        """A file that parses but shows other than its records was edited: altered, not unreadable."""
        report.add(
            Severity.ERROR,
            FindingKind.ALTERED,
            f"event {seq} was edited in the export: {what}",
            path=str(path),
        )

    records = module.read(path, altered) if getattr(module, "RENDERS_RECORDS", False) else module.read(path)
    try:
        for seq, (rec, gap_hash) in _merged(records, skipped):
            report.events_checked += 1
            if expected_seq is None or seq < expected_seq:
                report.add(
                    Severity.ERROR,
                    FindingKind.OUTSIDE_RANGE,
                    f"event {seq} is outside the proven range or repeated",
                )
                continue
            if seq > expected_seq:
                report.add(
                    Severity.ERROR, FindingKind.MISSING_EVENT, f"events {expected_seq}..{seq - 1} are missing"
                )
            if gap_hash is not None:
                prev, expected_seq = gap_hash, seq + 1
                continue
            count += 1
            _check_record(rec, prev, pinned, report)
            prev, last_hash, expected_seq = rec["hash"], rec["hash"], seq + 1
    except DicomChainError as exc:
        report.add(Severity.ERROR, FindingKind.UNREADABLE, str(exc), path=str(path))
        return report, statement
    if statement["count"] and expected_seq != statement["last_seq"] + 1:
        report.add(
            Severity.ERROR,
            FindingKind.MISSING_EVENT,
            f"the export ends at {expected_seq - 1}, the proof at {statement['last_seq']}",
        )
    if count != statement["count"] or last_hash != statement["last_hash"]:
        report.add(
            Severity.ERROR,
            FindingKind.COUNT_MISMATCH,
            f"{count} events in the file, {statement['count']} in the proof",
        )
    digest = "".join(f"{seq} {h}\n" for seq, h in skipped)
    if _sha(digest) != statement["skipped_sha256"] or len(skipped) != statement["skipped_count"]:
        report.add(
            Severity.ERROR, FindingKind.BAD_PROOF, "the skipped events differ from what the proof signed"
        )
    if _sha256(path) != statement["file_sha256"]:
        report.add(
            Severity.ERROR,
            FindingKind.FILE_ALTERED,
            "the export file is not the one the proof was signed for",
        )
    return report, statement


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _check_record(rec: dict[str, Any], prev: str, pinned: frozenset[bytes] | None, report: Report) -> None:
    seq = rec.get("seq")
    try:
        event = record.to_event(rec)
    except (KeyError, ValueError, TypeError) as exc:
        report.add(Severity.ERROR, FindingKind.UNREADABLE, f"event {seq}: {exc}")
        return
    if event.hash != rec["hash"]:
        report.add(
            Severity.ERROR,
            FindingKind.ALTERED,
            f"event {seq} does not hash to the hash it carries: its content changed",
        )
        return
    if event.prev_hash != prev:
        report.add(
            Severity.ERROR, FindingKind.BROKEN_LINK, f"event {seq} does not follow the event before it"
        )
    if pinned is not None and event.public_key not in pinned:
        report.add(
            Severity.ERROR,
            FindingKind.UNTRUSTED_KEY,
            f"event {seq} is signed by key {event.key_id}, not a given key",
        )
    try:
        event.verify_signature()
    except DicomChainError as exc:
        report.add(Severity.ERROR, FindingKind.BAD_SIGNATURE, f"event {seq}: {exc}")


def statement_summary(statement: dict[str, Any]) -> str:
    return json.dumps(
        {
            k: statement.get(k)
            for k in (
                "format",
                "count",
                "first_seq",
                "last_seq",
                "ledger_head",
                "exported_at",
                "exported_by",
                "filters",
            )
        }
    )
