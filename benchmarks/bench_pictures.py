"""Picture chains: embed and verify, per method and format, against Pillow's plain open + save.

For each format, one set of key images (512 x 512: 8-bit grey PNG, RGB JPEG, 16-bit grey TIFF,
each a disc on a black background, as a rendered CT looks). Each round times, on the same files:
- the baseline: Pillow opens each picture, decodes it and saves it again in its format;
- embed (read, hash, sign, write the chained file) by each method the format takes;
- verify of the chained set.
Rounds alternate, so that the cache and the CPU's frequency treat every row alike. Reported as
medians, and as ratios against the baseline of the same round. Target: metadata embed <= 1.2x.

    .venv/bin/python benchmarks/bench_pictures.py [--pictures 40] [--rounds 5] [--size 512]
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from dicom_chain.carriers.picture import chain
from dicom_chain.keys import NodeKey

TARGET_RATIO = 1.2  # metadata embed against plain open + save
FORMATS = {"png": ("PNG", "L"), "jpeg": ("JPEG", "RGB"), "tiff": ("TIFF", "I;16")}
METHODS = {"png": ("metadata", "watermark", "reversible"), "jpeg": ("metadata",),
           "tiff": ("metadata", "watermark", "reversible")}  # fmt: skip


def key_images(fmt: str, n: int, size: int) -> list[bytes]:
    pil, mode = FORMATS[fmt]
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size]
    disc = (y - size / 2) ** 2 + (x - size / 2) ** 2 < (size * 0.35) ** 2
    top = 65535 if mode == "I;16" else 255
    out = []
    for _ in range(n):
        grey = np.where(disc, rng.integers(top // 4, top // 2, (size, size)), 0)
        array = (
            np.stack([grey] * 3, -1).astype(np.uint8)
            if mode == "RGB"
            else grey.astype(np.uint16 if mode == "I;16" else np.uint8)
        )
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format=pil)
        out.append(buf.getvalue())
    return out


def plain(fmt: str, files: list[Path], out: Path) -> None:
    for path in files:
        with Image.open(path) as image:
            image.load()
            image.save(out / path.name, format=FORMATS[fmt][0])


def embed(method: str, files: list[Path], out: Path, key: NodeKey) -> None:
    made = chain.embed(
        [(p.name, p.read_bytes()) for p in files], method=method, chain="bench", key=key, institution="Bench"
    )
    for path, (data, _) in zip(files, made, strict=True):
        (out / path.name).write_bytes(data)


def verify(files: list[Path], key: NodeKey) -> None:
    report = chain.verify([(str(p), p.read_bytes()) for p in files], frozenset({key.public_key}))
    if not report.ok:
        raise SystemExit(f"verify failed: {report.errors[:3]}")


def timed(work: Callable[[], None]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pictures", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    key = NodeKey.generate()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}; {args.pictures} pictures "
          f"of {args.size} x {args.size} per format, {args.rounds} rounds")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-pictures-") as tmp:
        root = Path(tmp)
        rows: dict[str, list[float]] = {}
        ratios: dict[str, list[float]] = {}
        for fmt in FORMATS:
            src = root / fmt
            src.mkdir()
            files = []
            for i, data in enumerate(key_images(fmt, args.pictures, args.size)):
                files.append(src / f"{i:04d}.{fmt}")
                files[-1].write_bytes(data)
            for r in range(args.rounds):
                out = root / f"{fmt}-plain-{r}"
                out.mkdir()
                base = timed(lambda fmt=fmt, out=out, files=files: plain(fmt, files, out))
                rows.setdefault(f"{fmt} plain open+save", []).append(base)
                for method in METHODS[fmt]:
                    out = root / f"{fmt}-{method}-{r}"
                    out.mkdir()
                    t = timed(lambda method=method, out=out, files=files: embed(method, files, out, key))
                    chained = sorted(out.iterdir())
                    v = timed(lambda chained=chained: verify(chained, key))
                    rows.setdefault(f"{fmt} {method} embed", []).append(t)
                    rows.setdefault(f"{fmt} {method} verify", []).append(v)
                    ratios.setdefault(f"{fmt} {method} embed / plain", []).append(t / base)
                    ratios.setdefault(f"{fmt} {method} verify / plain", []).append(v / base)
        print("| run | pictures/s median [range] |\n| --- | --- |")
        for name, secs in rows.items():
            rates = [args.pictures / s for s in secs]
            print(f"| {name} | {statistics.median(rates):.0f} [{min(rates):.0f}-{max(rates):.0f}] |")
        print("\n| ratio (time) | median [range] | target | met |\n| --- | --- | --- | --- |")
        for name, values in ratios.items():
            target = f"<= {TARGET_RATIO}" if "metadata embed" in name else ""
            met = ("yes" if statistics.median(values) <= TARGET_RATIO else "NO") if target else ""
            spread = f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"
            print(f"| {name} | {spread} | {target} | {met} |")


if __name__ == "__main__":
    main()
