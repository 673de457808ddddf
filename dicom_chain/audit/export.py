"""Export the event log in an auditor's format, streamed, with a signed proof beside it.

Memory stays flat whatever the size: rows are read in batches, each is written as it comes, and
the hashes of filtered-out events between two exported ones wait in a spooled temp file.
The export is cut at the log's head when it starts; events appended meanwhile are left out.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_chain import canonjson
from dicom_chain.audit import atna, csvfile, fhir, jsonl, proof, record
from dicom_chain.audit.context import ExportContext
from dicom_chain.block import utc_now
from dicom_chain.errors import ConfigError
from dicom_chain.events import EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.vocab import EventType

if TYPE_CHECKING:
    from dicom_chain.ledger import Ledger

FORMATS = {m.NAME: m for m in (jsonl, csvfile, fhir, atna)}
PENDING_SPOOL_BYTES = 8 << 20  # skipped hashes held in memory before they spill to a temp file
RENDER_BATCH = 500  # records per rendering task: handing it to a worker costs little, holding it little
RENDER_WORKERS_MAX = 4  # worker processes at most (each holds a Python and lxml: ~40 MB)
PARALLEL_FORMATS = frozenset({"fhir", "atna"})  # where rendering, not reading, sets the pace
HASH_CHUNK = 1 << 20


def proof_path(export: Path) -> Path:
    return export.with_name(export.name + ".proof")


def _bound(text: str | None, *, end: bool) -> str | None:
    """An ISO date or date-time as the event log writes times; a bare date as --until means its end."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is not an ISO 8601 date or date-time") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end and len(text) == 10:
        moment += timedelta(days=1)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class AuditFilter:
    since: str | None = None
    until: str | None = None
    patient: str | None = None
    study: str | None = None
    institution: str | None = None
    event_types: tuple[str, ...] = ()

    @property
    def narrows(self) -> bool:
        """Whether events inside the time range can be left out (then the proof lists them)."""
        return bool(self.patient or self.study or self.institution or self.event_types)

    def selects(self, rec: dict[str, Any], institutions: dict[str, str]) -> bool:
        return (
            (not self.patient or _about_patient(rec, self.patient))
            and (not self.study or rec["study_uid"] == self.study)
            and (not self.institution or institutions.get(rec["key_id"]) == self.institution)
            and (not self.event_types or rec["type"] in self.event_types)
        )

    def describe(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v}


def _about_patient(rec: dict[str, Any], patient: str) -> bool:
    """The event's patient column, or the patients its details say it disclosed (a query's
    answers, a retrieval spanning patients: ``"patients": [...]``). The details stay undecoded
    text unless they name the patient at all, so a million-event export decodes a handful."""
    if rec["patient_id"] == patient:
        return True
    details = rec["details"]
    if isinstance(details, str):
        if '"patients":' not in details or json.dumps(patient, ensure_ascii=False)[1:-1] not in details:
            return False
        details = canonjson.loads(details)
    listed = details.get("patients")
    return isinstance(listed, list) and patient in listed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        while chunk := fp.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Renderer:
    """Turns batches of records into text, in order: inline, or for the formats whose rendering
    dominates (FHIR, ATNA) in worker processes, a few batches ahead, so a million events use every
    core and memory stays bounded by the batches in flight."""

    def __init__(self, module: Any, context: ExportContext) -> None:
        self.module = module
        self.context = context
        self.fp: Any = None
        self.first = True
        self.in_flight: deque[Future] = deque()
        self.workers = min(RENDER_WORKERS_MAX, os.cpu_count() or 1)
        self.parallel = module.NAME in PARALLEL_FORMATS and self.workers > 1
        self.pool: ProcessPoolExecutor | None = (
            None  # started with the second batch: small exports stay inline
        )
        self.batches = 0

    def __enter__(self) -> _Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        main, saved = sys.modules["__main__"], self._saved_main
        if saved is not None:
            main.__file__, main.__spec__ = saved

    _saved_main: tuple[Any, Any] | None = None

    def _hide_main(self) -> None:
        """Spawned workers import the parent's __main__ again (for the command line: click, rich,
        SQLAlchemy, ~30 MB each) although rendering needs none of it; hidden while they start."""
        main = sys.modules["__main__"]
        if hasattr(main, "__file__"):
            self._saved_main = (main.__file__, getattr(main, "__spec__", None))
            del main.__file__
            main.__spec__ = None

    def submit(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        self.batches += 1
        if not self.parallel or self.batches == 1:
            self._write(self.module.render_batch(batch, self.context))
            return
        if self.pool is None:
            self._hide_main()
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        self.in_flight.append(self.pool.submit(self.module.render_batch, batch, self.context))
        while len(self.in_flight) > self.workers + 1:  # one waiting per worker: enough to keep them busy
            self._write(self.in_flight.popleft().result())

    def drain(self) -> None:
        while self.in_flight:
            self._write(self.in_flight.popleft().result())

    def _write(self, items: list[str]) -> None:
        separator = self.module.SEPARATOR
        if not items:
            return
        if separator and not self.first:
            self.fp.write(separator)
        self.fp.write(separator.join(items))
        self.first = False


def _flush(pending: Any, tracker: proof.RangeTracker, skipped_file: Any) -> None:
    """Events filtered out between two exported ones: into the proof's skipped list."""
    pending.seek(0)
    for line in pending:
        seq, event_hash = line.split()
        tracker.skipped(int(seq), event_hash)
        skipped_file.write(proof.skipped_line(int(seq), event_hash) + "\n")
    pending.seek(0)
    pending.truncate()


def export(
    ledger: Ledger,
    key: NodeKey,
    fmt: str,
    output: Path,
    filters: AuditFilter,
    *,
    actor: str,
    source_id: str,
    advance: Callable[[int], None] = lambda _n: None,
) -> dict[str, Any]:
    """Write ``output`` and ``output.proof``; return the signed statement. Records an audit.export."""
    module = FORMATS.get(fmt)
    if module is None:
        raise ConfigError(f"unknown audit format {fmt!r} (one of {', '.join(FORMATS)})")
    head = ledger.event_head()
    institutions = ledger.institutions()
    context = ExportContext(exported_at=utc_now(), source_id=source_id, institutions=institutions)
    since, until = _bound(filters.since, end=False), _bound(filters.until, end=True)
    tracker = proof.RangeTracker()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    with (
        tempfile.TemporaryFile("w+", encoding="ascii") as skipped_file,
        tempfile.SpooledTemporaryFile(PENDING_SPOOL_BYTES, "w+", encoding="ascii") as pending,
        _Renderer(module, context) as renderer,
    ):
        try:
            with partial.open("w", encoding="utf-8", newline="") as fp:
                fp.write(module.header(context))
                renderer.fp = fp
                batch: list[dict[str, Any]] = []
                for row in ledger.iter_event_rows(since, until, max_seq=head[0]):
                    advance(1)
                    rec = record.from_row(row, decode_details=False)
                    if not filters.selects(rec, institutions):
                        if tracker.first_seq is not None:
                            pending.write(f"{rec['seq']} {rec['hash']}\n")
                        continue
                    if pending.tell():
                        _flush(pending, tracker, skipped_file)
                    batch.append(rec)
                    tracker.exported(rec["seq"], rec["hash"], rec["prev_hash"])
                    if len(batch) == RENDER_BATCH:
                        renderer.submit(batch)
                        batch = []
                renderer.submit(batch)
                renderer.drain()
                fp.write(module.footer(context))
            body = proof.statement(
                tracker,
                fmt=fmt,
                filters=filters.describe(),
                file_name=output.name,
                file_sha256=_sha256(partial),
                head=head,
                exported_at=context.exported_at,
                exported_by=actor,
            )
            signed = proof.sign(body, key)
            proof_partial = partial.with_name(partial.name + ".proof")
            with proof_partial.open("w", encoding="utf-8") as fp:
                skipped_file.seek(0)
                for line in skipped_file:
                    fp.write(line)
                fp.write(json.dumps(signed, ensure_ascii=False, separators=(",", ":")) + "\n")
            os.replace(partial, output)
            os.replace(proof_partial, proof_path(output))
        finally:
            partial.unlink(missing_ok=True)
    ledger.record(
        key,
        EventDraft(
            EventType.AUDIT_EXPORT,
            actor=actor,
            patient_id=filters.patient or "",
            study_uid=filters.study or "",
            reason=f"{tracker.count} events exported as {fmt}",
            details={
                "format": fmt,
                "file": output.name,
                "filters": filters.describe(),
                "count": tracker.count,
                "first_seq": tracker.first_seq,
                "last_seq": tracker.last_seq,
            },
        ),
    )
    return signed
