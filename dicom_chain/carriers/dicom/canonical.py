"""The content hash: SHA-256 over a canonical encoding of a dataset.

A PACS may re-encode an instance between uncompressed transfer syntaxes or rewrite its file
meta; the hash must not move when that happens, yet move when any value changes. So we hash
values in one fixed byte order, never the VR or the length encoding a syntax chose, and skip
what a hop may legitimately rewrite (file meta, group lengths, trailing padding, our own block).
The exact definition is in docs/design.md; keep the two in step (CANONICAL_VERSION).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from functools import lru_cache
from io import BytesIO
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_sequence
from pydicom.filewriter import write_data_element

from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP, chain_block_tags
from dicom_chain.errors import MalformedDatasetError

CANONICAL_VERSION = 1
DOMAIN = b"DICOM_CHAIN content v1\n"

PIXEL_DATA = 0x7FE00010
TRAILING_PADDING = 0xFFFCFFFC
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_TAG_LE = b"\xfe\xff\x00\xe0"
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
BATCH_LIMIT = 4096  # values below this are joined with their neighbours before hashing
SEQUENCE_DELIMITER = 0xFFFEE0DD
PART10_MAGIC = b"DICM"
PART10_MAGIC_AT = 128
EXPLICIT_VR_BIG_ENDIAN = b"1.2.840.10008.1.2.2"
# VRs with a 4-byte length (and 2 reserved bytes) in explicit VR, PS3.5 7.1.2
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)

# Width of the unit to byte-swap when a value comes from a big endian dataset.
SWAP_WIDTH = {
    "US": 2, "SS": 2, "OW": 2, "AT": 2,
    "UL": 4, "SL": 4, "FL": 4, "OF": 4, "OL": 4,
    "FD": 8, "OD": 8, "SV": 8, "UV": 8, "OV": 8,
}  # fmt: skip
BYTE_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
# Text VRs whose trailing spaces / NULs are padding, not value (PS3.5 6.2).
TEXT_VRS = {
    "AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN",
    "SH", "ST", "TM", "UC", "UI", "UR", "UT",
}  # fmt: skip


def content_hash(ds: Dataset) -> str:
    """Hex SHA-256 of the canonical encoding of ``ds`` (file meta and our block excluded)."""
    h = hashlib.sha256(DOMAIN)
    try:
        _feed_dataset(h, ds, exclude=chain_block_tags(ds))
    except MalformedDatasetError:
        raise
    except Exception as exc:  # pydicom raises many types on garbled values
        raise MalformedDatasetError(f"cannot canonicalise dataset: {exc}") from exc
    return h.hexdigest()


def _feed_dataset(h: Any, ds: Dataset, exclude: frozenset[int] = frozenset()) -> None:
    """Stream the canonical form into ``h``; small pieces are batched into one update."""
    little = _dataset_is_little_endian(ds)
    parts: list[bytes] = []
    pack = struct.pack

    def flush() -> None:
        h.update(b"".join(parts))
        parts.clear()

    for tag in sorted(map(int, ds.keys())):  # plain ints: BaseTag compares in Python, slowly
        if tag >> 16 == 0x0002 or not tag & 0xFFFF or tag == TRAILING_PADDING or tag in exclude:
            continue
        raw = ds.get_item(tag)
        parts.append(pack("<HH", tag >> 16, tag & 0xFFFF))
        if tag == PIXEL_DATA and _is_undefined_length(raw):
            fragments = list(_fragments(_value_bytes(raw)))
            parts.append(b"F" + pack("<I", len(fragments)))
            for fragment in fragments:
                parts.append(pack("<Q", len(fragment)))
                flush()
                h.update(fragment)
            continue
        items = _sequence_items(ds, tag, raw)
        if items is not None:
            parts.append(b"S" + pack("<I", len(items)))
            for item in items:
                sub = hashlib.sha256()
                _feed_dataset(sub, item)
                parts.append(sub.digest())
            continue
        value = _canonical_value(raw, tag, little)
        parts.append(b"V" + pack("<Q", len(value)))
        if len(value) >= BATCH_LIMIT:
            flush()
            h.update(value)  # large values (pixels) go straight in, uncopied
        else:
            parts.append(value)
    flush()


def _dataset_is_little_endian(ds: Dataset) -> bool:
    encoding = getattr(ds, "original_encoding", (None, None))
    return encoding[1] is not False


def _is_undefined_length(raw: RawDataElement | DataElement) -> bool:
    if isinstance(raw, RawDataElement):
        return raw.length == UNDEFINED_LENGTH
    return bool(raw.is_undefined_length)


def _value_bytes(raw: RawDataElement | DataElement) -> bytes:
    value = raw.value
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise MalformedDatasetError(f"element {_fmt(int(raw.tag))} is not a byte value")


def _fragments(value: bytes) -> Iterator[bytes]:
    """Fragments of encapsulated pixel data, the Basic Offset Table left out (a hop may rebuild it)."""
    pos, first = 0, True
    while pos + 8 <= len(value):
        group, element, length = struct.unpack_from("<HHI", value, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == SEQUENCE_DELIMITER:
            return
        if tag != ITEM or pos + length > len(value):
            raise MalformedDatasetError("encapsulated pixel data has a broken item")
        if not first:
            yield value[pos : pos + length]
        first = False
        pos += length
    if pos != len(value):
        raise MalformedDatasetError("encapsulated pixel data ends inside an item header")


def _fmt(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _is_private(tag: int) -> bool:
    return bool((tag >> 16) & 1)


@lru_cache(maxsize=4096)
def _public_vr(tag: int) -> str | None:
    """The public dictionary's single VR for ``tag`` (None: private, unknown or ambiguous)."""
    if _is_private(tag):
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if " or " not in vr else None


def _resolved_vr(tag: int, raw: RawDataElement | DataElement) -> str:
    """VR by the public dictionary where it knows the tag, else as the element states it."""
    return _public_vr(tag) or raw.VR or "UN"


def _sequence_items(ds: Dataset, tag: int, raw: RawDataElement | DataElement) -> list[Dataset] | None:
    explicit = isinstance(raw, RawDataElement) and raw.VR not in (None, "UN", "SQ")
    if explicit and raw.length != UNDEFINED_LENGTH:
        return None  # explicit VR says what it is: the common case, decided without a lookup
    vr = _resolved_vr(tag, raw)
    if isinstance(raw, DataElement):
        if raw.VR == "SQ":
            return list(raw.value)
        if raw.VR == "UN" and isinstance(raw.value, bytes):
            return _parse_un_sequence(raw.value, ds)
        return None
    if raw.VR == "UN" and raw.length != UNDEFINED_LENGTH and isinstance(raw.value, bytes):
        # A UN value is implicit VR little endian whatever the transfer syntax (PS3.5 6.2.2);
        # pydicom would parse a public SQ written as UN in the file's byte order.
        if len(raw.value) != raw.length:  # items cut short must not hash as the items left
            raise MalformedDatasetError(
                f"element {_fmt(tag)} is truncated: {len(raw.value)} of {raw.length} bytes"
            )
        items = _parse_un_sequence(raw.value, ds)
        if items is None and vr == "SQ":
            if raw.value:
                raise MalformedDatasetError(f"element {_fmt(tag)} should be a sequence")
            return []
        return items
    if vr == "SQ" or raw.VR == "SQ" or (raw.VR in (None, "UN") and raw.length == UNDEFINED_LENGTH):
        element = ds[tag]
        if element.VR == "SQ":
            return list(element.value)
        if isinstance(element.value, bytes):
            return _parse_un_sequence(element.value, ds)
        raise MalformedDatasetError(f"element {_fmt(tag)} should be a sequence")
    if raw.VR in (None, "UN") and isinstance(raw.value, bytes):
        return _parse_un_sequence(raw.value, ds)
    return None


def _parse_un_sequence(value: bytes, ds: Dataset) -> list[Dataset] | None:
    """A private sequence that lost its VR on an implicit VR hop is still hashed as a sequence.

    Such bytes are implicit VR little endian items (PS3.5 6.2.2); anything else stays bytes.
    """
    if not value.startswith(ITEM_TAG_LE):
        return None
    try:
        charset = ds.get("SpecificCharacterSet", "ISO_IR 6")
        seq = read_sequence(BytesIO(value), True, True, len(value), charset)
        items = list(seq)
        for item in items:  # parse eagerly, so garbage falls back to bytes here
            for _ in item:
                pass
        return items
    except Exception:
        return None


def _canonical_value(raw: RawDataElement | DataElement, tag: int, little: bool) -> bytes:
    if isinstance(raw, RawDataElement):
        value = bytes(raw.value or b"")
        if raw.length != UNDEFINED_LENGTH and len(value) != raw.length:
            raise MalformedDatasetError(
                f"element {_fmt(tag)} is truncated: {len(value)} of {raw.length} bytes"
            )
        if not raw.is_little_endian:
            value = _swap(value, raw.VR)
    else:
        value = _encode_element(raw, little)
    if _public_vr(tag) in TEXT_VRS:
        value = value.rstrip(b" \x00")
    return value


def _encode_element(elem: DataElement, little: bool) -> bytes:
    """Little endian value bytes of a decoded element, as pydicom would write them."""
    if elem.VR in BYTE_VRS and isinstance(elem.value, bytes | bytearray):
        value = bytes(elem.value)
        return value if little else _swap(value, elem.VR)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_data_element(fp, elem)
    return fp.getvalue()[8:]


def _swap(value: bytes, vr: str | None) -> bytes:
    """Big endian to little endian per the VR's unit (OW: 16-bit words whatever Bits Allocated)."""
    width = SWAP_WIDTH.get(vr or "", 1)
    if width == 1 or not value:
        return value
    if len(value) % width:
        raise MalformedDatasetError(f"{vr} value of {len(value)} bytes is not a multiple of {width}")
    return np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()


def is_big_endian_part10(data: bytes) -> bool:
    """Whether ``data`` (a whole Part 10 file, or its first bytes) says explicit VR big endian."""
    found = _syntax_and_body(data)
    return found is not None and found[0] == EXPLICIT_VR_BIG_ENDIAN


def un_lengths_defined(data: bytes) -> bytes:
    """A Part 10 file as pydicom can read it: in explicit VR big endian, each UN of undefined
    length is given the length of its value, delimiter included.

    Its content is implicit VR little endian whatever the transfer syntax (PS3.5 6.2.2), but
    pydicom reads it in the file's byte order and fails or misreads the rest of the file. With a
    defined length pydicom keeps the bytes and content_hash parses them as any other UN. Only the
    4-byte length fields change, so every offset (the splice's value tells) stays valid. Items that
    do not end within the file get a length one byte past its end: a truncated element, which
    content_hash rejects. Any other file is returned as it is.
    """
    found = _syntax_and_body(data)
    if found is None or found[0] != EXPLICIT_VR_BIG_ENDIAN:
        return data
    patched: bytearray | None = None
    for at, extent in _undefined_un_values(data, found[1]):
        length = len(data) - at + 1 if extent is None else extent
        if length >= UNDEFINED_LENGTH:
            raise MalformedDatasetError("an undefined length UN runs past 4 GB")
        if patched is None:
            patched = bytearray(data)
        struct.pack_into(">I", patched, at - 4, length)
    return data if patched is None else bytes(patched)


def _syntax_and_body(data: bytes) -> tuple[bytes, int] | None:
    """Transfer syntax UID and where the dataset starts, read as pydicom reads the file meta:
    explicit VR little endian elements of group 0002 after the preamble. None: not Part 10."""
    if data[PART10_MAGIC_AT : PART10_MAGIC_AT + 4] != PART10_MAGIC:
        return None
    pos, syntax, end = PART10_MAGIC_AT + 4, b"", len(data)
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        if data[pos + 4 : pos + 6] in LONG_VRS:
            if pos + 12 > end:
                return None
            head, length = 12, struct.unpack_from("<I", data, pos + 8)[0]
        else:
            head, length = 8, struct.unpack_from("<H", data, pos + 6)[0]
        if element == 0x0010:
            syntax = data[pos + head : pos + head + length].rstrip(b"\x00 ")
        pos += head + length
    return syntax, pos


def _undefined_un_values(data: bytes, pos: int) -> Iterator[tuple[int, int | None]]:
    """(value offset, value length or None when broken) of each UN of undefined length in an
    explicit VR big endian dataset starting at ``pos``, in sequences too.

    Walks the structure as pydicom reads it; at anything it does not expect (a VR that is not
    two capitals, an overrun) it stops and leaves the rest to pydicom, as before.
    """
    dataset, sequence, fragments = 0, 1, 2
    frames: list[tuple[int, int | None]] = [(dataset, len(data))]  # (kind, end; None: delimited)
    end_of_data = len(data)
    while frames:
        kind, end = frames[-1]
        if end is not None and pos >= end:
            if pos > end:
                return
            frames.pop()
            continue
        if pos + 8 > end_of_data:
            return
        group, element, length = struct.unpack_from(">HHI", data, pos)
        tag = (group << 16) | element
        if kind != dataset:
            pos += 8
            if tag == SEQUENCE_DELIMITER and end is None:
                frames.pop()
            elif tag != ITEM or (kind == fragments and length == UNDEFINED_LENGTH):
                return
            elif kind == fragments:
                pos += length
            else:
                frames.append((dataset, None if length == UNDEFINED_LENGTH else pos + length))
            continue
        if tag == ITEM_DELIMITER:
            if end is not None:
                return
            pos += 8
            frames.pop()
            continue
        vr = data[pos + 4 : pos + 6]
        if not (b"AA" <= vr <= b"ZZ"):
            return  # pydicom assumes a switch to implicit VR here; so do we, by not looking
        if vr in LONG_VRS:
            if pos + 12 > end_of_data:
                return
            length = struct.unpack_from(">I", data, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from(">H", data, pos + 6)[0]
            pos += 8
        if length == UNDEFINED_LENGTH:
            if vr == b"UN":
                extent = _implicit_items_extent(data, pos)
                yield pos, extent
                if extent is None:
                    return
                pos += extent
            else:
                frames.append((sequence if vr == b"SQ" else fragments, None))
        elif vr == b"SQ":
            frames.append((sequence, pos + length))
        else:
            pos += length


def _implicit_items_extent(data: bytes, start: int) -> int | None:
    """Length of the undefined length value at ``start``, read as implicit VR little endian
    items up to and including its sequence delimiter (PS3.5 6.2.2, 7.5); None when broken.

    Items and elements of defined length are skipped whole; in implicit VR an element of
    undefined length is a sequence. Every step reads 8 bytes, so this ends on any input.
    """
    pos, end = start, len(data)
    in_sequence = [True]  # a stack: True for a sequence's items, False for an item's elements
    while in_sequence:
        if pos + 8 > end:
            return None
        group, element, length = struct.unpack_from("<HHI", data, pos)
        tag = (group << 16) | element
        pos += 8
        if in_sequence[-1]:
            if tag == SEQUENCE_DELIMITER:
                in_sequence.pop()
            elif tag != ITEM:
                return None
            elif length == UNDEFINED_LENGTH:
                in_sequence.append(False)
            elif pos + length > end:
                return None
            else:
                pos += length
        elif tag == ITEM_DELIMITER:
            in_sequence.pop()
        elif group == 0xFFFE:
            return None
        elif length == UNDEFINED_LENGTH:
            in_sequence.append(True)
        elif pos + length > end:
            return None
        else:
            pos += length
    return pos - start


__all__ = ["CANONICAL_VERSION", "CHAIN_GROUP", "content_hash", "is_big_endian_part10", "un_lengths_defined"]
