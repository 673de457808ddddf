"""CSV: a header row and one row per event, for spreadsheets.

Text that a spreadsheet would run as a formula (starting with = + - @ or a tab) is written with a
leading apostrophe, as is text already starting with one, so the escape reads back exactly.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dicom_chain.audit import record
from dicom_chain.audit.context import ExportContext
from dicom_chain.errors import AuditExportError

NAME = "csv"
SUFFIX = ".csv"
DECODE_DETAILS = False  # the details cell is the row's canonical JSON text
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _uncell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


SEPARATOR = ""


def header(context: ExportContext) -> str:
    return ",".join(record.FIELDS) + "\r\n"


def render_batch(recs: list[dict[str, Any]], context: ExportContext) -> list[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerows([_cell(rec[name]) for name in record.FIELDS] for rec in recs)
    return [buffer.getvalue()]


def footer(context: ExportContext) -> str:
    return ""


def read(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as fp:
        rows = csv.reader(fp)
        header = next(rows, None)
        if header is None or tuple(header) != record.FIELDS:
            raise AuditExportError(f"{path}: header is not {','.join(record.FIELDS)}")
        for number, row in enumerate(rows, 2):
            if len(row) != len(record.FIELDS):
                raise AuditExportError(f"{path}:{number}: {len(row)} columns, expected {len(record.FIELDS)}")
            rec: dict[str, Any] = {name: _uncell(cell) for name, cell in zip(record.FIELDS, row, strict=True)}
            try:
                rec["seq"] = int(rec["seq"])
                rec["details"] = json.loads(rec["details"])
            except ValueError as exc:
                raise AuditExportError(f"{path}:{number}: {exc}") from exc
            yield rec
