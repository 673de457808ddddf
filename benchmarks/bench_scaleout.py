"""Scale-out ingest: 1, 2 and 3 ``serve`` processes on one PostgreSQL (one storage root, one key,
one chain) against 1 on SQLite, in one run on this machine, as ratios; and what bounds it.

The same load goes to every setup: PROCESSES x ASSOCIATIONS DCMTK storescu associations at once
(10 per process at full size), each sending its own study of INSTANCES small CT images, spread
over the setup's processes. No forwarding: this is the receiving side alone.

What bounds it is measured from PostgreSQL itself: every SAMPLE_S, ``pg_stat_activity`` lists
the sessions waiting on a lock and the statement they wait in; a wait in the chain head's
``SELECT ... FOR UPDATE`` counts for the chain lock, one in ``event_log_head``'s for the event
head, each for the time since the previous sample. Summed, that is session-seconds spent waiting
on each (an estimate: a wait shorter than a sampling interval may be missed or counted whole).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_scaleout.py [--associations 10] [--instances 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dicom_chain.keys import NodeKey  # noqa: E402
from dicom_chain.ledger import Ledger  # noqa: E402
from dicom_chain.synthetic import StudySpec, ct_study  # noqa: E402
from tests.peers import GatewayProcess, PostgresServer, free_port, require_tool  # noqa: E402

PROCESSES = 3  # the largest setup; the load is sized for it
SAMPLE_S = 0.005  # pg_stat_activity sampling: a receipt holds the chain lock ~2-10 ms
IMAGE_SIZE = 64  # pixels a side: ~8 KB instances, so the ledger, not the bytes, is measured
NODELAY = {"TCP_NODELAY": "1"}  # Debian's DCMTK keeps Nagle on without it


def make_studies(root: Path, associations: int, instances: int) -> list[Path]:
    folders = []
    for n in range(associations):
        folder = root / f"study{n:03d}"
        folder.mkdir(parents=True)
        spec = StudySpec(seed=9000 + n, instances=instances, rows=IMAGE_SIZE, columns=IMAGE_SIZE)
        for i, ds in enumerate(ct_study(spec)):
            ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
        folders.append(folder)
    return folders


class LockSampler(threading.Thread):
    """Session-seconds waiting on the chain head and on the event head, from pg_stat_activity."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.waits = {"chain": 0.0, "event_head": 0.0, "other": 0.0}
        self.samples = 0

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            last = time.perf_counter()
            while not self.stop.is_set():
                rows = conn.execute(
                    "SELECT query FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                ).fetchall()
                self.samples += 1
                now = time.perf_counter()
                interval, last = now - last, now
                for (query,) in rows:
                    text = (query or "").lower()
                    kind = (
                        "event_head"
                        if "event_log_head" in text
                        else "chain"
                        if "from chains" in text
                        else "other"
                    )
                    self.waits[kind] += interval
                time.sleep(SAMPLE_S)


def run_setup(
    work: Path, name: str, processes: int, db: str, studies: list[Path], pg_dsn: str | None
) -> dict:
    shared = work / name
    shared.mkdir()
    key = shared / "node.key"
    NodeKey.load_or_create(key)
    # every storescu runs on loopback: one host holding more associations than one host may
    args = ("--db", db, "--storage", str(shared / "storage"), "--key-file", str(key),
            "--max-associations-per-host", "32")  # fmt: skip
    gateways = []
    for number in range(processes):
        home = shared / f"gw{number}"
        home.mkdir()
        gateways.append(GatewayProcess(home, free_port(), args).start(timeout=120))
    sampler = LockSampler(pg_dsn) if pg_dsn else None
    total = sum(len(list(s.iterdir())) for s in studies)
    try:
        if sampler:
            sampler.start()
        start = time.perf_counter()
        senders = [
            subprocess.Popen(
                [
                    "storescu",
                    "-aec",
                    "DICOMCHAIN",
                    "+sd",
                    "127.0.0.1",
                    str(gateways[n % processes].port),
                    str(s),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**os.environ, **NODELAY},
            )
            for n, s in enumerate(studies)
        ]
        failed = [(p.args[-1], p.communicate()[1][-300:]) for p in senders if p.wait(600) != 0]
        seconds = time.perf_counter() - start
        if sampler:
            sampler.stop.set()
            sampler.join()
        ledger = Ledger(db)
        try:
            [chain] = ledger.chains()
            stored = ledger.block_count()
        finally:
            ledger.close()
    finally:
        for gateway in gateways:
            gateway.terminate()
    assert not failed, failed
    assert stored == total == chain.head_height + 1, (stored, total, chain.head_height)
    result = {"setup": name, "processes": processes, "instances": total, "seconds": round(seconds, 2),
              "per_s": round(total / seconds, 1)}  # fmt: skip
    if sampler:
        result["waits_session_s"] = {k: round(v, 2) for k, v in sampler.waits.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--associations", type=int, default=10, help="per process of the largest setup")
    parser.add_argument("--instances", type=int, default=50, help="per association")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    require_tool("storescu", "dcmtk")
    work = args.work or Path(tempfile.mkdtemp(prefix="dicomchain-scaleout-"))
    studies = make_studies(work / "studies", PROCESSES * args.associations, args.instances)
    postgres = PostgresServer.start()
    results = []
    try:
        results.append(run_setup(work, "sqlite-1", 1, f"sqlite:///{work / 'ledger.db'}", studies, None))
        for processes in (1, 2, 3):
            url = postgres.create_database()
            dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname={url.rsplit('/', 1)[1]}"
            results.append(run_setup(work, f"postgres-{processes}", processes, url, studies, dsn))
    finally:
        postgres.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    base = results[0]["per_s"]
    for r in results:
        r["x_sqlite_1"] = round(r["per_s"] / base, 2)
        if "waits_session_s" in r:  # sessions waiting at an average moment, of the associations
            r["waiting_on_chain_lock"] = round(r["waits_session_s"]["chain"] / r["seconds"], 1)
            r["waiting_on_event_head"] = round(r["waits_session_s"]["event_head"] / r["seconds"], 1)
            r["ms_per_instance"] = round(1000 * r["seconds"] / r["instances"], 1)
    print(json.dumps({"machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                      f"Python {platform.python_version()}", "results": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
