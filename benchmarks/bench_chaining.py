"""Chaining overhead: read + hash + sign + embed + write, against plain pydicom read + write.

Both are measured in the same run on the same 300-instance 512x512 CT study (synthetic, 16-bit),
alternating rounds so that disk cache and CPU frequency treat them alike. Target: ratio <= 1.25.

Then compressed inputs: a CT slice, an RGB image and a multi-frame, each compressed losslessly
with every syntax the version 2 content hash decodes, and per syntax the content hash (v2) against
decoding alone with the decoder the hash uses, against hashing the uncompressed instance (v2) and
against version 1 (which hashes the compressed fragments as they are), in the same rounds.

    .venv/bin/python benchmarks/bench_chaining.py [--instances 300] [--rounds 5]
        [--only study|compressed] [--calls 10] [--frames 16]
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless

from dicom_chain.block import GENESIS_HASH, Block, BlockHeader, utc_now
from dicom_chain.carriers.dicom.canonical import content_hash
from dicom_chain.carriers.dicom.carrier import DICOM
from dicom_chain.keys import NodeKey
from dicom_chain.synthetic import StudySpec, ct_study, uid_for

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
    parser.add_argument("--only", choices=("study", "compressed"), help="run one of the two parts")
    parser.add_argument("--calls", type=int, default=10, help="calls per mode and round, single frames")
    parser.add_argument("--frames", type=int, default=16, help="frames of the multi-frame instance")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    if args.only != "compressed":
        study(args.instances, args.rounds)
    if args.only != "study":
        compressed(args.rounds, args.calls, args.frames)


def study(instances: int, rounds: int) -> None:
    key = NodeKey.generate()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        files = []
        for i, ds in enumerate(ct_study(StudySpec(seed=11, instances=instances, rows=512, columns=512))):
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
        for r in range(rounds):
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
    print(f"study: {instances} x 512x512 CT, {size_mb:.0f} MB; median of {rounds} rounds each")
    print(f"plain read+write      {base:6.2f} s  {instances / base:7.1f} inst/s")
    print(f"read+sha256+write     {floor:6.2f} s  {instances / floor:7.1f} inst/s  (floor: hash alone)")
    print(f"read+chain+write      {chain:6.2f} s  {instances / chain:7.1f} inst/s  (block spliced in)")
    print(f"  same, pydicom write {fallback:6.2f} s  {instances / fallback:7.1f} inst/s  (fallback path)")
    verdict = "OK" if ratio <= TARGET_RATIO else "MISSED"
    print(f"ratio chained/plain   {ratio:6.3f}  (target <= {TARGET_RATIO})  {verdict}")
    print(f"ratio fallback/plain  {fallback / base:6.3f}   ratio sha256-floor/plain {floor / base:6.3f}")


# Compressed inputs: what the version 2 content hash pays to hash lossless pixels by value.

MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# Each syntax the hash decodes, and how a PACS would make it: DCMTK, or pydicom where DCMTK has no
# lossless encoder (JPEG 2000).
SYNTAXES = (
    ("JPEG-LS lossless", ("dcmcjpls", "+el")),
    ("JPEG lossless SV1", ("dcmcjpeg", "+e1")),
    ("RLE lossless", ("dcmcrle",)),
    ("JPEG 2000 lossless", None),
)


@dataclass
class Case:
    """One instance, uncompressed and compressed in one syntax, as file bytes (parsed afresh for
    every timed call, outside the timing, so that no call finds what an earlier one decoded)."""

    instance: str
    syntax: str
    native: bytes
    encoded: bytes
    calls: int


def _instances(frames: int) -> list[tuple[str, Dataset, int]]:
    """A signed 12-bit CT slice, an 8-bit RGB image and a multi-frame (name, dataset, frames)."""
    ct = next(iter(ct_study(StudySpec(seed=11, instances=1, rows=512, columns=512))))
    signed = np.clip(ct.pixel_array.astype(np.int16) - 1024, -2048, 2047)
    ct.PixelRepresentation = 1
    ct.RescaleIntercept = "0"
    ct.PixelData = signed.astype("<i2").tobytes()

    rgb = _derived(ct, "rgb", SECONDARY_CAPTURE)
    y, x = np.mgrid[0:512, 0:512]
    noise = np.random.default_rng(5).normal(0, 6, size=(512, 512, 3))
    disc = ((y - 256) ** 2 + (x - 300) ** 2) < 150**2
    base = np.stack([x / 2, y / 2, 128 + 60 * np.sin(x / 40) * np.cos(y / 50)], axis=-1)
    image = np.where(disc[..., None], [200, 90, 60], base) + noise
    rgb.SamplesPerPixel = 3
    rgb.PhotometricInterpretation = "RGB"
    rgb.PlanarConfiguration = 0
    rgb.BitsAllocated, rgb.BitsStored, rgb.HighBit, rgb.PixelRepresentation = 8, 8, 7, 0
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        delattr(rgb, keyword)
    rgb.PixelData = np.clip(image, 0, 255).astype(np.uint8).tobytes()
    rgb["PixelData"].VR = "OB"

    multi = _derived(ct, "multi", MULTIFRAME_WORD_SC)
    slices = ct_study(StudySpec(seed=12, instances=frames, rows=512, columns=512))
    multi.NumberOfFrames = frames
    multi.PixelRepresentation = 0
    multi.PixelData = b"".join(s.PixelData for s in slices)
    return [
        ("CT 512x512 12/16 signed", ct, 1),
        ("RGB 512x512 8-bit", rgb, 1),
        (f"{frames} frames 512x512 12/16", multi, frames),
    ]


def _derived(ds: Dataset, name: str, sop_class: str) -> Dataset:
    new = pydicom.dcmread(BytesIO(_file_bytes(ds)))
    new.SOPClassUID = new.file_meta.MediaStorageSOPClassUID = sop_class
    new.SOPInstanceUID = new.file_meta.MediaStorageSOPInstanceUID = uid_for("bench", name)
    return new


def _file_bytes(ds: Dataset) -> bytes:
    fp = BytesIO()
    ds.save_as(fp, enforce_file_format=True)
    return fp.getvalue()


def _compress(native: bytes, tool: tuple[str, ...] | None, tmp: Path) -> bytes | None:
    """The instance in the syntax ``tool`` writes (None: JPEG 2000 by pydicom); None when the
    DCMTK tool is not installed."""
    if tool is None:
        ds = pydicom.dcmread(BytesIO(native))
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        return _file_bytes(ds)
    if shutil.which(tool[0]) is None:
        return None
    src, dst = tmp / "in.dcm", tmp / "out.dcm"
    src.write_bytes(native)
    subprocess.run([*tool, str(src), str(dst)], check=True, capture_output=True)
    return dst.read_bytes()


def _decode_alone(ds: Dataset) -> None:
    """What the hash decodes, as it decodes it (canonical._decode), and nothing else."""
    get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, raw=True)


def _per_call(data: bytes, op: Callable[[Dataset], object], calls: int) -> float:
    """Mean seconds of ``op`` over ``calls`` freshly parsed datasets; parsing is not timed."""
    total = 0.0
    for _ in range(calls):
        ds = pydicom.dcmread(BytesIO(data))
        start = time.perf_counter()
        op(ds)
        total += time.perf_counter() - start
    return total / calls


def compressed(rounds: int, calls: int, frames: int) -> None:
    cases: list[Case] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for instance, ds, n in _instances(frames):
            native = _file_bytes(ds)
            for syntax, tool in SYNTAXES:
                encoded = _compress(native, tool, Path(tmp))
                if encoded is None:
                    skipped.append(f"{syntax} ({tool[0] if tool else ''} not installed)")
                    continue
                cases.append(Case(instance, syntax, native, encoded, max(2, calls // n)))
    for case in cases:  # lossless: the same hash as the uncompressed instance, or nothing to measure
        same = content_hash(pydicom.dcmread(BytesIO(case.encoded))) == content_hash(
            pydicom.dcmread(BytesIO(case.native))
        )
        if not same:
            raise SystemExit(f"{case.instance}, {case.syntax}: hash differs from the uncompressed one")
    modes: dict[str, Callable[[Case], float]] = {
        "hash": lambda c: _per_call(c.encoded, content_hash, c.calls),
        "decode": lambda c: _per_call(c.encoded, _decode_alone, c.calls),
        "native": lambda c: _per_call(c.native, content_hash, c.calls),
        "v1": lambda c: _per_call(c.encoded, lambda ds: content_hash(ds, version=1), c.calls),
    }
    times: dict[tuple[int, str], list[float]] = {(i, m): [] for i in range(len(cases)) for m in modes}
    for r in range(rounds):  # every case and mode once a round, in alternating order
        order = [(i, mode) for i in range(len(cases)) for mode in modes]
        for i, mode in order if r % 2 == 0 else reversed(order):
            times[i, mode].append(modes[mode](cases[i]))
    print(
        f"compressed inputs: content hash v2 against decoding alone (get_decoder(ts).as_array(raw=True));"
        f" median [min-max] of {rounds} rounds, each the mean of {calls} calls ({max(2, calls // frames)}"
        " for the multi-frame) on freshly parsed datasets"
    )
    print(
        f"{'instance':26} {'syntax':19} {'compr':>5}  {'hash v2 ms':>19}  {'decode ms':>19}  "
        f"{'hash/decode':>19}  {'hash/uncompr. v2':>19}  {'hash/v1 fragments':>21}"
    )
    for i, case in enumerate(cases):
        ratio = len(case.native) / len(case.encoded)  # compression ratio, whole files
        hash_t, decode_t = times[i, "hash"], times[i, "decode"]
        per_round = [
            [h / d for h, d in zip(hash_t, times[i, other], strict=True)]
            for other in ("decode", "native", "v1")
        ]
        print(
            f"{case.instance:26} {case.syntax:19} {ratio:5.2f}  {_mr(hash_t, 1e3, 8.2)}  "
            f"{_mr(decode_t, 1e3, 8.2)}  {_mr(per_round[0], 1, 6.3)}  {_mr(per_round[1], 1, 6.2)}  "
            f"{_mr(per_round[2], 1, 7.1)}"
        )
    for line in skipped:
        print(f"skipped: {line}")


def _mr(values: list[float], scale: float, width: float) -> str:
    """``median [min-max]`` of ``values`` x ``scale``; ``width`` as w.p (w for the median)."""
    w, p = str(width).split(".")
    low, mid, high = (v * scale for v in (min(values), statistics.median(values), max(values)))
    return f"{mid:{w}.{p}f} [{low:.{p}f}-{high:.{p}f}]"


if __name__ == "__main__":
    main()
