"""JSON Lines: one event per line, every field of the ledger row, hash and previous hash included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dicom_chain.audit import record
from dicom_chain.audit.context import ExportContext
from dicom_chain.errors import AuditExportError

NAME = "json"
SUFFIX = ".jsonl"
DECODE_DETAILS = False  # the row's canonical details text is spliced into the line as it is


SEPARATOR = ""


def header(context: ExportContext) -> str:
    return ""


def render_batch(recs: list[dict[str, Any]], context: ExportContext) -> list[str]:
    return [record.dumps(rec) + "\n" for rec in recs]


def footer(context: ExportContext) -> str:
    return ""


def read(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as fp:
        for number, line in enumerate(fp, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AuditExportError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(rec, dict) or set(rec) != set(record.FIELDS):
                raise AuditExportError(f"{path}:{number}: not an event record")
            yield rec
