"""Ingest against a forwarder that settles at the same time, on one SQLite ledger: how long the
receiving side waits for the write lock, rounds of these modes alternated:

- alone: no forwarder (the floor);
- old: SQLite's busy handler alone (it polls in sleeps growing from 1 to 100 ms), a batch of 50
  settled in one durable transaction (as before the lock file; the settle's statements as now);
- lockfile: writers queue on the lock file (``WriteLock``), the rest as in old;
- new: the lock file, outbox.SETTLE_CHUNK (10) per transaction, committed without the fsync
  (outbox.FORWARD_WRITES_DURABLE): the code now.

One process ingests small CT instances with ``Node.ingest`` (one forward destination, so each is
queued); a second process plays the forwarder without a network: it claims a batch, "sends" it
(SEND_MS per instance, sleeping, no CPU) and settles it as stored, over and over, starting with a
backlog of queued instances (a PACS that was down for a while). Reported per
mode: the ingest side's wait for the lock in each write transaction (lock file + BEGIN IMMEDIATE),
each ingest end to end, and how long the settler's transactions hold the lock.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_forward_contention.py [--instances 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event  # noqa: E402

from dicom_chain import outbox  # noqa: E402
from dicom_chain.carriers.dicom.carrier import item_from_dataset  # noqa: E402
from dicom_chain.config import Settings  # noqa: E402
from dicom_chain.db import database  # noqa: E402
from dicom_chain.node import Node  # noqa: E402
from dicom_chain.outbox import Settled  # noqa: E402
from dicom_chain.synthetic import StudySpec, ct_study  # noqa: E402
from dicom_chain.vocab import ForwardVerdict  # noqa: E402

DESTINATION = "PACS@127.0.0.1:9"  # never contacted: the settler fakes the sending
BATCH = 50  # scp/forwarder.py BATCH_SIZE
SEND_MS = 1.0  # a C-STORE of a small instance into a PACS on the same host


def settings(home: Path) -> Settings:
    return Settings(home=home, forward=(DESTINATION,))


class Waits:
    """Per write transaction: the wait from asking for the write lock to holding SQLite's (lock
    file + BEGIN IMMEDIATE), and the hold from then to the commit's end."""

    def __init__(self, db: database.Database) -> None:
        self.samples: list[float] = []
        self.holds: list[float] = []
        self._asked: float | None = None
        self._locked: float | None = None
        lock = db.write_lock
        held = lock.held

        @contextmanager
        def timed() -> Any:
            self._asked, self._locked = time.perf_counter(), None
            with held():
                yield
            if self._locked is not None:
                self.holds.append(time.perf_counter() - self._locked)

        lock.held = timed  # type: ignore[method-assign]
        for engine in {db.writer, db.relaxed}:
            event.listen(engine, "after_cursor_execute", self._after)

    def _after(self, _conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.startswith("BEGIN IMMEDIATE") and self._asked is not None:
            self._locked = time.perf_counter()
            self.samples.append(self._locked - self._asked)
            self._asked = None


def no_lock_file(db: database.Database) -> None:
    db.write_lock = database._NoLock()


def settler(home: Path, stop: Path, mode: str, out: Path, send_ms: float) -> None:
    node = Node.open(settings(home))
    if mode == "old":
        no_lock_file(node.db)
    if mode in ("old", "lockfile"):
        outbox.SETTLE_CHUNK, outbox.FORWARD_WRITES_DURABLE = BATCH, True
    waits = Waits(node.db)
    settled = 0
    while not stop.exists():
        items = node.outbox.claim(DESTINATION, BATCH)
        if not items:
            time.sleep(0.005)
            continue
        time.sleep(send_ms / 1000 * len(items))
        node.outbox.settle([Settled(i, 0, "", ForwardVerdict.DONE) for i in items])
        settled += len(items)
    node.close()
    out.write_text(json.dumps({"holds": waits.holds, "settled": settled}))


def round_(mode: str, instances: int, backlog: int, seed: int, send_ms: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        home = Path(tmp) / "home"
        node = Node.open(settings(home))
        if mode == "old":
            no_lock_file(node.db)
        for ds in ct_study(StudySpec(seed=seed + 1000, instances=backlog)):
            node.ingest(item_from_dataset(ds))  # a queue the forwarder is behind on
        waits = Waits(node.db)
        study = [item_from_dataset(ds) for ds in ct_study(StudySpec(seed=seed, instances=instances))]
        stop, out = Path(tmp) / "stop", Path(tmp) / "out.json"
        child = None
        if mode != "alone":
            child = subprocess.Popen(
                [sys.executable, __file__, "--settler", str(home), str(stop), mode, str(out), str(send_ms)],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            time.sleep(1.0)  # the settler is up
        latencies = []
        for item in study:
            started = time.perf_counter()
            node.ingest(item)
            latencies.append(time.perf_counter() - started)
        stop.touch()
        other = {"holds": [], "settled": 0}
        if child is not None:
            child.wait(60)
            other = json.loads(out.read_text())
        node.close()
        return {"waits": waits.samples, "latencies": latencies, **other}


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return "-"
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"p50 {statistics.median(ms):6.2f}  p99 {p99:6.2f}  max {ms[-1]:6.2f} ms  (n={len(ms)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=300, help="instances queued before the round")
    parser.add_argument("--send-ms", type=float, default=SEND_MS, help="the settler's 'send' per instance")
    parser.add_argument("--modes", default="alone,old,lockfile,new", help="which, comma-separated")
    parser.add_argument("--settler", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.settler:
        home, stop, mode, out, send_ms = args.settler
        settler(Path(home), Path(stop), mode, Path(out), float(send_ms))
        return
    modes = tuple(args.modes.split(","))
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            results[mode].append(
                round_(mode, args.instances, args.backlog, seed=100 + r, send_ms=args.send_ms)
            )
            print(f"round {r + 1} {mode} done, load {os.getloadavg()[0]:.2f}", flush=True)
    for mode, rounds in results.items():
        print(f"\n== {mode} ==")
        for name in ("waits", "latencies", "holds"):
            print(f"  {name:9s} all rounds: {summary([v for r in rounds for v in r[name]])}")
            for r in rounds:
                print(f"  {'':9s}   round: {summary(r[name])}")
        print(f"  settled per round: {[r['settled'] for r in rounds]}")
        waited = [sum(r["waits"]) * 1000 for r in rounds]
        print(f"  ingest's total lock wait per round: {[round(w) for w in waited]} ms")
        per = [round(w / max(1, r["settled"]), 2) for w, r in zip(waited, rounds, strict=True)]
        print(f"  ... per instance settled meanwhile: {per} ms")


if __name__ == "__main__":
    main()
