"""The receipt transaction's cost per instance: this code against an earlier revision, alternated.

``Node.ingest`` of synthetic CT instances (small pixels: the database is what is measured), timed
per instance in three stages: ``receipt`` (intent, lock, reads, block, event, index, outbox,
commit: everything ``Receipts.open`` spans minus the file), ``file`` (``Node._write_new``: write,
fsync, read back) and ``index`` (index rows written after the response, when this code defers
them, timed by flushing after each instance: work the response no longer waits for; in service
they go 64 to a transaction). ``*_cpu``: the thread's CPU time in that stage (no fsync or lock
waits: what a shared, loaded machine disturbs least). Each round
is a fresh node in a subprocess; rounds alternate between this tree and the baseline revision
(``git archive`` into a temp folder), on SQLite and, with ``--postgres``, on a PostgreSQL
server started for the run (tests/peers.py).

    .venv/bin/python benchmarks/bench_ingest_db.py [--instances 300] [--rounds 4]
        [--baseline 381ef24] [--postgres] [--profile]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_round(db_url: str, home: str, instances: int, profile: bool) -> dict:
    """Run in a subprocess with the tree under test first on sys.path."""
    from dicom_chain.carriers.dicom.carrier import DICOM
    from dicom_chain.config import Settings
    from dicom_chain.node import Node
    from dicom_chain.receipt import Receipts
    from dicom_chain.synthetic import StudySpec, ct_study

    settings = Settings(home=Path(home), institution="Bench Hospital", db=db_url)
    node = Node.open(settings)
    items = [
        DICOM.dataset(ds).item()
        for ds in ct_study(StudySpec(seed=3, instances=instances, rows=32, columns=32))
    ]
    stages: dict[str, list[int]] = {
        "receipt": [],
        "receipt_cpu": [],
        "file": [],
        "index": [],
        "index_cpu": [],
        "ingest": [],
    }
    file_ns = [0]
    file_cpu = [0]
    write_new = Node._write_new

    def timed_write(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        t, c = time.perf_counter_ns(), time.thread_time_ns()
        try:
            return write_new(self, *args, **kwargs)
        finally:
            file_ns[0] += time.perf_counter_ns() - t
            file_cpu[0] += time.thread_time_ns() - c

    Node._write_new = timed_write  # type: ignore[method-assign]
    opened = Receipts.open
    span = [0, 0]

    def timed_open(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        t, c = time.perf_counter_ns(), time.thread_time_ns()
        with opened(self, *args, **kwargs) as tx:
            yield tx
        span[0], span[1] = time.perf_counter_ns() - t, time.thread_time_ns() - c

    from contextlib import contextmanager

    Receipts.open = contextmanager(timed_open)  # type: ignore[method-assign]
    flush = getattr(getattr(node, "index_queue", None), "flush", None)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    for item in items:
        file_ns[0] = file_cpu[0] = span[0] = span[1] = 0
        t = time.perf_counter_ns()
        node.ingest(item, actor="BENCH")
        stages["ingest"].append(time.perf_counter_ns() - t)
        stages["receipt"].append(span[0] - file_ns[0])
        stages["receipt_cpu"].append(span[1] - file_cpu[0])
        stages["file"].append(file_ns[0])
        if flush is not None:
            t, c = time.perf_counter_ns(), time.thread_time_ns()
            flush()
            stages["index"].append(time.perf_counter_ns() - t)
            stages["index_cpu"].append(time.thread_time_ns() - c)
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(40)
    node.close()
    return {k: statistics.median(v) / 1e6 for k, v in stages.items() if v}


def export(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "dicom_chain"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run(tree: Path, db_url: str, home: Path, instances: int, profile: bool = False) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[2]);"
        "from bench_ingest_db import one_round;"
        "print(json.dumps(one_round(sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] == '1')))"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tree),
            str(ROOT / "benchmarks"),
            db_url,
            str(home),
            str(instances),
            "1" if profile else "0",
        ],
        stdout=subprocess.PIPE,
        stderr=None if profile else subprocess.PIPE,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--baseline", default="381ef24")
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile one round of this tree, print, stop")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-db-"))
    trees = {"this": ROOT, "baseline": export(args.baseline, work / "baseline")}
    urls = {"sqlite": lambda home: f"sqlite:///{home / 'ledger.db'}"}
    server = None
    if args.postgres:
        sys.path.insert(0, str(ROOT))
        from tests.peers import PostgresServer

        server = PostgresServer.start()
        urls["postgres"] = lambda _home: server.create_database()
    if args.profile:
        home = work / "profile"
        run(ROOT, urls["sqlite"](home), home, args.instances, profile=True)
        return
    results: dict[tuple[str, str], list[dict]] = {}
    try:
        n = 0
        for r in range(args.rounds):
            for db in urls:
                order = ["this", "baseline"] if r % 2 == 0 else ["baseline", "this"]
                for name in order:
                    n += 1
                    home = work / f"round{n}"
                    home.mkdir()
                    results.setdefault((db, name), []).append(
                        run(trees[name], urls[db](home), home, args.instances)
                    )
    finally:
        if server is not None:
            server.stop()
    print(
        f"{args.instances} instances per round, {args.rounds} rounds alternated;"
        f" load {os.getloadavg()[0]:.2f}"
    )
    print("ms per instance, median of per-round medians [range]")
    for db in urls:
        for stage in ("receipt", "receipt_cpu", "file", "ingest", "index", "index_cpu"):
            line = []
            for name in ("baseline", "this"):
                values = [r[stage] for r in results[(db, name)] if stage in r]
                if values:
                    line.append(
                        f"{name} {statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"
                    )
            print(f"{db:8} {stage:8} " + "  ".join(line))
        b = statistics.median(r["receipt"] for r in results[(db, "baseline")])
        t = statistics.median(r["receipt"] for r in results[(db, "this")])
        print(f"{db:8} receipt this/baseline {t / b:.2f}")
        b = statistics.median(r["receipt_cpu"] for r in results[(db, "baseline")])
        t = statistics.median(r["receipt_cpu"] for r in results[(db, "this")])
        print(f"{db:8} receipt_cpu this/baseline {t / b:.2f}")


if __name__ == "__main__":
    main()
