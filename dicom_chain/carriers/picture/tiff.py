"""A block in a TIFF file: private tag 64964 (``0xFDC4``, type UNDEFINED) in the first IFD.

TIFF 6.0 (section 2, "Private tags") leaves tags 32768-65535 to private use; this one is not
registered with Adobe, so a reader that does not know it skips it, as TIFF readers must. The tag's
value is the serialised block (docs/design.md 2.1). The block is added without moving a byte of
the file: the value and a copy of the first IFD with our entry are appended, and the header points
to the copy (the old IFD stays, unreferenced). Classic TIFF only (not BigTIFF), either byte order.

The content hash (docs/design.md 11.2) is SHA-256 over ``DICOM_CHAIN tiff v1\\n``, the byte order
mark and the number of IFDs, then for each IFD in the chain: the number of its entries hashed,
each entry but ours and the strip/tile offsets and byte counts (tag, type, count and value bytes,
in tag order; a pointer's value left out), the IFDs its pointer tags lead to (SubIFDs, Exif, GPS,
Interoperability), hashed the same way, and a JPEG thumbnail's bytes, then the number of strips
or tiles and each as stored, behind its length. That is the file with our tag left out, read the
way a TIFF reader reads it: where the IFD sits, and where values and strips lie, is no part of it.
Tags must be in ascending order, each once (TIFF 6.0): a repeated StripOffsets would let the hash
and a reader see different pixels.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from typing import Any

from dicom_chain.errors import MalformedBlockError, MalformedPictureError, NoBlockError

NAME = "tiff"
DOMAIN = b"DICOM_CHAIN tiff v1\n"
TAG = 0xFDC4  # 64964
UNDEFINED = 7
# TIFF 6.0 section 2: bytes per value of each field type (BigTIFF's 16-18 refused)
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
STRIP_OFFSETS, STRIP_BYTE_COUNTS, TILE_OFFSETS, TILE_BYTE_COUNTS = 273, 279, 324, 325
LAYOUT = frozenset({STRIP_OFFSETS, STRIP_BYTE_COUNTS, TILE_OFFSETS, TILE_BYTE_COUNTS})
# Offsets are positions, not content: the values they point to are hashed instead (the same goes for the
# offsets in IFD_POINTERS and THUMBNAIL_OFFSET)
MAX_IFDS = 4096  # a chain of IFDs longer than this is a loop or garbage
MAX_DEPTH = 4  # sub-IFDs within sub-IFDs (Exif's Interoperability IFD is two deep)
# Tags whose values are offsets of further IFDs (SubIFDs, Exif, GPS, Interoperability): what they
# point to is content too, and is hashed where it is reached (TIFF 6.0 / Adobe PageMaker 6.0
# TechNote, Exif 2.32 4.6.3)
IFD_POINTERS = frozenset({330, 34665, 34853, 40965})
THUMBNAIL_OFFSET, THUMBNAIL_LENGTH = 513, 514  # JPEGInterchangeFormat and its length: bytes hashed


def recognises(head: bytes) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*")


class _Entry:
    __slots__ = ("count", "kind", "tag", "value")

    def __init__(self, tag: int, kind: int, count: int, value: bytes) -> None:
        self.tag, self.kind, self.count, self.value = tag, kind, count, value


def _order(data: bytes) -> str:
    if not recognises(data):
        raise MalformedPictureError("not a TIFF file (no II*/MM* header)")
    return "<" if data[:2] == b"II" else ">"


def _ifd(data: bytes, order: str, at: int) -> tuple[list[_Entry], int]:
    """The entries of the IFD at ``at`` (values resolved), and the next IFD's offset."""
    if at + 2 > len(data):
        raise MalformedPictureError("TIFF IFD offset past the end of the file")
    (n,) = struct.unpack_from(order + "H", data, at)
    if at + 2 + 12 * n + 4 > len(data):
        raise MalformedPictureError("TIFF IFD runs past the end of the file")
    entries = []
    for i in range(n):
        tag, kind, count, inline = struct.unpack_from(order + "HHI4s", data, at + 2 + 12 * i)
        size = TYPE_SIZES.get(kind)
        if size is None:
            raise MalformedPictureError(f"TIFF tag {tag} has unknown type {kind}")
        length = size * count
        if length <= 4:
            value = inline[:length]
        else:
            (offset,) = struct.unpack(order + "I", inline)
            if offset + length > len(data):
                raise MalformedPictureError(f"TIFF tag {tag}'s value runs past the end of the file")
            value = data[offset : offset + length]
        if entries and tag <= entries[-1].tag:
            # TIFF 6.0 section 2: entries in ascending order, so each tag once; a reader takes the
            # first of two StripOffsets, and a hash that took the last would vouch for other pixels
            raise MalformedPictureError(f"TIFF tag {tag} repeated or out of order")
        entries.append(_Entry(tag, kind, count, value))
    (following,) = struct.unpack_from(order + "I", data, at + 2 + 12 * n)
    return entries, following


def _ifds(data: bytes) -> Iterator[list[_Entry]]:
    order = _order(data)
    (at,) = struct.unpack_from(order + "I", data, 4)
    seen: set[int] = set()
    while at:
        if at in seen or len(seen) >= MAX_IFDS:
            raise MalformedPictureError("TIFF IFDs loop")
        seen.add(at)
        entries, at = _ifd(data, order, at)
        yield entries


def _numbers(entry: _Entry, order: str, kinds: dict[int, str] | None = None) -> tuple[int, ...]:
    code = (kinds or {3: "H", 4: "I"}).get(entry.kind)
    if code is None:
        raise MalformedPictureError(f"TIFF tag {entry.tag} has type {entry.kind}, not an offset or count")
    return struct.unpack(f"{order}{entry.count}{code}", entry.value)


def _image_data(data: bytes, order: str, entries: list[_Entry]) -> Iterator[bytes]:
    by_tag = {e.tag: e for e in entries}
    for offsets_tag, counts_tag in ((STRIP_OFFSETS, STRIP_BYTE_COUNTS), (TILE_OFFSETS, TILE_BYTE_COUNTS)):
        if offsets_tag not in by_tag:
            continue
        if counts_tag not in by_tag:
            raise MalformedPictureError(f"TIFF has tag {offsets_tag} without {counts_tag}")
        offsets, counts = _numbers(by_tag[offsets_tag], order), _numbers(by_tag[counts_tag], order)
        if len(offsets) != len(counts):
            raise MalformedPictureError("TIFF strip offsets and byte counts differ in number")
        for offset, count in zip(offsets, counts, strict=True):
            if offset + count > len(data):
                raise MalformedPictureError("TIFF image data runs past the end of the file")
            yield data[offset : offset + count]


def read_block(data: bytes) -> bytes:
    first = next(_ifds(data), None)
    if first is None:
        raise MalformedPictureError("TIFF has no IFD")
    ours = [e for e in first if e.tag == TAG]
    if not ours:
        raise NoBlockError(f"no DICOM_CHAIN tag {TAG}")
    if len(ours) > 1 or ours[0].kind != UNDEFINED:
        raise MalformedBlockError(f"DICOM_CHAIN tag {TAG} repeated or not UNDEFINED")
    return ours[0].value


def content_hash(data: bytes) -> str:
    order = _order(data)
    h = hashlib.sha256(DOMAIN + data[:2])
    ifds = list(_ifds(data))
    h.update(struct.pack(order + "I", len(ifds)))
    seen: set[int] = set()
    for entries in ifds:
        _hash_ifd(h, data, order, entries, seen, depth=0)
    return h.hexdigest()


def _hash_ifd(h: Any, data: bytes, order: str, entries: list[_Entry], seen: set[int], depth: int) -> None:
    """One IFD: its entry count, each entry but ours and the layout (tag, type, count, value),
    then what its pointer tags point to (sub-IFDs, a JPEG thumbnail), then its image data, each
    piece behind its length: where one IFD ends and the next begins is hashed too."""
    if depth > MAX_DEPTH:
        raise MalformedPictureError("TIFF sub-IFDs nest too deep")
    kept = [e for e in entries if e.tag != TAG and e.tag not in LAYOUT]
    h.update(struct.pack(order + "I", len(kept)))
    for e in kept:  # an offset's value is a position: what it points to is hashed below instead
        positional = e.tag in IFD_POINTERS or e.tag == THUMBNAIL_OFFSET
        h.update(struct.pack(order + "HHI", e.tag, e.kind, e.count) + (b"" if positional else e.value))
    by_tag = {e.tag: e for e in entries}
    for e in kept:
        if e.tag in IFD_POINTERS:
            for at in _numbers(e, order, kinds={4: "I", 13: "I"}):
                if at in seen or len(seen) >= MAX_IFDS:
                    raise MalformedPictureError("TIFF sub-IFDs loop")
                seen.add(at)
                sub, _ = _ifd(data, order, at)
                _hash_ifd(h, data, order, sub, seen, depth + 1)
    if THUMBNAIL_OFFSET in by_tag:
        if THUMBNAIL_LENGTH not in by_tag:
            raise MalformedPictureError("TIFF has a JPEG thumbnail offset without its length")
        (at,), (length,) = (
            _numbers(by_tag[THUMBNAIL_OFFSET], order),
            _numbers(by_tag[THUMBNAIL_LENGTH], order),
        )
        if at + length > len(data):
            raise MalformedPictureError("TIFF JPEG thumbnail runs past the end of the file")
        h.update(struct.pack(order + "I", length) + data[at : at + length])
    pieces = list(_image_data(data, order, entries))
    h.update(struct.pack(order + "I", len(pieces)))
    for piece in pieces:
        h.update(struct.pack(order + "I", len(piece)))
        h.update(piece)


def with_block(data: bytes, block: bytes) -> bytes:
    """The file with ``block`` as our tag in a copy of its first IFD, appended (any block it held
    replaced); every other byte stays where it was."""
    order = _order(data)
    (first_at,) = struct.unpack_from(order + "I", data, 4)
    entries, following = _ifd(data, order, first_at)
    entries = [e for e in entries if e.tag != TAG] + [_Entry(TAG, UNDEFINED, len(block), block)]
    entries.sort(key=lambda e: e.tag)
    out = bytearray(data)
    if len(out) % 2:
        out += b"\x00"  # TIFF 6.0: values and IFDs begin on a word boundary
    placed: list[bytes] = []
    for e in entries:  # values over 4 bytes go after the file, then the IFD
        if len(e.value) > 4:
            placed.append(struct.pack(order + "I", len(out)))
            out += e.value + (b"\x00" if len(e.value) % 2 else b"")
        else:
            placed.append(e.value.ljust(4, b"\x00"))
    ifd_at = len(out)
    if ifd_at > 0xFFFFFFFF:
        raise MalformedPictureError("TIFF over 4 GB: no room for a block")
    out += struct.pack(order + "H", len(entries))
    for e, value in zip(entries, placed, strict=True):
        out += struct.pack(order + "HHI", e.tag, e.kind, e.count) + value
    out += struct.pack(order + "I", following)
    out[4:8] = struct.pack(order + "I", ifd_at)
    return bytes(out)
