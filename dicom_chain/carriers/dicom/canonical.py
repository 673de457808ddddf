"""The content hash: SHA-256 over a canonical encoding of a dataset.

A PACS may re-encode an instance between transfer syntaxes, compress its pixels losslessly or
rewrite its file meta; the hash must not move when that happens, yet move when any value changes.
So we hash values in one fixed byte order, never the VR or the length encoding a syntax chose,
pixels by their values where a lossless syntax lets us decode them, and skip what a hop may
legitimately rewrite (file meta, group lengths, trailing padding, our own block). The exact
definitions of both versions are in docs/design.md section 1; keep the two in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from io import BytesIO
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_sequence
from pydicom.filewriter import write_data_element

from dicom_chain.carriers.base import Digests
from dicom_chain.carriers.dicom import rawvalues
from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP, chain_block_tags
from dicom_chain.errors import MalformedDatasetError

CANONICAL_VERSION = 2  # what the node writes now; blocks say which version they used
CANONICAL_VERSIONS = (1, 2)  # what verify reads
DOMAINS = {1: b"DICOM_CHAIN content v1\n", 2: b"DICOM_CHAIN content v2\n"}
ATTRIBUTES_DOMAIN = b"DICOM_CHAIN attributes v2\n"
DICTIONARY_EDITION = "2024c"  # the data dictionary every VR decision uses, frozen (1.2)

PIXEL_DATA = 0x7FE00010
PHOTOMETRIC = 0x00280004
PLANAR_CONFIGURATION = 0x00280006
DERIVATION_DESCRIPTION = 0x00082111
TRAILING_PADDING = 0xFFFCFFFC
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_TAG_LE = b"\xfe\xff\x00\xe0"
ITEM = 0xFFFEE000
BATCH_LIMIT = 4096  # values below this are joined with their neighbours before hashing
# Pixel data left on disk (a dataset read with defer_size) is hashed this much at a time: a few
# MiB keep numpy's per-call cost negligible, and the samples' temporaries a few times this size.
PIXEL_CHUNK_BYTES = 4 << 20
SEQUENCE_DELIMITER = 0xFFFEE0DD
# Pixels normalised from a read-only buffer go into one array per thread, reused, instead of a new
# one per instance: a fresh 0.5 MB costs its page faults each time. Up to a chunk of pixels read
# from disk (so every such chunk), which is also the spool's default memory limit; a larger value
# gets an array of its own, as before, rather than one held for as long as its association.
SCRATCH_BYTES = PIXEL_CHUNK_BYTES

# Version 2, top level only: left out of the content hash because a lossless re-encoding rewrites
# them (DCMTK's lossless JPEG compressors append their settings to Derivation Description; the
# pixel layout Planar Configuration describes is made canonical instead, 1.5).
V2_EXCLUDED = frozenset({PLANAR_CONFIGURATION, DERIVATION_DESCRIPTION})
# Version 2: what a lossy re-encoding may rewrite besides the pixels; the attributes hash leaves
# them out, so that verify can tell a lossy hop (every other attribute intact) from tampering.
# PS3.3 C.7.6.1.1.5 makes a lossy copy a derived image: DCMTK's dcmcjpeg and Orthanc give it a
# new SOP Instance UID, DERIVED in Image Type, a Source Image Sequence and a Derivation Code
# Sequence item "113040 Lossy Compression", and drop the pixel value extremes, which the changed
# pixels no longer have.
LOSSY_DESCRIPTION = frozenset({
    PIXEL_DATA, PHOTOMETRIC, PLANAR_CONFIGURATION, DERIVATION_DESCRIPTION,
    0x00080008,  # Image Type
    0x00080018,  # SOP Instance UID
    0x00082112,  # Source Image Sequence
    0x00089215,  # Derivation Code Sequence
    0x00280106, 0x00280107,  # Smallest / Largest Image Pixel Value
    0x00280108, 0x00280109,  # Smallest / Largest Pixel Value in Series
    # a lossy encoder turns PALETTE COLOR into colour (Orthanc does) and drops the palette
    0x00280002,  # Samples per Pixel
    0x00281101, 0x00281102, 0x00281103,  # Red / Green / Blue Palette Color LUT Descriptor
    0x00281199,  # Palette Color Lookup Table UID
    0x00281201, 0x00281202, 0x00281203,  # Red / Green / Blue Palette Color LUT Data
    0x00281221, 0x00281222, 0x00281223,  # Segmented Red / Green / Blue Palette Color LUT Data
    0x00282110,  # Lossy Image Compression
    0x00282112,  # Lossy Image Compression Ratio
    0x00282114,  # Lossy Image Compression Method
})  # fmt: skip
# Transfer syntaxes whose pixel values survive encoding exactly: hashed by decoded value (1.5).
LOSSLESS_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Process 14
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14, SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.201",  # HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # HTJ2K with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.5",  # RLE Lossless
})  # fmt: skip
DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
})  # fmt: skip
# Version 2: a value of an element the dictionary does not know loses trailing spaces and NULs
# only if what remains is text: printable bytes, high bytes (other character sets), TAB, LF, FF,
# CR and ESC (ISO 2022). Any other control byte means binary, kept as it is.
TEXT_BYTES = bytes(range(0x20, 0x100)) + b"\t\n\x0c\r\x1b"
SUBSAMPLED = frozenset({"YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})

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


def content_hash(ds: Dataset, version: int = CANONICAL_VERSION) -> str:
    """Hex SHA-256 of the canonical encoding of ``ds`` (file meta and our block excluded)."""
    return content_digests(ds, version).content


def content_digests(
    ds: Dataset,
    version: int = CANONICAL_VERSION,
    buffer: bytes | memoryview | None = None,
    base: int = 0,
) -> Digests:
    """The content hash and (version 2) the attributes hash of ``ds``.

    ``buffer``: the bytes ``ds`` was parsed from, ``base`` the offset of its first byte in the
    value tells; a top-level Pixel Data pydicom left unread (``defer_size``) is then hashed from a
    view of it rather than read into a copy of its own. The digests are the same either way."""
    if version not in CANONICAL_VERSIONS:
        raise MalformedDatasetError(f"unknown canonical encoding version {version}")
    h = hashlib.sha256(DOMAINS[version])
    attrs = hashlib.sha256(ATTRIBUTES_DOMAIN) if version >= 2 else None
    try:
        view = memoryview(buffer).cast("B") if buffer is not None else None
        rules = _Rules(version, _transfer_syntax(ds), view, base)
        _feed_dataset(h, ds, rules, exclude=chain_block_tags(ds), attrs=attrs)
    except MalformedDatasetError:
        raise
    except Exception as exc:  # pydicom raises many types on garbled values
        raise MalformedDatasetError(f"cannot canonicalise dataset: {exc}") from exc
    return Digests(version, h.hexdigest(), attrs.hexdigest() if attrs is not None else "")


def lossy_pixels(ds: Dataset) -> str:
    """Why the pixels of ``ds`` are not those of the original ("" when nothing says they differ):
    a lossy transfer syntax, or Lossy Image Compression 01 (a lossy hop, then decompressed)."""
    syntax = _transfer_syntax(ds)
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True) if PIXEL_DATA in ds else None
    if raw is not None and _is_undefined_length(raw) and syntax not in LOSSLESS_SYNTAXES:
        return f"transfer syntax {syntax or 'unknown'} is lossy"
    flag = ds.get("LossyImageCompression", "")
    if str(flag).strip() == "01":
        return "Lossy Image Compression is 01"
    return ""


@dataclass(frozen=True)
class _Rules:
    version: int
    syntax: str | None
    buffer: memoryview | None = None  # the bytes the dataset was parsed from (content_digests)
    base: int = 0  # offset of buffer[0] in the value tells

    @property
    def v2(self) -> bool:
        return self.version >= 2


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(uid).strip("\x00 ") if uid else None


def _feed_dataset(
    h: Any,
    ds: Dataset,
    rules: _Rules,
    exclude: frozenset[int] = frozenset(),
    attrs: Any = None,
) -> None:
    """Stream the canonical form into ``h`` (and, at the top level of version 2, every attribute
    but the pixels into ``attrs``); small pieces are batched into one update."""
    little = _dataset_is_little_endian(ds)
    top = attrs is not None
    v2 = rules.v2
    parts: list[bytes] = []
    attr_parts: list[bytes] = []
    pack = struct.pack
    head = _VALUE_HEAD.pack
    fast = _FAST_PATH

    def flush() -> None:
        h.update(b"".join(parts))
        parts.clear()

    # plain ints: BaseTag compares in Python, slowly; the elements as held, without a lookup each
    for tag, stored in sorted([(int(tag), elem) for tag, elem in ds._dict.items()]):
        if tag >> 16 == 0x0002 or not tag & 0xFFFF or tag == TRAILING_PADDING or tag in exclude:
            continue
        if top and tag in V2_EXCLUDED:
            continue
        if fast and tag != PIXEL_DATA:
            value = _plain_value(stored, tag, v2)
            if value is not None:  # exactly what the general path below gives such an element
                if top and tag == PHOTOMETRIC and value == b"YBR_RCT":
                    value = b"RGB"
                header = head(tag >> 16, tag & 0xFFFF, b"V", len(value))
                if top and tag not in LOSSY_DESCRIPTION:
                    attr_parts.append(header)
                    attr_parts.append(value)
                parts.append(header)
                if len(value) >= BATCH_LIMIT:
                    flush()
                    h.update(value)
                else:
                    parts.append(value)
                continue
        raw = _get_item(ds, tag, top and tag == PIXEL_DATA, rules, stored)
        start = len(parts)
        parts.append(pack("<HH", tag >> 16, tag & 0xFFFF))
        if tag == PIXEL_DATA:  # in items too: DCMTK's compressors also encode an icon's pixels
            if top and rules.buffer is not None:
                raw = _buffered(raw, rules)
            streamed = _deferred_pixels(ds, raw, rules) if top else None
            if streamed is not None:
                length, chunks = streamed
                parts.append(b"V" + pack("<Q", length))
                flush()
                for chunk in chunks:
                    h.update(chunk)
                continue
            if isinstance(raw, RawDataElement) and raw.value is None:
                raw = ds.get_item(tag)  # deferred, yet not streamable: read it as any other value
            pixels = _canonical_pixels(ds, raw, little, rules)
            if pixels is not None:
                parts.append(b"V" + pack("<Q", len(pixels)))
                flush()
                h.update(pixels)
                continue
        if tag == PIXEL_DATA and _is_undefined_length(raw):
            fragments = list(_fragments(_value_bytes(raw)))
            parts.append(b"F" + pack("<I", len(fragments)))
            for fragment in fragments:
                parts.append(pack("<Q", len(fragment)))
                flush()
                h.update(fragment)
            continue
        items = _sequence_items(ds, tag, raw)
        if items is not None and (items or not v2):
            parts.append(b"S" + pack("<I", len(items)))
            for item in items:
                sub = hashlib.sha256()
                _feed_dataset(sub, item, rules)
                parts.append(sub.digest())
        elif items is not None:  # v2: no items and an empty value are one thing after any hop
            parts.append(b"V" + pack("<Q", 0))
        else:
            value = _canonical_value(raw, tag, little, rules)
            if top and tag == PHOTOMETRIC and value == b"YBR_RCT":
                value = b"RGB"  # the decoder undoes the reversible colour transform (1.5)
            parts.append(b"V" + pack("<Q", len(value)))
            if len(value) >= BATCH_LIMIT:
                if top and tag not in LOSSY_DESCRIPTION:
                    attr_parts.extend(parts[start:])
                    attr_parts.append(value)
                flush()
                h.update(value)  # large values go straight in, uncopied
                continue
            parts.append(value)
        if top and tag not in LOSSY_DESCRIPTION:
            attr_parts.extend(parts[start:])
    flush()
    if top:
        attrs.update(b"".join(attr_parts))


# The shortcuts (``_plain_value``, ``_PixelShape._already_normal``) are taken unless this is False:
# the tests turn them off to check that both ways give the same digests, or the same error.
_FAST_PATH = True
_VALUE_HEAD = struct.Struct("<HHcQ")  # tag (group, element), b"V", value length: 1.2
# The VRs whose raw value is its canonical bytes once padding is dealt with (no sequence to parse,
# no VR to look up): every explicit VR but SQ and UN.
_PLAIN_VRS = frozenset({
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "OB", "OD", "OF", "OL",
    "OV", "OW", "PN", "SH", "SL", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UR", "US", "UT", "UV",
})  # fmt: skip
_AS_IS, _TEXT, _UNKNOWN = 0, 1, 2  # what _canonical_value does to a value's trailing padding


def _plain_value(stored: Any, tag: int, v2: bool) -> bytes | None:
    """The canonical value of the commonest element, or None for any other (the general path then
    decides): a raw explicit VR little endian element of defined length, read whole, whose VR says
    it is no sequence. For it ``_get_item`` returns it as held, ``_sequence_items`` finds no items
    (explicit VR, defined length), ``_value_le`` gives its bytes unswapped and ``_canonical_value``
    trims them by the tag's dictionary VR; this does the same in one step (~1 us an element instead
    of ~4: a CT slice has 40-60 of them)."""
    if type(stored) is not RawDataElement:
        return None
    value = stored.value
    if type(value) is not bytes or stored.VR not in _PLAIN_VRS or not stored.is_little_endian:
        return None
    if len(value) != stored.length:
        return None  # cut short: the general path names it
    rule = _padding_rule(tag, v2)
    if rule == _TEXT:
        return value.rstrip(b" \x00")
    if rule == _UNKNOWN:
        return _unknown_padding(value)
    return value


@lru_cache(maxsize=8192)
def _padding_rule(tag: int, v2: bool) -> int:
    """``_canonical_value``'s decision for ``tag``, once per tag."""
    vr = _dictionary_vr(tag)
    if vr in TEXT_VRS:
        return _TEXT
    if vr is None and v2:
        return _UNKNOWN
    return _AS_IS


def _buffered(raw: RawDataElement | DataElement, rules: _Rules) -> RawDataElement | DataElement:
    """A top-level Pixel Data pydicom left unread, its value taken from ``rules.buffer``: a view for
    the native little endian pixels of version 2 (``_canonical_pixels`` hashes or normalises them
    from it as they lie), a copy otherwise, which is what pydicom would have read."""
    if not isinstance(raw, RawDataElement) or raw.value is not None or not isinstance(raw.value_tell, int):
        return raw
    if raw.length in (0, UNDEFINED_LENGTH) or rules.buffer is None or rules.syntax == DEFLATED:
        return raw  # deflated: the tells are offsets in the inflated bytes, not in the buffer
    at = raw.value_tell - rules.base
    if at < 0 or at > len(rules.buffer):
        return raw
    value = rules.buffer[at : at + raw.length]
    if len(value) != raw.length:  # as _value_le says of a value read whole
        raise MalformedDatasetError(
            f"element {_fmt(PIXEL_DATA)} is truncated: {len(value)} of {raw.length} bytes"
        )
    if rules.v2 and raw.is_little_endian and raw.VR in ("OB", "OW"):
        return raw._replace(value=value)
    return raw._replace(value=value.tobytes())


def _get_item(
    ds: Dataset, tag: int, keep_deferred: bool, rules: _Rules, stored: Any
) -> RawDataElement | DataElement:
    """``ds.get_item``, refusing a deferred value (``defer_size``) that the file cuts short: read
    whole, pydicom keeps the declared length and 1.2 calls it truncated; read deferred, it hands
    back what there is, converted, and forgets the length, and the two readings would hash apart.
    ``stored``: the element as ``ds`` holds it, before get_item reads it in."""
    if (
        isinstance(stored, RawDataElement)
        and stored.value is None
        and stored.length not in (0, UNDEFINED_LENGTH)
        and isinstance(stored.value_tell, int)
        and rules.syntax != DEFLATED  # there the tells are offsets in the inflated bytes
    ):
        filename = getattr(ds, "filename", None)
        if isinstance(filename, str | os.PathLike):
            available = os.stat(filename).st_size - stored.value_tell
            if available < stored.length:
                raise MalformedDatasetError(
                    f"element {_fmt(tag)} is truncated: {max(available, 0)} of {stored.length} bytes"
                )
    if stored is not None and not (isinstance(stored, RawDataElement) and stored.value is None):
        return stored  # what get_item returns for it, without its second lookup (~40 per instance)
    return ds.get_item(tag, keep_deferred=keep_deferred)


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


@lru_cache(maxsize=1)
def _dictionary() -> tuple[dict[int, str], tuple[tuple[int, int, str], ...]]:
    """The frozen data dictionary (DICOM 2024c, as pydicom 3.0 shipped it): tag -> VR, and the
    repeating groups as (mask, value, VR). Frozen so that a pydicom upgrade cannot move a hash."""
    text = resources.files(__package__).joinpath(f"dictionary_{DICTIONARY_EDITION}.json").read_text()
    data = json.loads(text)
    tags = {int(key, 16): vr for key, vr in data["tags"].items()}
    repeaters = tuple(
        (int("".join("0" if c == "x" else "F" for c in key), 16), int(key.replace("x", "0"), 16), vr)
        for key, vr in data["repeaters"].items()
    )
    return tags, repeaters


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    """The frozen public dictionary's VR for ``tag``, ambiguous ones ("US or SS") included; None
    for private tags and tags the dictionary does not know."""
    if _is_private(tag):
        return None
    tags, repeaters = _dictionary()
    vr = tags.get(tag)
    if vr is None:
        vr = next((vr for mask, value, vr in repeaters if tag & mask == value), None)
    return vr


def _public_vr(tag: int) -> str | None:
    """The public dictionary's single VR for ``tag`` (None: private, unknown or ambiguous)."""
    vr = _dictionary_vr(tag)
    return vr if vr is not None and " or " not in vr else None


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


def _canonical_value(raw: RawDataElement | DataElement, tag: int, little: bool, rules: _Rules) -> bytes:
    value = _value_le(raw, tag, little)
    if isinstance(value, memoryview):
        value = value.tobytes()
    vr = _dictionary_vr(tag)
    if vr in TEXT_VRS:
        return value.rstrip(b" \x00")
    if vr is None and rules.v2:
        return _unknown_padding(value)
    return value


def _unknown_padding(value: bytes) -> bytes:
    """Version 2: an element the dictionary does not know (private, or newer than it) keeps no
    trailing spaces or NULs when the rest is text, since a tool that knew it as text may drop
    or rewrite them (DCMTK drops extra spaces, pydicom writes NUL padding as a space)."""
    stripped = value.rstrip(b" \x00")
    if stripped and len(stripped) != len(value) and not stripped.translate(None, TEXT_BYTES):
        return stripped
    return value


def _value_le(raw: RawDataElement | DataElement, tag: int, little: bool) -> bytes | memoryview:
    """The value bytes, little endian (1.2)."""
    if isinstance(raw, RawDataElement):
        value = raw.value
        if not isinstance(value, memoryview):  # a view: pixels from the buffer (_buffered), kept so
            value = bytes(value or b"")
        if raw.length != UNDEFINED_LENGTH and len(value) != raw.length:
            raise MalformedDatasetError(
                f"element {_fmt(tag)} is truncated: {len(value)} of {raw.length} bytes"
            )
        if not raw.is_little_endian:
            value = _swap(value, raw.VR)
        return value
    return _encode_element(raw, little)


def _canonical_pixels(
    ds: Dataset, raw: RawDataElement | DataElement, little: bool, rules: _Rules
) -> bytes | memoryview | None:
    """Version 2, Pixel Data of the dataset or of an item with its own Image Pixel module (an icon):
    its values in the canonical native layout (1.5), or None where they are hashed as encoded (lossy
    or undecodable fragments, layouts we do not normalise)."""
    if not rules.v2:
        return None
    try:
        shape = _PixelShape.of(ds)
    except (AttributeError, KeyError, TypeError, ValueError):
        shape = None
    if _is_undefined_length(raw):
        if shape is None or rules.syntax not in LOSSLESS_SYNTAXES or not shape.normalisable:
            return None
        try:
            array = _decode(ds, rules.syntax)
        except Exception:  # undecodable: hashed as its fragments, exactly as encoded (1.5)
            return None
        kind = "i" if array.dtype.kind == "i" else "u"
        array = array.astype(f"<{kind}{shape.bytes_per_sample}", copy=False)
        return shape.normalise(array.reshape(-1).view(f"<u{shape.bytes_per_sample}"), in_place=True)
    value = _value_le(raw, PIXEL_DATA, little)
    if shape is None or not shape.normalisable or len(value) < shape.size:
        return value
    # planar: interleaved into a new array, ours to normalise in place
    return shape.normalise(_native_samples(shape, memoryview(value)[: shape.size]), in_place=shape.planar)


def _native_samples(shape: _PixelShape, data: bytes | memoryview) -> np.ndarray:
    """Native samples, colour by pixel (1.5): planar frames are re-interleaved (whole frames only)."""
    samples = np.frombuffer(data, dtype=f"<u{shape.bytes_per_sample}")
    if shape.planar:
        samples = samples.reshape(-1, shape.samples, shape.rows, shape.columns)
        samples = _interleaved(samples.transpose(0, 2, 3, 1)).reshape(-1)
    return samples


def _deferred_pixels(
    ds: Dataset, raw: RawDataElement | DataElement, rules: _Rules
) -> tuple[int, Iterator[bytes | memoryview]] | None:
    """Version 2, native Pixel Data still on disk (read with ``defer_size``): its canonical length
    and its canonical bytes a chunk at a time, exactly what ``_canonical_pixels`` would return,
    without the whole value in memory. None where that one is needed (big endian, no file)."""
    if not rules.v2 or not isinstance(raw, RawDataElement) or raw.value is not None:
        return None
    if rules.syntax == DEFLATED:  # tells are offsets in the inflated bytes, not in the file
        return None
    if raw.length in (0, UNDEFINED_LENGTH) or not raw.is_little_endian or not isinstance(raw.value_tell, int):
        return None
    filename = getattr(ds, "filename", None)
    if not isinstance(filename, str | os.PathLike):
        return None
    available = max(0, min(raw.length, os.stat(filename).st_size - raw.value_tell))
    if available != raw.length:  # as _value_le says of a value read whole
        raise MalformedDatasetError(
            f"element {_fmt(PIXEL_DATA)} is truncated: {available} of {raw.length} bytes"
        )
    try:
        shape: _PixelShape | None = _PixelShape.of(ds)
    except (AttributeError, KeyError, TypeError, ValueError):
        shape = None
    if shape is None or not shape.normalisable or raw.length < shape.size:
        return raw.length, _file_chunks(filename, raw.value_tell, raw.length, PIXEL_CHUNK_BYTES)
    # whole frames per chunk when planar (each is re-interleaved), else any multiple of a sample
    unit = shape.size // shape.frames if shape.planar else shape.bytes_per_sample * shape.samples
    step = unit * max(1, PIXEL_CHUNK_BYTES // unit)
    return shape.size, (
        shape.normalise_chunk(_native_samples(shape, chunk), in_place=shape.planar)
        for chunk in _file_chunks(filename, raw.value_tell, shape.size, step)
    )


def _file_chunks(filename: str | os.PathLike, at: int, length: int, step: int) -> Iterator[bytes]:
    with open(filename, "rb") as fp:
        fp.seek(at)
        left = length
        while left > 0:
            chunk = fp.read(min(step, left))
            if not chunk:
                raise MalformedDatasetError(
                    f"element {_fmt(PIXEL_DATA)} is truncated: {length - left} of {length} bytes"
                )
            left -= len(chunk)
            yield chunk


def _decode(ds: Dataset, syntax: str) -> np.ndarray:
    """All frames, as the codec gives them: samples interleaved, no colour space conversion."""
    from pydicom.pixels import get_decoder  # the codec machinery loads only when needed

    decoder = get_decoder(syntax)
    array, _ = decoder.as_array(ds, raw=True)
    return _interleaved(array)


def _interleaved(array: np.ndarray) -> np.ndarray:
    """``array`` C-contiguous: samples of a pixel side by side. A codec that decodes colour by plane
    (RLE) hands back a view of its planes; copying that one sample at a time costs several times
    what ``np.ascontiguousarray`` pays for its strided walk (more than the RLE decode itself)."""
    if array.flags.c_contiguous:
        return array
    if array.ndim < 3 or not 1 < array.shape[-1] <= 4:
        return np.ascontiguousarray(array)
    out = np.empty(array.shape, array.dtype)
    for sample in range(array.shape[-1]):
        out[..., sample] = array[..., sample]
    return out


@dataclass(frozen=True)
class _PixelShape:
    rows: int
    columns: int
    samples: int
    frames: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    signed: bool
    planar: bool  # native only: stored colour-by-plane
    photometric: str

    @classmethod
    def of(cls, ds: Dataset) -> _PixelShape:
        """Read as pydicom converts each value, or from its raw bytes where that is the same
        (rawvalues); a value missing or garbled raises what pydicom raises."""

        def get(keyword: str, tag: int, *default: Any) -> Any:
            value = rawvalues.us(ds, tag)
            return (
                value if value is not None else ds.get(keyword, *default) if default else getattr(ds, keyword)
            )

        samples = int(get("SamplesPerPixel", 0x00280002, 1) or 1)  # in pydicom's order of reading:
        rows = int(get("Rows", 0x00280010))  # a garbled value raises what it raised there
        columns = int(get("Columns", 0x00280011))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        allocated = get("BitsAllocated", 0x00280100)
        bits_allocated = int(allocated)
        bits_stored = int(get("BitsStored", 0x00280101, allocated) or allocated)
        high_bit = int(get("HighBit", 0x00280102, int(get("BitsStored", 0x00280101, allocated)) - 1))
        signed = int(get("PixelRepresentation", 0x00280103, 0) or 0) == 1
        planar = samples > 1 and int(get("PlanarConfiguration", PLANAR_CONFIGURATION, 0) or 0) == 1
        photometric = rawvalues.cs(ds, PHOTOMETRIC)
        if photometric is None:
            photometric = str(ds.get("PhotometricInterpretation", ""))
        return cls(
            rows,
            columns,
            samples,
            frames,
            bits_allocated,
            bits_stored,
            high_bit,
            signed,
            planar,
            photometric.strip(),
        )

    @property
    def bytes_per_sample(self) -> int:
        return self.bits_allocated // 8

    @property
    def size(self) -> int:
        return self.rows * self.columns * self.samples * self.frames * self.bytes_per_sample

    @property
    def normalisable(self) -> bool:
        """Whole-byte samples, every sample stored (not subsampled), bits that make sense."""
        return (
            self.bits_allocated in (8, 16, 32, 64)
            and 0 < self.bits_stored <= self.bits_allocated
            and self.bits_stored - 1 <= self.high_bit < self.bits_allocated
            and self.photometric not in SUBSAMPLED
            and self.size > 0
        )

    def normalise(self, samples: np.ndarray, in_place: bool = False) -> bytes | memoryview:
        """Each sample as its Bits Stored value (bits outside them are no part of it, and a
        lossless codec drops them), sign-extended when signed, little endian.

        ``in_place``: ``samples`` is ours to overwrite (a decoded array), so no new array is made
        for each step; on a large multi-frame, allocating them cost more than the arithmetic.
        """
        if len(samples) * self.bytes_per_sample != self.size:
            raise MalformedDatasetError(
                f"pixel data holds {len(samples)} samples, "
                f"its attributes say {self.size // self.bytes_per_sample}"
            )
        return self.normalise_chunk(samples, in_place)

    def _already_normal(self, samples: np.ndarray) -> bool:
        """Whether every sample already is its Bits Stored value (no bit above them set, or each
        a sign extension when signed), as in nearly every image: normalising would then rewrite
        the same bytes. Reading them for a minimum and maximum costs a third of masking them into
        another array and hashing that (0.04 against 0.15 ms for a CT slice not in the cache)."""
        if self.high_bit + 1 != self.bits_stored or not samples.size:
            return False  # shifted samples move whatever their values
        if not self.signed:
            return int(samples.max()) < 1 << self.bits_stored
        values = samples.view(samples.dtype.str.replace("u", "i"))
        half = 1 << (self.bits_stored - 1)
        return -half <= int(values.min()) and int(values.max()) < half

    def normalise_chunk(self, samples: np.ndarray, in_place: bool = False) -> bytes | memoryview:
        """``normalise`` of a run of samples: each is normalised on its own, so a value may be
        normalised a chunk at a time."""
        if self.bits_stored < self.bits_allocated and not (_FAST_PATH and self._already_normal(samples)):
            dtype = samples.dtype
            shift = self.high_bit + 1 - self.bits_stored
            mask = dtype.type((1 << self.bits_stored) - 1)
            out = samples if in_place and samples.flags.writeable else _scratch(samples.shape, dtype)
            if shift:
                samples = np.right_shift(samples, dtype.type(shift), out=out)
                out = samples
            samples = np.bitwise_and(samples, mask, out=out)
            if self.signed:
                sign = dtype.type(1 << (self.bits_stored - 1))
                samples = np.bitwise_xor(samples, sign, out=samples)  # ours now, either way
                samples = np.subtract(samples, sign, out=samples)  # wraps: two's complement
        return memoryview(
            np.ascontiguousarray(samples).astype(samples.dtype.newbyteorder("<"), copy=False)
        ).cast("B")


_local = threading.local()


def _scratch(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """This thread's reused array for ``shape`` (None above SCRATCH_BYTES: numpy allocates one).
    What is normalised into it is hashed before the next value is: no caller keeps it."""
    size = int(np.prod(shape)) * dtype.itemsize
    if size > SCRATCH_BYTES:
        return None
    held = getattr(_local, "scratch", None)
    if held is None or len(held) < size:
        held = _local.scratch = np.empty(max(size, 1 << 20), np.uint8)
    return held[:size].view(dtype).reshape(shape)


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


__all__ = [
    "CANONICAL_VERSION", "CANONICAL_VERSIONS", "CHAIN_GROUP", "Digests",
    "content_digests", "content_hash", "lossy_pixels",
]  # fmt: skip
