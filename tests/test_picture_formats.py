"""Where each picture format holds the block, and what its content hash covers (carriers/picture)."""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dicom_chain.carriers.picture import FORMATS, format_of, jpeg, png, tiff
from dicom_chain.carriers.picture.pixels import pixels_hash
from dicom_chain.errors import (
    DicomChainError,
    MalformedBlockError,
    MalformedPictureError,
    NoBlockError,
    UnknownFormatError,
)

from .conftest import MALFORMED

BLOCK = b'{"header":{"version":2},"public_key":"00","signature":"00"}'


def picture(fmt: str, mode: str = "L", size: tuple[int, int] = (37, 23), seed: int = 1, **save) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "RGB":
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    else:
        image = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format={"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}[fmt], **save)
    return out.getvalue()


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "key image"  # ImageDescription
    return exif.tobytes()


CASES = [
    ("png", "L", {}),
    ("png", "I;16", {}),
    ("png", "RGB", {"optimize": True}),
    ("jpeg", "L", {}),
    ("jpeg", "RGB", {"quality": 80}),
    ("jpeg", "RGB", {"exif": _exif()}),  # APP1 stays first
    ("tiff", "L", {}),
    ("tiff", "I;16", {}),
    ("tiff", "RGB", {"compression": "tiff_lzw"}),
]
MODULES = {m.NAME: m for m in FORMATS}


@pytest.mark.parametrize("fmt, mode, save", CASES, ids=[f"{c[0]}-{c[1]}-{len(c[2])}" for c in CASES])
def test_a_block_goes_in_reads_back_and_leaves_content_and_pixels_alone(fmt, mode, save):
    data = picture(fmt, mode, **save)
    module = MODULES[fmt]
    assert format_of(data) is module
    with pytest.raises(NoBlockError):
        module.read_block(data)
    chained = module.with_block(data, BLOCK)
    assert module.read_block(chained) == BLOCK
    assert module.content_hash(chained) == module.content_hash(data)  # the block is left out
    assert pixels_hash(chained) == pixels_hash(data)
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(chained))), np.asarray(Image.open(io.BytesIO(data)))
    )
    again = module.with_block(chained, BLOCK[::-1])  # a block replaced, never two
    assert module.read_block(again) == BLOCK[::-1] and module.content_hash(again) == module.content_hash(data)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff"])
def test_a_byte_changed_outside_the_block_moves_the_content_hash(fmt):
    module = MODULES[fmt]
    chained = bytearray(module.with_block(picture(fmt, "L", size=(64, 64)), BLOCK))
    at = len(chained) - (30 if fmt != "tiff" else len(chained) // 2)  # in the pixels (TIFF: its strip)
    if fmt == "tiff":
        at = _strip_byte(bytes(chained))
    before = module.content_hash(bytes(chained))
    chained[at] ^= 0x01
    assert module.content_hash(bytes(chained)) != before


def _strip_byte(data: bytes) -> int:
    image = Image.open(io.BytesIO(data))
    return int(image.tag_v2[273][0]) + 5


def test_the_png_block_is_the_chunk_right_after_ihdr():
    chained = png.with_block(picture("png"), BLOCK)
    kinds = [kind for kind, _, _ in png.chunks(chained)]
    assert kinds[:2] == [b"IHDR", b"iTXt"] and kinds.index(b"IDAT") > 1
    assert Image.open(io.BytesIO(chained)).text == {"DICOM_CHAIN": BLOCK.decode()}  # Pillow reads it too


def test_a_png_block_failing_its_crc_or_given_twice_is_malformed():
    chained = bytearray(png.with_block(picture("png"), BLOCK))
    _, start, stop = next(c for c in png.chunks(bytes(chained)) if c[0] == b"iTXt")
    twice = bytes(chained[:stop]) + bytes(chained[start:stop]) + bytes(chained[stop:])
    with pytest.raises(MalformedBlockError):
        png.read_block(twice)
    chained[start + 20] ^= 0xFF
    with pytest.raises(MalformedBlockError):
        png.read_block(bytes(chained))


def test_a_jpeg_block_is_read_from_the_comment_when_its_app10_segment_is_gone():
    """A tool that keeps comments but drops unknown APP segments (Pillow's re-save does)."""
    chained = jpeg.with_block(picture("jpeg", "RGB"), BLOCK)
    markers = [m for m, _, _ in jpeg.segments(chained)]
    assert markers[:3] == [0xE0, jpeg.APP10, jpeg.COM]  # after JFIF, before the tables
    assert Image.open(io.BytesIO(chained)).info["comment"] == jpeg.COM_PREFIX + BLOCK
    app = next((s, e) for m, s, e in jpeg.segments(chained) if m == jpeg.APP10)
    only_comment = chained[: app[0]] + chained[app[1] :]
    assert jpeg.read_block(only_comment) == BLOCK
    assert jpeg.content_hash(only_comment) == jpeg.content_hash(chained)
    com = next((s, e) for m, s, e in jpeg.segments(chained) if m == jpeg.COM)
    other = chained[: com[0]] + jpeg._segment(jpeg.COM, jpeg.COM_PREFIX + b"{}") + chained[com[1] :]
    with pytest.raises(MalformedBlockError):
        jpeg.read_block(other)  # the two disagree


def test_the_tiff_block_is_a_tag_of_the_first_ifd_and_no_byte_moves():
    data = picture("tiff", "I;16")
    chained = tiff.with_block(data, BLOCK)
    assert chained[8 : len(data)] == data[8 : len(data)]  # only the header's IFD offset changed
    image = Image.open(io.BytesIO(chained))
    assert image.tag_v2[tiff.TAG] == BLOCK and image.tag_v2.tagtype[tiff.TAG] == tiff.UNDEFINED


def test_a_big_endian_tiff_takes_a_block_too():
    data = picture("tiff", "L")
    swapped = _big_endian_copy(data)
    assert swapped[:2] == b"MM"
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(swapped))), np.asarray(Image.open(io.BytesIO(data)))
    )
    chained = tiff.with_block(swapped, BLOCK)
    assert tiff.read_block(chained) == BLOCK and tiff.content_hash(chained) == tiff.content_hash(swapped)
    assert Image.open(io.BytesIO(chained)).tag_v2[tiff.TAG] == BLOCK


def _big_endian_copy(data: bytes) -> bytes:
    """The same one-IFD, 8-bit TIFF written big-endian, by hand (Pillow writes little-endian)."""
    entries, _ = tiff._ifd(data, "<", struct.unpack_from("<I", data, 4)[0])
    out = bytearray(b"MM\x00*\x00\x00\x00\x00")
    offsets = {}
    image = b"".join(tiff._image_data(data, "<", entries))
    offsets["strip"] = len(out)
    out += image
    values = []
    for e in entries:
        if e.tag == tiff.STRIP_OFFSETS:
            value = struct.pack(">I", offsets["strip"]) if e.count == 1 else None
            assert value is not None
            e = tiff._Entry(e.tag, 4, 1, value)
        elif e.tag == tiff.STRIP_BYTE_COUNTS:
            e = tiff._Entry(e.tag, 4, 1, struct.pack(">I", len(image)))
        else:
            size = tiff.TYPE_SIZES[e.kind]
            code = {1: "B", 2: "B", 3: "H", 4: "I", 7: "B"}[e.kind] if e.kind != 5 else "I"
            n = e.count * (2 if e.kind == 5 else 1)
            e = tiff._Entry(
                e.tag, e.kind, e.count, struct.pack(f">{n}{code}", *struct.unpack(f"<{n}{code}", e.value))
            )
            assert len(e.value) == size * e.count
        values.append(e)
    placed = []
    for e in values:
        if len(e.value) > 4:
            placed.append(struct.pack(">I", len(out)))
            out += e.value + (b"\x00" if len(e.value) % 2 else b"")
        else:
            placed.append(e.value.ljust(4, b"\x00"))
    at = len(out)
    out += struct.pack(">H", len(values))
    for e, v in zip(values, placed, strict=True):
        out += struct.pack(">HHI", e.tag, e.kind, e.count) + v
    out += b"\x00\x00\x00\x00"
    out[4:8] = struct.pack(">I", at)
    return bytes(out)


def _parsers():
    for module in FORMATS:
        yield module.read_block
        yield module.content_hash
        yield lambda data, m=module: m.with_block(data, BLOCK)


@settings(max_examples=150, deadline=None)
@given(
    fmt=st.sampled_from(["png", "jpeg", "tiff"]),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4),
)
def test_cut_or_garbled_pictures_get_named_errors_only(fmt, cut, flips):
    """Every parser, on pictures cut short or with bytes changed: a DicomChainError or a result."""
    data = bytearray(MODULES[fmt].with_block(picture(fmt, "L", size=(16, 16)), BLOCK))
    for where, xor in flips:
        data[int(where * (len(data) - 1))] ^= xor
    data = bytes(data[: max(8, int(cut * len(data)))])
    for parse in _parsers():
        with contextlib.suppress(DicomChainError):
            parse(data)


@pytest.mark.parametrize("path", sorted(MALFORMED.glob("*")), ids=lambda p: p.name)
def test_every_malformed_input_gets_a_named_error_from_every_picture_parser(path: Path):
    data = path.read_bytes()
    if not any(m.recognises(data[:8]) for m in FORMATS):
        with pytest.raises(UnknownFormatError):
            format_of(data)
    for parse in _parsers():
        with contextlib.suppress(MalformedPictureError, NoBlockError, MalformedBlockError):
            parse(data)


def build_tiff(
    ifds: list[list[tuple[int, int, int, bytes]]], image: bytes, subifd: list | None = None
) -> bytes:
    """A little-endian TIFF written by hand: ``image`` as one strip, then each IFD (entries given
    as tag, type, count, value bytes; 273/279 filled in for the strip), chained; ``subifd``, if
    given, is pointed to by tag 34665 (Exif) in the first IFD."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    strip_at = len(out)
    out += image + (b"\x00" if len(image) % 2 else b"")
    sub_at = None
    if subifd is not None:
        sub_at = _write_ifd(out, subifd, 0)
    prev_link = 4
    for entries in ifds:
        layout = [(273, 4, 1, struct.pack("<I", strip_at)), (279, 4, 1, struct.pack("<I", len(image)))]
        full = [*entries, *layout]
        if sub_at is not None and prev_link == 4:
            full.append((34665, 4, 1, struct.pack("<I", sub_at)))
        at = _write_ifd(out, sorted(full, key=lambda e: e[0]), 0)
        out[prev_link : prev_link + 4] = struct.pack("<I", at)
        prev_link = at + 2 + 12 * len(full)
    return bytes(out)


def _write_ifd(out: bytearray, entries: list, following: int) -> int:
    placed = []
    for _, _, _, value in entries:
        if len(value) > 4:
            placed.append(struct.pack("<I", len(out)))
            out += value + (b"\x00" if len(value) % 2 else b"")
        else:
            placed.append(value.ljust(4, b"\x00"))
    at = len(out)
    out += struct.pack("<H", len(entries))
    for (tag, kind, count, _), value in zip(entries, placed, strict=True):
        out += struct.pack("<HHI", tag, kind, count) + value
    out += struct.pack("<I", following)
    return at


GREY_8X8 = [
    (256, 3, 1, struct.pack("<H", 8)),  # width
    (257, 3, 1, struct.pack("<H", 8)),  # height
    (258, 3, 1, struct.pack("<H", 8)),  # bits per sample
    (259, 3, 1, struct.pack("<H", 1)),  # no compression
    (262, 3, 1, struct.pack("<H", 1)),  # black is zero
    (278, 3, 1, struct.pack("<H", 8)),  # rows per strip
]
SOFTWARE = (305, 2, 4, b"abc\x00")


def test_a_hand_built_tiff_reads_as_pillow_reads_it():
    data = build_tiff([GREY_8X8], bytes(range(64)))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))).reshape(-1), np.arange(64))
    assert tiff.read_block(tiff.with_block(data, BLOCK)) == BLOCK


def test_a_repeated_or_unordered_tiff_tag_is_refused():
    """A reader takes the first StripOffsets, a hash that took the last would vouch for others."""
    good = build_tiff([GREY_8X8], bytes(range(64)))
    first = struct.unpack_from("<I", good, 4)[0]
    n = struct.unpack_from("<H", good, first)[0]
    entries = [good[first + 2 + 12 * i : first + 14 + 12 * i] for i in range(n)]
    twice = bytearray(good)
    twice[first + 2 + 12 * 1 : first + 14 + 12 * 1] = entries[0]  # the first tag again, second
    with pytest.raises(MalformedPictureError, match="repeated or out of order"):
        tiff.content_hash(bytes(twice))


def test_what_a_pointer_tag_leads_to_is_content():
    """Exif's IFD, reached through tag 34665: a date changed there changes the content hash."""
    date = b"2020:01:01 00:00:00\x00"
    exif = [(0x9003, 2, 20, date)]
    data = build_tiff([GREY_8X8], bytes(range(64)), subifd=exif)
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(0x8769)[0x9003] == "2020:01:01 00:00:00"
    other = data.replace(date, b"2024:12:31 00:00:00\x00")
    assert tiff.content_hash(other) != tiff.content_hash(data)
    assert tiff.content_hash(tiff.with_block(data, BLOCK)) == tiff.content_hash(data)


def test_where_one_ifd_ends_and_the_next_begins_is_content():
    """The same entries and strips split differently between two IFDs: another content hash (an
    entry moved from the first IFD to the second makes the first unreadable as an image)."""
    image = bytes(range(64))
    one = build_tiff([GREY_8X8, [SOFTWARE]], image)
    split = build_tiff([GREY_8X8[:-1], [GREY_8X8[-1], SOFTWARE]], image)
    assert tiff.content_hash(one) != tiff.content_hash(split)


def test_a_fill_byte_before_our_segment_still_finds_it_and_eoi_before_a_scan_is_refused():
    chained = jpeg.with_block(picture("jpeg", "RGB"), BLOCK)
    app = next(s for m, s, _ in jpeg.segments(chained) if m == jpeg.APP10)
    filled = chained[:app] + b"\xff" + chained[app:]  # T.81 B.1.1.2: any number of FF before a marker
    assert jpeg.read_block(filled) == BLOCK
    assert jpeg.read_block(jpeg.with_block(filled, BLOCK[::-1])) == BLOCK[::-1]  # replaced, not doubled
    with pytest.raises(MalformedPictureError, match="before any scan"):
        list(jpeg.segments(b"\xff\xd8\xff\xd9"))
