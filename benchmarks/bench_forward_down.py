"""What a forward destination that is down costs the gateway, per instance received.

``dicom-chain serve --forward DOWN@127.0.0.1:<a port nothing listens on>`` receives a CT study
(--instances x --size^2) from DCMTK storescu (TCP_NODELAY=1) over one association, --rounds times,
each into a fresh node. Read from /proc: the CPU seconds of serve and of its forward child while
the study arrives and for --settle seconds after (the child's share is what the breaker in
dicom_chain/breaker.py is for), then from the ledger's outbox: the attempts recorded (association
tries that reached the queue) and the forward events.

    .venv/bin/python benchmarks/bench_forward_down.py [--instances 200] [--size 512] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import _stat, gateway, load, make_study, stop, storescu


def children(pid: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [child for child in pids if (_stat(child) or (0, 0.0))[0] == pid]


def cpu(pid: int) -> float:
    stat = _stat(pid)
    return stat[1] if stat else 0.0


def one_round(root: Path, study: Path, instances: int, settle: float) -> dict:
    down_port = 9  # discard: closed on this machine, connection refused at once
    server = gateway(root, "--forward", f"DOWN@127.0.0.1:{down_port}")
    try:
        time.sleep(2.0)  # the forward child started and looked once
        [child] = children(server.proc.pid)
        serve0, child0 = cpu(server.proc.pid), cpu(child)
        wall, _ = storescu(server.port, [study], server.aec)
        time.sleep(settle)
        serve1, child1 = cpu(server.proc.pid), cpu(child)
    finally:
        stop(server.proc)
    db = sqlite3.connect(root / "gw" / "ledger.db")
    attempts, tried = db.execute("SELECT sum(attempts), sum(attempts > 0) FROM outbox").fetchone()
    events = dict(db.execute("SELECT type, count(*) FROM events WHERE type LIKE 'forward.%' GROUP BY type"))
    db.close()
    return {
        "rate": instances / wall,
        "serve_ms": 1000 * (serve1 - serve0) / instances,
        "child_ms": 1000 * (child1 - child0) / instances,
        "attempts": attempts or 0,
        "instances_tried": tried or 0,
        "events": events,
        "load": load(),
    }


def main(argv: list[str] | None = None) -> dict:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds measured after the last instance")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-down-") as tmp:
        study = Path(tmp) / "study"
        make_study(study, args.instances, args.size)
        rounds = [
            one_round(Path(tmp) / f"r{i}", study, args.instances, args.settle) for i in range(args.rounds)
        ]
    out = {"rounds": rounds}
    for key in ("rate", "serve_ms", "child_ms"):
        values = [r[key] for r in rounds]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
