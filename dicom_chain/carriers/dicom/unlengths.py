"""Big endian files whose UN elements have undefined length, made readable by pydicom.

The content of a UN of undefined length is implicit VR little endian whatever the transfer syntax
(PS3.5 6.2.2), but pydicom 3.0 reads it in the file's byte order (with ``infer_sq_for_un_vr``) or
searches for a big endian delimiter (without it), and fails or misreads the rest of the file. Its
settings are global, which a multi-threaded server cannot switch per read; so before pydicom reads
such a file we give each of these values its real length, found by walking the implicit VR LE
items. docs/design.md 1.2.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from dicom_chain.errors import MalformedDatasetError

PART10_MAGIC = b"DICM"
PART10_MAGIC_AT = 128
EXPLICIT_VR_BIG_ENDIAN = b"1.2.840.10008.1.2.2"
# VRs with a 4-byte length (and 2 reserved bytes) in explicit VR, PS3.5 7.1.2
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD


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


__all__ = ["is_big_endian_part10", "un_lengths_defined"]
