"""The top-level element layout of an encoded data set, read from its element headers alone.

Confirming a spliced file needs only where each top-level element lies (tag, VR, value offset,
length), which pydicom gives at the cost of a full parse (~0.3 ms and ~115 system calls for a CT
slice). Here the headers are walked in the bytes: values skipped by their length, undefined-length
sequences and encapsulated pixel data skipped by their item and delimiter tags (nested). The
result has the form of ``splice.layout`` for what pydicom reads as raw elements. Anything this walk
does not handle raises ``Unwalkable``: the caller then asks pydicom, never refuses because of it.
"""

from __future__ import annotations

import struct

from pydicom.valuerep import VR

from dicom_chain.errors import NeedMore, Unwalkable

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# VRs with a 4-byte length (and 2 reserved bytes) in explicit VR encodings, PS3.5 7.1.2
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
KNOWN_VRS = frozenset(str(v) for v in VR)  # any other two bytes pydicom reads its own way
_VRS = {vr.encode("ascii"): (vr, vr in LONG_VRS) for vr in KNOWN_VRS}  # as encoded: (VR, 4-byte length)
# Nesting of sequences in real files stays under ten levels; deeper is unusual enough to leave to
# pydicom (and bounds this walk's recursion well under Python's limit).
MAX_DEPTH = 32

Element = tuple[int, str, int, int]  # (tag, VR as pydicom holds it raw, value offset, length)


def walk(
    data: bytes | memoryview, start: int, end: int, base: int, implicit: bool, little: bool
) -> list[Element]:
    """The top-level elements encoded from ``start`` to ``end`` (offsets in the file, of which
    ``data`` holds at least the head), value offsets relative to ``base``. VR is "None" for implicit
    VR, as pydicom leaves a raw element's VR; a length of 0xFFFFFFFF is an undefined one.

    The top level is read here in one loop, without a call per element (``_Walker.header`` reads
    the same way): a CT slice's ~55 headers in 0.02 ms instead of 0.05, on every instance received."""
    walker = _Walker(data, end, little)
    plain, short, long = (
        walker.tag_length.unpack_from,
        walker.explicit_short.unpack_from,
        walker.explicit_long.unpack_from,
    )
    have = min(len(data), end)
    out: list[Element] = []
    pos = start
    while pos < end:
        if pos + 12 > have:  # near the end of what is at hand: the careful way, which names why
            tag, vr, length, value_at = walker.header(pos, implicit)
        elif implicit:
            group, elem, length = plain(data, pos)
            tag, vr, value_at = (group << 16) | elem, "None", pos + 8
        else:
            group, elem, raw_vr, length = short(data, pos)
            tag = (group << 16) | elem
            known = _VRS.get(raw_vr)
            if group == 0xFFFE or known is None:
                tag, vr, length, value_at = walker.header(pos, implicit)  # names what it is
            elif known[1]:
                vr, length, value_at = known[0], long(data, pos)[3], pos + 12
            else:
                vr, value_at = known[0], pos + 8
        if tag >> 16 == 0xFFFE:
            raise Unwalkable(f"an item or delimiter tag at the top level ({tag:08X})")
        out.append((tag, vr, value_at - base, length))
        if length == UNDEFINED:
            pos = walker.skip_value(value_at, length, vr, implicit, 0)
        else:
            pos = value_at + length
            if pos > end:
                raise Unwalkable("a value runs past the end")
    if pos != end:
        raise Unwalkable("the last element runs past the end")
    return out


class _Walker:
    def __init__(self, data: bytes | memoryview, end: int, little: bool) -> None:
        self.data, self.end = data, end
        self.order = "<" if little else ">"
        self.tag_length = struct.Struct(self.order + "HHI")
        self.explicit_short = struct.Struct(self.order + "HH2sH")
        self.explicit_long = struct.Struct(self.order + "HH2s2xI")

    def _need(self, pos: int, size: int) -> None:
        if pos + size > self.end:
            raise Unwalkable("a header runs past the end")
        if pos + size > len(self.data):
            raise NeedMore("a header lies past the bytes read")

    def header(self, pos: int, implicit: bool) -> tuple[int, str, int, int]:
        """(tag, VR, length, value offset) of the element whose header starts at ``pos``."""
        self._need(pos, 8)
        if implicit:
            group, elem, length = self.tag_length.unpack_from(self.data, pos)
            return (group << 16) | elem, "None", length, pos + 8
        group, elem, raw_vr, length = self.explicit_short.unpack_from(self.data, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE:  # items and delimiters have no VR in any encoding
            group, elem, length = self.tag_length.unpack_from(self.data, pos)
            return tag, "None", length, pos + 8
        try:
            vr = raw_vr.decode("ascii")
        except UnicodeDecodeError as exc:
            raise Unwalkable(f"element {tag:08X} has no VR pydicom would read as such") from exc
        if vr not in KNOWN_VRS:
            raise Unwalkable(f"element {tag:08X} has no VR pydicom would read as such")
        if vr in LONG_VRS:
            self._need(pos, 12)
            (_, _, _, length) = self.explicit_long.unpack_from(self.data, pos)
            return tag, vr, length, pos + 12
        return tag, vr, length, pos + 8

    def skip_value(self, at: int, length: int, vr: str, implicit: bool, depth: int) -> int:
        """Where the element whose value starts at ``at`` ends."""
        if length != UNDEFINED:
            if at + length > self.end:
                raise Unwalkable("a value runs past the end")
            return at + length
        if depth >= MAX_DEPTH:
            raise Unwalkable("sequences nested too deep")
        # PS3.5 6.2.2: a UN of undefined length holds a sequence encoded in implicit VR
        return self._skip_items(at, implicit or vr == "UN", depth + 1)

    def _skip_items(self, pos: int, implicit: bool, depth: int) -> int:
        """Past the sequence delimiter of the items (or fragments) starting at ``pos``."""
        while True:
            self._need(pos, 8)
            group, elem, length = self.tag_length.unpack_from(self.data, pos)
            tag, pos = (group << 16) | elem, pos + 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                raise Unwalkable(f"{tag:08X} where an item was due")
            if length != UNDEFINED:
                if pos + length > self.end:
                    raise Unwalkable("an item runs past the end")
                pos += length
                continue
            while True:  # an item of undefined length: its elements up to the item delimiter
                tag, vr, length, value_at = self.header(pos, implicit)
                if tag == ITEM_END:
                    pos = value_at
                    break
                if tag >> 16 == 0xFFFE:
                    raise Unwalkable(f"{tag:08X} inside an item")
                pos = self.skip_value(value_at, length, vr, implicit, depth)
