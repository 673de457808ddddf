"""A block in a JPEG file: an APP10 segment of our own, and the same block in a COM segment.

JPEG (ITU-T T.81 B.2.4.6) gives applications APP0-APP15; APP10 (``FFEA``) is taken by none of the
common formats (APP0 JFIF, APP1 Exif/XMP, APP2 ICC, APP11 JUMBF/C2PA, APP13 Photoshop, APP14
Adobe), and ours starts with the identifier ``DICOM_CHAIN\\0``. A reader that knows only comments
(``COM``, ``FFFE``; Pillow's ``info["comment"]``, ImageMagick's ``%c``) finds the block in the
comment beginning ``DICOM_CHAIN `` written right after it; when both are present they must hold
the same block. Both go after SOI and the APP0/APP1 segments that JFIF and Exif require to come
first, before any table or frame header.

The content hash (docs/design.md 11.2) is SHA-256 over ``DICOM_CHAIN jpeg v1\\n`` and every byte
of the file but our two segments (marker, length and payload), in order: the entropy-coded data,
the tables, every other segment, as written.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from dicom_chain.carriers.picture.digest import digest
from dicom_chain.errors import MalformedBlockError, MalformedPictureError, NoBlockError

NAME = "jpeg"
SOI = b"\xff\xd8"
DOMAIN = b"DICOM_CHAIN jpeg v1\n"
APP10 = 0xEA
COM = 0xFE
SOS = 0xDA
EOI = 0xD9
APP_IDENTIFIER = b"DICOM_CHAIN\x00"
COM_PREFIX = b"DICOM_CHAIN "
MAX_PAYLOAD = 0xFFFF - 2  # a segment's length field counts itself
_LEADING = (0xE0, 0xE1)  # JFIF and Exif: they must directly follow SOI
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length
FILL = 0x100  # not a marker: a run of fill bytes before one (segments)


def recognises(head: bytes) -> bool:
    return head.startswith(b"\xff\xd8\xff")


def segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment before the first SOS, ``data[start:end]`` the
    whole segment from its marker's own FF; then (SOS, start, len(data)) for the scan and all
    that follows it. Fill bytes before a marker (B.1.1.2) come as their own run, marker FILL."""
    if not data.startswith(SOI):
        raise MalformedPictureError("not a JPEG file (no SOI)")
    pos, end = 2, len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise MalformedPictureError(f"JPEG marker expected at byte {pos}")
        fill_at = pos
        while pos + 1 < end and data[pos + 1] == 0xFF:  # fill bytes: all but the marker's own FF
            pos += 1
        if pos > fill_at:
            yield FILL, fill_at, pos
        marker_at = pos
        pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            yield marker, marker_at, pos
            continue
        if marker == EOI:
            raise MalformedPictureError("JPEG ends (EOI) before any scan (SOS)")
        if pos + 2 > end:
            raise MalformedPictureError("JPEG cut short in a segment length")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > end:
            raise MalformedPictureError(f"JPEG segment FF{marker:02X} runs past the end of the file")
        if marker == SOS:
            yield marker, marker_at, end
            return
        yield marker, marker_at, pos + length
        pos += length
    raise MalformedPictureError("JPEG has no scan (SOS)")


def _ours(data: bytes, marker: int, start: int) -> bool:
    payload = data[start + 4 : start + 4 + len(APP_IDENTIFIER)]
    return (marker == APP10 and payload == APP_IDENTIFIER) or (
        marker == COM and payload.startswith(COM_PREFIX)
    )


def read_block(data: bytes) -> bytes:
    """The serialised block: from our APP10 segment, else from our comment (a tool that keeps
    comments only); MalformedBlockError when there are two of a kind or the two differ."""
    apps, comments = [], []
    for marker, start, stop in segments(data):
        if marker == APP10 and _ours(data, marker, start):
            apps.append(data[start + 4 + len(APP_IDENTIFIER) : stop])
        elif marker == COM and _ours(data, marker, start):
            comments.append(data[start + 4 + len(COM_PREFIX) : stop])
    if len(apps) > 1 or len(comments) > 1:
        raise MalformedBlockError("more than one DICOM_CHAIN segment of a kind")
    if apps and comments and apps[0] != comments[0]:
        raise MalformedBlockError("the DICOM_CHAIN APP10 segment and comment hold different blocks")
    if apps:
        return apps[0]
    if comments:
        return comments[0]
    raise NoBlockError("no DICOM_CHAIN APP10 segment or comment")


def without_block(data: bytes) -> Iterator[bytes | memoryview]:
    view = memoryview(data)
    yield view[:2]
    for marker, start, stop in segments(data):
        if not _ours(data, marker, start):
            yield view[start:stop]


def content_hash(data: bytes) -> str:
    return digest(DOMAIN, without_block(data))


def with_block(data: bytes, block: bytes) -> bytes:
    """The file with our two segments after SOI and its JFIF/Exif segments (any held replaced)."""
    if len(COM_PREFIX) + len(block) > MAX_PAYLOAD:
        raise MalformedBlockError(f"block of {len(block)} bytes does not fit a JPEG segment")
    ours = _segment(APP10, APP_IDENTIFIER + block) + _segment(COM, COM_PREFIX + block)
    out = [data[:2]]
    placed = False
    for marker, start, stop in segments(data):
        if _ours(data, marker, start):
            continue
        if not placed and marker not in _LEADING and marker != FILL:
            out.append(ours)
            placed = True
        out.append(data[start:stop])
    if not placed:
        raise MalformedPictureError("JPEG has no scan (SOS)")
    return b"".join(out)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload
