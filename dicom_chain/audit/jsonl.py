"""JSON Lines: one event per line, every field of the ledger row, hash and previous hash included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ..errors import AuditExportError
from . import record
from .context import ExportContext

NAME = "json"
SUFFIX = ".jsonl"
DECODE_DETAILS = False  # the row's canonical details text is spliced into the line as it is


class Writer:
    def __init__(self, fp: TextIO, context: ExportContext) -> None:
        self.fp = fp

    def write(self, rec: dict[str, Any]) -> None:
        self.fp.write(record.dumps_raw_details(rec) + "\n")

    def close(self) -> None:
        pass


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
