"""Per-instance stage timings of the ingest path, for benchmarks and profiles; off by default.

Set ``DICOM_CHAIN_TIMING`` to a file name before the process starts (a diagnostic, like a
profiler, not a setting of the node). Then each C-STORE handler opens a record (``begin``), every
stage boundary on the way calls ``mark(name)`` (the time since the previous boundary is that
stage's), and ``end`` files the record; records are appended to the file as JSON lines every
``FLUSH_EVERY`` instances and when an association ends (``flush``). One line per boundary keeps
the hooks out of the code's shape; ``stage(name)`` times a block where a boundary will not do.

Off, each hook is one call that reads a module flag and returns (well under a microsecond, against
milliseconds per instance). Records live per thread: pynetdicom runs each association's handlers on
that association's thread. A handler that raises files no record; the next ``begin`` drops it.
"""

from __future__ import annotations

import atexit
import json
import os
import statistics
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

ENV = "DICOM_CHAIN_TIMING"
# Records held before they are written: one small append per 256 instances keeps the file's cost
# out of the timings it records; at ~400 bytes a record, ~100 KB held at most.
FLUSH_EVERY = 256
BETWEEN = "between"  # the time outside the handler since the previous instance of the association

_path: Path | None = None
ON = False  # the one thing every hook reads
_local = threading.local()
_lock = threading.Lock()
_buffer: list[dict] = []


class _Record:
    __slots__ = ("between", "last", "stages", "start")

    def __init__(self, now: int, between: int | None) -> None:
        self.start = now
        self.last = now
        self.between = between
        self.stages: dict[str, int] = {}


def configure(path: str | os.PathLike[str] | None) -> None:
    """Record into ``path`` from now on (None: stop recording, after writing what is held)."""
    global ON, _path
    flush()
    _path = Path(path) if path else None
    ON = _path is not None


def begin() -> None:
    """An instance's handler starts: a new record; the time since the previous one's end on this
    thread is recorded as ``between`` (pynetdicom's part: response out, next request in)."""
    if not ON:
        return
    now = time.perf_counter_ns()
    ended = getattr(_local, "ended", None)
    _local.rec = _Record(now, None if ended is None else now - ended)


def mark(name: str) -> None:
    """A stage boundary: the time since the previous one goes to ``name`` (summed if repeated)."""
    if not ON:
        return
    rec = getattr(_local, "rec", None)
    if rec is None:  # not inside a handler (the CLI's ingest, a test): nothing to time
        return
    now = time.perf_counter_ns()
    rec.stages[name] = rec.stages.get(name, 0) + now - rec.last
    rec.last = now


class _Stage:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        mark("other")  # what ran since the last boundary is not this stage's

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        mark(self.name)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None


_NOTHING = _Nothing()


def stage(name: str) -> _Stage | _Nothing:
    """``with stage("db.commit"): ...``: the block's time goes to ``name``."""
    return _Stage(name) if ON else _NOTHING


def end(name: str) -> None:
    """The instance is answered: the time since the last boundary goes to ``name``, the record is
    filed, and written out once ``FLUSH_EVERY`` are held."""
    if not ON:
        return
    rec = getattr(_local, "rec", None)
    if rec is None:
        return
    mark(name)
    _local.rec = None
    entry = {"ts": time.time(), "total": rec.last - rec.start, BETWEEN: rec.between, "stages": rec.stages}
    with _lock:
        _buffer.append(entry)
        full = len(_buffer) >= FLUSH_EVERY
    if full:
        flush()
    _local.ended = time.perf_counter_ns()  # after the flush: its cost is the timer's, not the gateway's


def flush() -> None:
    """Append the records held to the file (association released or aborted, process exit)."""
    with _lock:
        if not _buffer or _path is None:
            _buffer.clear()
            return
        lines = "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in _buffer)
        _buffer.clear()
        with _path.open("a", encoding="utf-8") as fp:
            fp.write(lines)


def read(path: Path) -> list[dict]:
    """The records a run wrote (times in nanoseconds)."""
    with path.open(encoding="utf-8") as fp:
        return [json.loads(line) for line in fp if line.strip()]


def summary(records: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Per stage, in milliseconds: median, 10th and 90th percentile, and the mean over the
    instances that passed through it; ``total`` (handler start to answer) and ``between`` too."""
    samples: dict[str, list[int]] = {}
    for record in records:
        for name, ns in record["stages"].items():
            samples.setdefault(name, []).append(ns)
        samples.setdefault("total", []).append(record["total"])
        if record.get(BETWEEN) is not None:
            samples.setdefault(BETWEEN, []).append(record[BETWEEN])
    out = {}
    for name, values in samples.items():
        ms = sorted(v / 1e6 for v in values)
        out[name] = {
            "n": len(ms),
            "median": statistics.median(ms),
            "p10": ms[len(ms) // 10],
            "p90": ms[min(len(ms) - 1, len(ms) * 9 // 10)],
            "mean": statistics.fmean(ms),
        }
    return out


configure(os.environ.get(ENV) or None)
atexit.register(flush)
