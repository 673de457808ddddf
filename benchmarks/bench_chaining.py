"""Chaining overhead: read + hash + sign + embed + write, against plain pydicom read + write.

Both are measured in the same run on the same 300-instance 512x512 CT study (synthetic, 16-bit),
alternating rounds so that disk cache and CPU frequency treat them alike. Target: ratio <= 1.25.

    .venv/bin/python benchmarks/bench_chaining.py [--instances 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pydicom

from dicom_chain.block import GENESIS_HASH, Block, BlockHeader, utc_now
from dicom_chain.carriers.dicom.carrier import DICOM
from dicom_chain.keys import NodeKey
from dicom_chain.synthetic import StudySpec, ct_study

TARGET_RATIO = 1.25


def plain(files: list[Path], out: Path) -> None:
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        pydicom.dcmwrite(out / f"{i}.dcm", ds, enforce_file_format=True)


def chained(files: list[Path], out: Path, key: NodeKey, splice: bool = True) -> None:
    """What Node.ingest does for each file, minus the ledger and fsync: the chaining work itself,
    through the DICOM carrier as the node calls it (parse, hash, identity and checks, block in).

    ``splice=False`` forces the fallback (pydicom re-encodes the dataset), to show what splicing saves.
    """
    prev, study_prev = GENESIS_HASH, GENESIS_HASH
    for i, path in enumerate(files):
        carried = DICOM.open(path.read_bytes())
        item = (carried if splice else DICOM.dataset(carried.dataset)).item()
        header = BlockHeader(
            version=item.carrier.block_format,
            chain_id="bench",
            height=i,
            prev_hash=prev,
            content_hash=item.content_hash,
            timestamp=utc_now(),
            institution="Benchmark Hospital",
            key_id=key.key_id,
            sop_instance_uid=item.identity.item_id,
            study_instance_uid=item.identity.group_id,
            study_index=i,
            study_prev_hash=study_prev,
        )
        block = Block.sign(header, key)
        with open(out / f"{i}.dcm", "wb") as fp:
            fp.writelines(item.with_block(block))
        prev = study_prev = block.hash


def sha256_only(files: list[Path], out: Path) -> None:
    """Plain read + write plus one SHA-256 over the pixel data: the floor any content hash pays."""
    for i, path in enumerate(files):
        ds = pydicom.dcmread(path)
        hashlib.sha256(ds.get_item(0x7FE00010).value).digest()
        pydicom.dcmwrite(out / f"{i}.dcm", ds, enforce_file_format=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    key = NodeKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        files = []
        for i, ds in enumerate(ct_study(StudySpec(seed=11, instances=args.instances, rows=512, columns=512))):
            path = src / f"{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        runs = {
            "plain": lambda out: plain(files, out),
            "sha256": lambda out: sha256_only(files, out),
            "chained": lambda out: chained(files, out, key),
            "fallback": lambda out: chained(files, out, key, splice=False),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for mode in order:
                out = root / f"{mode}-{r}"
                out.mkdir()
                start = time.perf_counter()
                runs[mode](out)
                times[mode].append(time.perf_counter() - start)
                shutil.rmtree(out)
    base, chain = statistics.median(times["plain"]), statistics.median(times["chained"])
    floor, fallback = statistics.median(times["sha256"]), statistics.median(times["fallback"])
    ratio = chain / base
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"study: {args.instances} x 512x512 CT, {size_mb:.0f} MB; median of {args.rounds} rounds each")
    print(f"plain read+write      {base:6.2f} s  {args.instances / base:7.1f} inst/s")
    print(f"read+sha256+write     {floor:6.2f} s  {args.instances / floor:7.1f} inst/s  (floor: hash alone)")
    print(f"read+chain+write      {chain:6.2f} s  {args.instances / chain:7.1f} inst/s  (block spliced in)")
    print(
        f"  same, pydicom write {fallback:6.2f} s  {args.instances / fallback:7.1f} inst/s  (fallback path)"
    )
    verdict = "OK" if ratio <= TARGET_RATIO else "MISSED"
    print(f"ratio chained/plain   {ratio:6.3f}  (target <= {TARGET_RATIO})  {verdict}")
    print(f"ratio fallback/plain  {fallback / base:6.3f}   ratio sha256-floor/plain {floor / base:6.3f}")


if __name__ == "__main__":
    main()
