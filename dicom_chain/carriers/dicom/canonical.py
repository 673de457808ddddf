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
BATCH_LIMIT = 4096  # values below this are joined with their neighbours before hashing
SEQUENCE_DELIMITER = 0xFFFEE0DD

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


__all__ = ["CANONICAL_VERSION", "CHAIN_GROUP", "content_hash"]
