"""The event log's Merkle tree at scale: growing it, checkpoints and proofs at a million events,
proof sizes, and what it adds to ingest.

Part 1 fills a SQLite ledger with ``--events`` signed events (``append_events``, batches of
5,000: the events a busy node records), then times growing the tree from nothing, a checkpoint
after a further 1,000 events (what a periodic checkpoint costs), and inclusion and consistency
proofs at random places (each checked), with their sizes in bytes.

Part 2 is the cost to ingest, as a ratio against ingest without it in the same run: rounds
alternate between a node that ingests ``--instances`` synthetic CT slices and one that does the
same and also makes a checkpoint every ``--every`` instances.

    .venv/bin/python benchmarks/bench_tlog.py [--events 1000000] [--instances 300] [--every 50]
"""

from __future__ import annotations

import argparse
import base64
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from dicom_chain.block import utc_now
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.db.models import WitnessedLogRow
from dicom_chain.events import EventDraft
from dicom_chain.ledger import append_events
from dicom_chain.node import Node
from dicom_chain.sharing.registry import Registry
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.tlog import merkle
from dicom_chain.tlog.checkpoint import Checkpoint, origin_for
from dicom_chain.tlog.store import EventTree
from dicom_chain.tlog.witness import format_request
from dicom_chain.tlog.witnessing import WitnessDesk
from dicom_chain.vocab import EventType

BATCH = 5000


def fill(node: Node, n: int) -> None:
    done = node.ledger.event_count()
    while done < n:
        k = min(BATCH, n - done)
        drafts = [
            EventDraft(type=EventType.QUERY_FIND, actor="RADIOLOGY", reason="", details={"matches": i % 97})
            for i in range(k)
        ]
        with node.ledger.db.writing() as session:
            append_events(session, node.key, drafts)
        done += k


def part1(root: Path, events: int, proofs: int) -> None:
    node = Node.open(Settings(home=root / "big", institution="Bench"))
    try:
        t = time.perf_counter()
        fill(node, events)
        filled = time.perf_counter() - t
        tree = EventTree(node.ledger)
        t = time.perf_counter()
        size = tree.grow()
        grown = time.perf_counter() - t
        first_signed = Checkpoint(origin_for(node.key, "Bench"), size, tree.root(size)).sign(node.key)
        fill(node, events + 1000)
        t = time.perf_counter()
        cp, signed = tree.checkpoint(node.key, "Bench")
        later = time.perf_counter() - t
        judge_ms, request_bytes = witness_cost(root, node, size, first_signed, cp.size, signed, proofs)
        rng = random.Random(1)
        inclusion_ms, inclusion_bytes, consistency_ms, consistency_bytes = [], [], [], []
        for _ in range(proofs):
            seq = rng.randrange(1, cp.size + 1)
            t = time.perf_counter()
            inc = tree.inclusion(seq, cp.size)
            inclusion_ms.append((time.perf_counter() - t) * 1e3)
            assert merkle.verify_inclusion(seq - 1, cp.size, merkle.leaf_hash(inc.leaf), inc.proof, cp.root)
            inclusion_bytes.append(sum(len(base64.b64encode(p)) for p in inc.proof))
            first = rng.randrange(1, cp.size)
            t = time.perf_counter()
            proof = tree.consistency(first, cp.size)
            consistency_ms.append((time.perf_counter() - t) * 1e3)
            assert merkle.verify_consistency(first, cp.size, proof, tree.root(first), cp.root)
            consistency_bytes.append(sum(len(base64.b64encode(p)) for p in proof))
    finally:
        node.close()
    print(f"events recorded: {events:,} in {filled:.1f} s (not the tree's cost: the events themselves)")
    print(f"tree grown from nothing to {size:,}: {grown:.1f} s ({grown / size * 1e6:.0f} us an event)")
    print(f"checkpoint after 1,000 more events: {later * 1e3:.0f} ms (grow, root, sign)", end="")
    print(f"; note {len(signed)} bytes")
    print(f"a witness judges {size:,} -> {cp.size:,} (request {request_bytes} bytes): "
          f"median {statistics.median(judge_ms):.1f} ms [max {max(judge_ms):.1f}]")  # fmt: skip
    print(f"| proof at {cp.size:,} | median ms [max] | base64 bytes median [max] |")
    print("| --- | --- | --- |")
    for name, ms, size_b in (("inclusion", inclusion_ms, inclusion_bytes),
                             ("consistency", consistency_ms, consistency_bytes)):  # fmt: skip
        print(f"| {name} | {statistics.median(ms):.2f} [{max(ms):.2f}] | "
              f"{statistics.median(size_b):.0f} [{max(size_b)}] |")  # fmt: skip


def witness_cost(
    root: Path, log: Node, old: int, old_signed: str, size: int, signed: str, times: int
) -> tuple[list[float], int]:
    """What cosigning one round of the big log costs its witness (tlog/witnessing.py): the
    registry lookup, the signature and the consistency proof checked, the state row replaced.
    The witness is put back to ``old`` before each judgement, so each does the same work."""
    witness = Node.open(Settings(home=root / "witness", institution="Witness"))
    try:
        key_file = root / "log.pub"
        key_file.write_text(log.key.public_key.hex())
        Registry(witness.ledger, witness.key).add(
            "Bench", ae_title="BENCH", host="127.0.0.1", port=104, public_key_file=key_file,
            actor="bench", now=utc_now(),
        )  # fmt: skip
        desk = WitnessDesk(witness)
        proof = EventTree(log.ledger).consistency(old, size)
        request = format_request(old, proof, signed)
        ms = []
        for _ in range(max(times // 10, 5)):
            with witness.db.writing() as session:
                session.execute(WitnessedLogRow.__table__.delete())
            assert desk.add_checkpoint(0, [], old_signed, actor="bench").outcome.kind == "cosigned"
            t = time.perf_counter()
            judged = desk.add_checkpoint(old, proof, signed, actor="bench")
            ms.append((time.perf_counter() - t) * 1e3)
            assert judged.outcome.kind == "cosigned"
        return ms, len(request)
    finally:
        witness.close()


def ingest(home: Path, instances: int, every: int) -> float:
    node = Node.open(Settings(home=home, institution="Bench"))
    items = [
        item_from_dataset(ds)
        for ds in ct_study(StudySpec(seed=home.stat().st_ino % 1000, instances=instances))
    ]
    tree = EventTree(node.ledger)
    try:
        t = time.perf_counter()
        for i, item in enumerate(items, start=1):
            node.ingest(item)
            if every and i % every == 0:
                tree.checkpoint(node.key, "Bench")
        return time.perf_counter() - t
    finally:
        node.close()


def part2(root: Path, instances: int, every: int, rounds: int) -> None:
    ratios, plain, with_tree = [], [], []
    for r in range(rounds):
        for label, n in (("plain", 0), ("tree", every)):
            home = root / f"{label}{r}"
            home.mkdir(parents=True)
            seconds = ingest(home, instances, n)
            (plain if n == 0 else with_tree).append(seconds)
        ratios.append(with_tree[-1] / plain[-1])
    print(f"ingest of {instances} instances, a checkpoint every {every}, {rounds} alternated rounds:")
    print(f"  without: {statistics.median(plain):.2f} s, with: {statistics.median(with_tree):.2f} s; "
          f"ratio median {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--proofs", type=int, default=200)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench-tlog-") as tmp:
        part2(Path(tmp) / "ingest", args.instances, args.every, args.rounds)
        part1(Path(tmp), args.events, args.proofs)


if __name__ == "__main__":
    main()
