"""A block in a PNG file: one ``iTXt`` chunk, keyword ``DICOM_CHAIN``, right after ``IHDR``.

PNG (ISO/IEC 15948, W3C PNG 2nd ed. 11.3.4.5) lets ``iTXt`` stand anywhere between ``IHDR`` and
``IEND``; ours goes first, before any ``IDAT``, so a reader that stops at the pixels has seen it.
Its text is the serialised block (docs/design.md 2.1), UTF-8, uncompressed, no language tag.

The content hash (docs/design.md 11.2) is SHA-256 over ``DICOM_CHAIN png v1\\n``, the PNG
signature and every other chunk exactly as written (length, type, data, CRC), in file order: the
file with our chunk left out. No chunk is parsed beyond its header, so any change of a byte
outside our chunk (pixels, palette, another text chunk, a re-encoding) moves the hash.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from dicom_chain.carriers.picture.digest import digest
from dicom_chain.errors import MalformedBlockError, MalformedPictureError, NoBlockError

NAME = "png"
SIGNATURE = b"\x89PNG\r\n\x1a\n"
DOMAIN = b"DICOM_CHAIN png v1\n"
KEYWORD = b"DICOM_CHAIN"
# keyword, NUL, not compressed, compression method 0, empty language tag, empty translated keyword
_ITXT_HEAD = KEYWORD + b"\x00\x00\x00\x00\x00"
_CHUNK_HEAD = struct.Struct(">I4s")
# PNG 5.3: a chunk's length is at most 2^31 - 1
MAX_CHUNK = 0x7FFFFFFF


def recognises(head: bytes) -> bool:
    return head.startswith(SIGNATURE)


def chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start, end) of each chunk, ``data[start:end]`` being the whole chunk as written.
    MalformedPictureError for a file that is no PNG, or is cut short, or runs on past IEND."""
    if not data.startswith(SIGNATURE):
        raise MalformedPictureError("not a PNG file (no PNG signature)")
    pos, end = len(SIGNATURE), len(data)
    seen_end = False
    while pos < end:
        if seen_end:
            raise MalformedPictureError("bytes after IEND")
        if pos + 12 > end:
            raise MalformedPictureError("PNG cut short in a chunk header")
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        if length > MAX_CHUNK or pos + 12 + length > end:
            raise MalformedPictureError(f"PNG chunk {kind!r} runs past the end of the file")
        yield kind, pos, pos + 12 + length
        seen_end = kind == b"IEND"
        pos += 12 + length
    if not seen_end:
        raise MalformedPictureError("PNG has no IEND")


def _is_ours(data: bytes, kind: bytes, start: int) -> bool:
    return kind == b"iTXt" and data[start + 8 : start + 8 + len(KEYWORD) + 1] == KEYWORD + b"\x00"


def read_block(data: bytes) -> bytes:
    """The serialised block the file carries: NoBlockError, or MalformedBlockError for two of
    them or one not written as ours is."""
    found = [(start, stop) for kind, start, stop in chunks(data) if _is_ours(data, kind, start)]
    if not found:
        raise NoBlockError("no DICOM_CHAIN iTXt chunk")
    if len(found) > 1:
        raise MalformedBlockError("more than one DICOM_CHAIN iTXt chunk")
    start, stop = found[0]
    body = data[start + 8 : stop - 4]
    if not body.startswith(_ITXT_HEAD):
        raise MalformedBlockError("DICOM_CHAIN iTXt chunk is compressed or carries a language tag")
    if zlib.crc32(data[start + 4 : stop - 4]) != struct.unpack_from(">I", data, stop - 4)[0]:
        raise MalformedBlockError("DICOM_CHAIN iTXt chunk fails its CRC")
    return body[len(_ITXT_HEAD) :]


def without_block(data: bytes) -> Iterator[bytes | memoryview]:
    """The file's bytes with our chunk left out, in order (what the content hash covers)."""
    view = memoryview(data)
    yield view[: len(SIGNATURE)]
    for kind, start, stop in chunks(data):
        if not _is_ours(data, kind, start):
            yield view[start:stop]


def content_hash(data: bytes) -> str:
    return digest(DOMAIN, without_block(data))


def with_block(data: bytes, block: bytes) -> bytes:
    """The file with ``block`` in our chunk right after IHDR (any block it held replaced)."""
    body = _ITXT_HEAD + block
    chunk = _CHUNK_HEAD.pack(len(body), b"iTXt") + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))
    out = [data[: len(SIGNATURE)]]
    placed = False
    for kind, start, stop in chunks(data):
        if _is_ours(data, kind, start):
            continue
        if not placed and kind != b"IHDR":
            raise MalformedPictureError("PNG does not begin with IHDR")
        out.append(data[start:stop])
        if not placed:
            out.append(chunk)
            placed = True
    return b"".join(out)
