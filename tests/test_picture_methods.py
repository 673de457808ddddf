"""The pixel methods (carriers/picture/watermark.py, reversible.py): round trips on 8-bit and 16-bit
grey and RGB, capacity, what each detects, and the reversible method's bit-exact restore."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dicom_chain.carriers.picture import chain, format_of, reversible, watermark
from dicom_chain.carriers.picture.pixels import pixels_hash
from dicom_chain.cli import main
from dicom_chain.errors import MethodRefusedError
from dicom_chain.keys import NodeKey

from .test_picture_formats import picture

KEY = NodeKey.generate()
TRUSTED = frozenset({KEY.public_key})
PIL = {"png": "PNG", "tiff": "TIFF", "jpeg": "JPEG"}
LOSSLESS_CASES = [(f, m) for f in ("png", "tiff") for m in ("L", "I;16", "RGB")]


def key_image(fmt: str, mode: str, seed: int = 0, size: int = 128) -> bytes:
    """What a key image rendered from a CT looks like: a disc of tissue on a black background
    (the background is the histogram's peak the reversible method writes into)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    disc = (y - size / 2) ** 2 + (x - size / 2) ** 2 < (size * 0.3) ** 2
    top = 65535 if mode == "I;16" else 255
    grey = np.where(disc, rng.integers(top // 4, top // 2 + 1, (size, size)), 0)
    if mode == "RGB":
        array = np.stack([grey, grey, np.where(disc, grey // 2, 0)], axis=-1).astype(np.uint8)
    else:
        array = grey.astype(np.uint16 if mode == "I;16" else np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=PIL[fmt])
    return out.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.int64)


def chained(method: str, fmt: str, mode: str, n: int = 3) -> list[tuple[str, bytes]]:
    made = chain.embed(
        [(f"k{i}.{fmt}", key_image(fmt, mode, seed=i)) for i in range(n)],
        method=method, chain=f"{method}-{fmt}", key=KEY, institution="Test Hospital",
    )  # fmt: skip
    return [(f"k{i}", data) for i, (data, _) in enumerate(made)]


@pytest.mark.parametrize("method", ["watermark", "reversible"])
@pytest.mark.parametrize("fmt, mode", LOSSLESS_CASES)
def test_each_pixel_method_round_trips_moving_no_sample_by_more_than_one(method, fmt, mode):
    files = chained(method, fmt, mode)
    report = chain.verify(files, TRUSTED)
    assert report.ok and report.blocks_checked == 3, [(f.kind, f.message) for f in report.errors]
    for i, (_, data) in enumerate(files):
        block = chain.read_block(data)
        assert block.header.picture is not None and block.header.picture.method == method
        assert Image.open(io.BytesIO(data)).mode == mode
        change = np.abs(pixels(data) - pixels(key_image(fmt, mode, seed=i))).reshape(-1)
        assert change.max() == 1
        if method == "watermark":  # only where the payload's bits went, in raster order
            assert np.flatnonzero(change).max() < watermark.samples_needed(len(block.to_bytes()))


@pytest.mark.parametrize("fmt, mode", LOSSLESS_CASES)
def test_reversible_restores_the_original_pixels_bit_for_bit(fmt, mode):
    files = chained("reversible", fmt, mode, n=2)
    for i, (_, data) in enumerate(files):
        restored, block = chain.restore(data)
        original = key_image(fmt, mode, seed=i)
        assert np.array_equal(pixels(restored), pixels(original))
        assert pixels_hash(restored) == pixels_hash(original) == block.header.picture.pixels_hash


@pytest.mark.parametrize("method", ["watermark", "reversible"])
def test_a_lossy_format_is_refused_for_the_pixel_methods(method):
    with pytest.raises(MethodRefusedError, match="JPEG is lossy"):
        chain.embed([("k.jpg", picture("jpeg", "RGB", size=(200, 200)))], method=method, chain="j", key=KEY,
                    institution="T")  # fmt: skip


def test_watermark_capacity_is_one_sample_a_bit():
    assert watermark.samples_needed(1000) == 8064  # DCHN, a length, the block: a 90 x 90 grey picture
    block_bytes = len(chain.embed([("k", key_image("png", "L"))], method="watermark", chain="cap", key=KEY,
                                  institution="T")[0][1].to_bytes())  # fmt: skip
    side = int(np.ceil(np.sqrt(watermark.samples_needed(block_bytes))))
    fits = chain.embed([("k", picture("png", "L", size=(side, side)))], method="watermark", chain="cap",
                       key=KEY, institution="T")  # fmt: skip
    assert chain.verify([("k", fits[0][0])], TRUSTED).ok
    smaller = picture("png", "L", size=(side - 12, side - 12))
    with pytest.raises(MethodRefusedError, match="too small"):
        chain.embed([("k", smaller)], method="watermark", chain="cap", key=KEY, institution="T")


def test_reversible_capacity_is_the_peak_and_needs_an_empty_bin():
    noise = picture("png", "L", size=(128, 128))  # every value taken
    with pytest.raises(MethodRefusedError, match="no empty histogram bin"):
        chain.embed([("n", noise)], method="reversible", chain="cap", key=KEY, institution="T")
    small = key_image("png", "L", size=60)  # a background of about 2,000 samples: too few carriers
    with pytest.raises(MethodRefusedError, match="occurs"):
        chain.embed([("s", small)], method="reversible", chain="cap", key=KEY, institution="T")


@pytest.mark.parametrize("method", ["watermark", "reversible"])
def test_a_pixel_changed_is_found_and_a_lossless_re_encoding_is_not_a_change(method):
    files = chained(method, "png", "L", n=3)
    name, data = files[1]
    image = np.asarray(Image.open(io.BytesIO(data))).copy()
    image[64, 64] ^= 0x40  # in the disc, well above the lowest bit
    edited = io.BytesIO()
    Image.fromarray(image).save(edited, format="PNG")
    report = chain.verify([files[0], (name, edited.getvalue()), files[2]], TRUSTED)
    assert ("altered", name) in {(f.kind.value, f.path) for f in report.errors}
    resaved = io.BytesIO()
    Image.open(io.BytesIO(data)).save(resaved, format="PNG", compress_level=1)  # the block is in the pixels
    report = chain.verify([files[0], (name, resaved.getvalue()), files[2]], TRUSTED)
    assert [(f.kind.value, f.path) for f in report.errors] == [
        ("broken-link", files[2][0])
    ]  # the file did change


def test_a_watermark_block_read_back_through_its_own_functions():
    data = key_image("tiff", "I;16")
    module = format_of(data)
    marked = watermark.embed(module, data, b"hello block")
    assert watermark.read_block(module, marked) == b"hello block"
    hidden = reversible.embed(module, data, b"hello block")
    assert reversible.read_block(module, hidden) == b"hello block"
    assert np.array_equal(pixels(reversible.restore(module, hidden)), pixels(data))


def test_restore_on_the_command_line(tmp_path: Path):
    source = tmp_path / "key.png"
    source.write_bytes(key_image("png", "RGB", seed=4))
    out = tmp_path / "chained"
    runner = CliRunner()
    made = runner.invoke(main, ["imagechain", "embed", "--home", str(tmp_path / "h"), "--chain", "c",
                                "--method", "reversible", "--output", str(out), str(source)])  # fmt: skip
    assert made.exit_code == 0, made.output
    back = runner.invoke(
        main, ["imagechain", "restore", "--output", str(tmp_path / "back.png"), str(out / "key.png")]
    )
    assert back.exit_code == 0, back.output
    assert np.array_equal(pixels((tmp_path / "back.png").read_bytes()), pixels(source.read_bytes()))
    meta = runner.invoke(main, ["imagechain", "embed", "--home", str(tmp_path / "h"), "--chain", "m",
                                "--output", str(tmp_path / "m"), str(source)])  # fmt: skip
    assert meta.exit_code == 0
    refused = runner.invoke(main, ["imagechain", "restore", "--output", str(tmp_path / "x.png"),
                                   str(tmp_path / "m" / "key.png")])  # fmt: skip
    assert refused.exit_code == 1 and "only reversible" in refused.output


def sixteen_bit_rgb_png(width: int = 40, height: int = 30) -> bytes:
    """A 16-bit RGB PNG written by hand (Pillow reads it as 8-bit RGB, and would write it so)."""
    import struct
    import zlib

    rng = np.random.default_rng(3)
    rows = rng.integers(0, 65536, (height, width * 3), dtype=np.uint16).astype(">u2").tobytes()
    raw = b"".join(b"\x00" + rows[y * width * 6 : (y + 1) * width * 6] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("method", ["watermark", "reversible"])
def test_sixteen_bit_colour_is_refused_rather_than_cut_to_eight(method):
    data = sixteen_bit_rgb_png()
    assert Image.open(io.BytesIO(data)).mode == "RGB"  # what Pillow makes of it
    with pytest.raises(MethodRefusedError, match="16-bit samples"):
        chain.embed([("c.png", data)], method=method, chain="deep", key=KEY, institution="T")
    made = chain.embed([("c.png", data)], method="metadata", chain="deep", key=KEY, institution="T")
    assert chain.verify([("c.png", made[0][0])], TRUSTED).ok  # the metadata method keeps every bit
