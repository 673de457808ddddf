"""Audit export of a large event log: time and peak memory, against a plain dump in the same run.

A ledger of --events signed, hash-linked events (a realistic mix: receipts, forwards, queries,
retrievals; made once, cached under --work) is exported with `dicom-chain audit export` in each
format, each in its own process, timed, with the peak RSS of that process and its render workers
summed. The baseline is the cheapest honest export: the same rows streamed from the same SQLite
file and written as JSON lines by a few lines of Python, without proof or formatting.

    .venv/bin/python benchmarks/bench_audit.py [--events 1000000] [--work /var/tmp/dicom-chain-bench]

Targets: 1,000,000 events under 60 s and under 200 MB peak RSS (all processes of the export).
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from dicom_chain import canonjson
from dicom_chain.block import GENESIS_HASH
from dicom_chain.config import Settings
from dicom_chain.events import Event, EventDraft
from dicom_chain.node import Node

BASELINE = textwrap.dedent(
    """
    import json, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1])
    cols = [c[1] for c in conn.execute("PRAGMA table_info(events)")]
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        for row in conn.execute("SELECT * FROM events ORDER BY seq"):
            out.write(json.dumps(dict(zip(cols, row)), ensure_ascii=False) + "\\n")
    """
)
TARGET_S, TARGET_MB = 60.0, 200.0
INSERT_BATCH = 10_000


def drafts(n: int) -> list[EventDraft]:
    """A repeating day of a department: receipts and forwards dominate, then queries and moves."""
    out = []
    for i in range(n):
        patient = f"P{i // 40 % 5000:05d}"
        study = f"1.2.826.0.1.3680043.10.1507.9.{i // 40}"
        kind = i % 20
        if kind < 9:
            out.append(
                EventDraft(
                    "instance.received",
                    actor="CT1",
                    patient_id=patient,
                    study_uid=study,
                    sop_uid=f"{study}.{i}",
                    reason="stored",
                    details={"height": i, "block_hash": f"{i:064x}", "version": 1},
                )
            )
        elif kind < 18:
            out.append(
                EventDraft(
                    "instance.forwarded",
                    actor="PACS@10.0.0.2:104",
                    patient_id=patient,
                    study_uid=study,
                    sop_uid=f"{study}.{i}",
                    reason="accepted",
                    details={"destination": "PACS@10.0.0.2:104", "status": 0},
                )
            )
        elif kind == 18:
            out.append(
                EventDraft(
                    "query.find",
                    actor="WS1",
                    patient_id=patient,
                    reason="completed",
                    details={
                        "model": "STUDY",
                        "level": "STUDY",
                        "matches": 3,
                        "keys": {"PatientID": patient, "StudyDate": "20260101-"},
                    },
                )
            )
        else:
            out.append(
                EventDraft(
                    "retrieve.move",
                    actor="WS1",
                    patient_id=patient,
                    study_uid=study,
                    reason="completed",
                    details={"destination": "WS1@10.0.0.9:104", "completed": 40, "failed": 0},
                )
            )
    return out


def build(home: Path, n: int) -> Path:
    """The ledger, made once per size: signing a million events takes a minute or two."""
    db = home / "ledger.db"
    marker = home / f"built-{n}"
    if marker.exists():
        return db
    node = Node.open(Settings(home=home, institution="Benchmark General"))
    key = node.key
    node.close()
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM events")
    seq, prev = 0, GENESIS_HASH
    started = time.monotonic()
    base = drafts(min(n, 100_000))
    rows = []
    for i in range(n):
        seq += 1
        event = Event.seal(base[i % len(base)], seq, prev, key)
        prev = event.hash
        body = event.body()
        rows.append(
            (
                seq,
                event.prev_hash,
                event.hash,
                body["time"],
                event.key_id,
                key.public_key.hex(),
                event.type,
                event.outcome,
                event.actor,
                event.patient_id,
                event.study_uid,
                event.sop_uid,
                event.chain_id,
                event.reason,
                canonjson.dumps(event.details).decode(),
                event.signature.hex(),
            )
        )
        if len(rows) == INSERT_BATCH:
            _insert(conn, rows)
            rows = []
            print(f"\r  made {seq:,} events ({time.monotonic() - started:.0f} s)", end="", file=sys.stderr)
    _insert(conn, rows)
    conn.execute("UPDATE event_log_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
    conn.commit()
    conn.close()
    print(file=sys.stderr)
    marker.touch()
    return db


def _insert(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    conn.executemany(
        "INSERT INTO events (seq, prev_hash, hash, time, key_id, public_key, type, outcome, actor,"
        " patient_id, study_uid, sop_uid, chain_id, reason, details, signature)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    conn.commit()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree_rss_kb(pid: int) -> int:
    """VmRSS summed over a process and all its descendants (an export's render workers count)."""
    tree, todo, total = _children(), [pid], 0
    while todo:
        current = todo.pop()
        todo += tree.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak summed RSS (MB) of a command and its descendants, sampled every 0.1 s."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kb(proc.pid))
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read() if proc.stderr else ''}")
    return elapsed, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/dicom-chain-bench-audit"))
    parser.add_argument("--formats", default="json,csv,fhir,atna")
    args = parser.parse_args()
    home = args.work / f"ledger-{args.events}"
    home.mkdir(parents=True, exist_ok=True)
    db = build(home, args.events)
    out = args.work / "out"
    out.mkdir(exist_ok=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"{args.events:,} events in {db.stat().st_size / 1e6:.0f} MB of SQLite"
    )
    base_s, base_mb = timed([sys.executable, "-c", BASELINE, str(db), str(out / "baseline.jsonl")])
    print(f"{'run':<28}{'seconds':>9}{'events/s':>12}{'RSS MB (sum)':>13}{'x baseline':>12}  target")
    rate = args.events / base_s
    print(f"{'baseline: rows -> JSON':<28}{base_s:>9.1f}{rate:>12,.0f}{base_mb:>13.0f}{1:>12.2f}")
    cli = [sys.executable, "-m", "dicom_chain.cli", "audit", "export", "--home", str(home), "--no-progress"]
    for fmt in args.formats.split(","):
        target = out / f"export.{fmt}"
        seconds, mb = timed([*cli, "--format", fmt, "--output", str(target)])
        ok = "met" if seconds < TARGET_S and mb < TARGET_MB else "MISSED"
        print(
            f"{'audit export ' + fmt:<28}{seconds:>9.1f}{args.events / seconds:>12,.0f}{mb:>13.0f}"
            f"{seconds / base_s:>12.2f}  <{TARGET_S:.0f} s, <{TARGET_MB:.0f} MB: {ok}"
        )
    verify_s, verify_mb = timed(
        [sys.executable, "-m", "dicom_chain.cli", "audit", "verify", str(out / "export.json")]
    )
    print(
        f"{'audit verify json':<28}{verify_s:>9.1f}{args.events / verify_s:>12,.0f}{verify_mb:>13.0f}"
        f"{verify_s / base_s:>12.2f}"
    )


if __name__ == "__main__":
    main()
