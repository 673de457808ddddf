"""Chained files written from the bytes as received, with only our block inserted.

Re-encoding a whole dataset with pydicom costs more than hashing and signing it, and may change
bytes we have no reason to touch. When the instance's encoded bytes are at hand (from the network
or a file) and nothing of ours is in them yet, the block's elements are encoded here and inserted
at their place in tag order; everything else is written byte for byte. Anything unusual (deflate,
elements already in our group) returns None and the caller falls back to
pydicom's writer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_chain.block import Block
from dicom_chain.carriers.dicom.elementwalk import LONG_VRS
from dicom_chain.carriers.dicom.embedding import block_elements, character_set, encode_value
from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP
from dicom_chain.carriers.dicom.unlengths import un_lengths_defined
from dicom_chain.errors import NotDicomError
from dicom_chain.storage import FileRange, Ranged

# VRs with a 4-byte length (and 2 reserved bytes) in explicit VR encodings, PS3.5 7.1.2
PREAMBLE = b"\x00" * 128 + b"DICM"
FIRST_SLOT = 0x10  # with nothing in our group yet, our creator takes the first private slot
_OUR_GROUP_END = (CHAIN_GROUP << 16) | 0xFFFF


@dataclass(frozen=True)
class FileSpan:
    """A dataset still on disk (a large C-STORE received to a file): read in ranges, never whole."""

    path: Path
    start: int  # where the dataset begins in the file (after the file meta)
    length: int

    def __len__(self) -> int:
        return self.length

    def read(self, at: int, size: int) -> bytes:
        with self.path.open("rb") as fp:
            fp.seek(self.start + at)
            return fp.read(max(0, min(size, self.length - at)))


@dataclass(frozen=True)
class EncodedInstance:
    """An instance's bytes as received, beside the Dataset parsed from them."""

    prefix: bytes  # preamble + file meta, written as they are
    body: bytes | memoryview | FileSpan  # the dataset, encoded in its transfer syntax (in memory, or on disk)
    tell_base: int  # offset of ``body`` in the buffer the Dataset's value tells refer to

    @classmethod
    def from_part10(cls, data: bytes) -> tuple[Dataset, EncodedInstance | None]:
        """Parse a Part 10 file; its encoded form too when the file meta says where the dataset starts.

        The encoded form keeps ``data`` as it is: un_lengths_defined only gives pydicom a copy
        it can read, with every offset unchanged.
        """
        try:
            ds = pydicom.dcmread(BytesIO(un_lengths_defined(data)))
        except Exception as exc:
            raise NotDicomError(f"not a readable DICOM file ({exc})") from exc
        meta_length = ds.file_meta.get("FileMetaInformationGroupLength")
        if data[128:132] != b"DICM" or not isinstance(meta_length, int):
            return ds, None
        start = len(PREAMBLE) + 12 + meta_length  # (0002,0000) UL: 12 bytes in explicit VR LE
        if start > len(data):
            return ds, None
        return ds, cls(data[:start], data[start:], start)

    @classmethod
    def from_network(cls, ds: Dataset, body: bytes) -> EncodedInstance:
        """A dataset as a DIMSE message carried it (tells from 0), with our own Part 10 header."""
        return cls(PREAMBLE + file_meta_bytes(ds.file_meta), body, 0)

    @classmethod
    def from_received_file(cls, ds: Dataset, path: Path) -> EncodedInstance:
        """A dataset received to a Part 10 file (tells are offsets in it), with our own Part 10
        header as ``from_network`` writes it: the same bytes whether received to memory or disk."""
        with path.open("rb") as fp:
            head = fp.read(len(PREAMBLE) + 12)
        size = path.stat().st_size
        start = _dataset_start(head, size, path.name)
        prefix = cls.from_network(ds, b"").prefix
        return cls(prefix, FileSpan(path, start, size - start), start)

    @classmethod
    def from_received_bytes(cls, ds: Dataset, data: bytes, prefix: bytes | None = None) -> EncodedInstance:
        """``from_received_file`` for a Part 10 file held in memory; the body is a view of ``data``.
        ``prefix``: ours for ``ds.file_meta``, when the caller made it already."""
        start = _dataset_start(data[: len(PREAMBLE) + 12], len(data), "received data set")
        if prefix is None:
            prefix = cls.from_network(ds, b"").prefix
        return cls(prefix, memoryview(data)[start:], start)

    def body_bytes(self, at: int, size: int) -> bytes:
        if isinstance(self.body, FileSpan):
            return self.body.read(at, size)
        return bytes(self.body[at : at + size])

    def pieces(self, at: int, ours: bytes) -> Iterable[bytes | memoryview]:
        """The file: our prefix, the body with ``ours`` inserted at ``at``; a body on disk as two
        ranges of its file, which the store copies in the kernel (storage.Ranged)."""
        if isinstance(self.body, FileSpan):
            span = self.body
            before = FileRange(span.path, span.start, at)
            after = FileRange(span.path, span.start + at, len(span) - at)
            return Ranged([self.prefix, before, ours, after])
        body = memoryview(self.body)  # slices of a view: the 0.5 MB of pixels are not copied twice
        return [self.prefix, body[:at], ours, body[at:]]


# The file meta elements a C-STORE's meta has (pynetdicom's Event.file_meta) and their VRs, PS3.10
# table 7.1-1; the order pydicom writes them in is the tag order.
_META_VRS = {
    0x00020000: "UL", 0x00020001: "OB", 0x00020002: "UI", 0x00020003: "UI",
    0x00020010: "UI", 0x00020012: "UI", 0x00020013: "SH", 0x00020016: "AE",
}  # fmt: skip
# Those pydicom's writer fills in itself when absent or empty (enforce_standard), or refuses without.
_META_REQUIRED = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013)
_META_PADDING = {"UI": b"\x00", "OB": b"\x00", "SH": b" ", "AE": b" "}


def file_meta_bytes(file_meta: FileMetaDataset) -> bytes:
    """The file meta group as pydicom's ``write_file_meta_info(enforce_standard=True)`` writes it,
    byte for byte: packed here for a C-STORE's meta (seven plain elements), 0.01 ms instead of 0.14
    per instance; any other meta (an element missing, empty, not ASCII, of another VR) is written by
    pydicom itself, so what it adds or refuses stays its decision."""
    packed = _packed_meta(file_meta)
    if packed is not None:
        return packed
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, file_meta, enforce_standard=True)
    return meta.getvalue()


def _packed_meta(file_meta: FileMetaDataset) -> bytes | None:
    tags = sorted(map(int, file_meta.keys()))
    if any(tag not in _META_VRS for tag in tags) or any(tag not in tags for tag in _META_REQUIRED):
        return None
    elements = []
    for tag in tags:
        if tag == 0x00020000:
            continue  # the group length: computed by meta_group, whatever the meta holds
        elem = file_meta[tag]
        vr, value = _META_VRS[tag], elem.value
        if vr != elem.VR:
            return None
        if isinstance(value, str) and value.isascii() and vr != "OB":
            data = value.encode("ascii")
        elif isinstance(value, bytes) and vr == "OB":
            data = value
        else:
            return None
        if not data:
            return None  # pydicom fills in an empty required element, or writes an empty one
        elements.append((tag, vr, data))
    return meta_group(elements)


def meta_group(elements: Iterable[tuple[int, str, bytes]]) -> bytes:
    """A file meta group, explicit VR little endian, from its elements (tag, VR, value) in tag
    order, without the group length: each value padded to even length as pydicom pads its VR,
    then the group length element put first. What ``file_meta_bytes`` and the receive path's
    packed meta (scp/receive.py) both write."""
    parts = []
    for tag, vr, data in elements:
        if len(data) % 2:
            data += _META_PADDING[vr]
        if vr == "OB":
            parts.append(struct.pack("<HH2sxxI", tag >> 16, tag & 0xFFFF, b"OB", len(data)) + data)
        else:
            parts.append(struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data)
    group = b"".join(parts)
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group)) + group


def _dataset_start(head: bytes, size: int, name: str) -> int:
    """Where the dataset begins in a Part 10 file of ``size`` bytes starting with ``head``."""
    if head[128:132] != b"DICM" or len(head) < len(PREAMBLE) + 12:
        raise NotDicomError(f"{name}: not a Part 10 file")
    start = len(PREAMBLE) + 12 + struct.unpack("<I", head[-4:])[0]  # (0002,0000) UL, explicit VR LE
    if start > size:
        raise NotDicomError(f"{name}: file meta runs past the end")
    return start


def _element(tag: int, vr: str, value: bytes, implicit: bool, little: bool) -> bytes:
    order = "<" if little else ">"
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(order + "I", len(value)) + value
    if vr in LONG_VRS:
        return head + vr.encode("ascii") + b"\x00\x00" + struct.pack(order + "I", len(value)) + value
    return head + vr.encode("ascii") + struct.pack(order + "H", len(value)) + value


def _value_tell(elem: RawDataElement | DataElement) -> int | None:
    tell = elem.value_tell if isinstance(elem, RawDataElement) else elem.file_tell
    return tell if isinstance(tell, int) else None


def _insertion_point(ds: Dataset, encoded: EncodedInstance, implicit: bool, little: bool) -> int | None:
    """Offset in ``body`` of the first element after our group; None if our group is in use."""
    for tag in sorted(map(int, ds.keys())):
        if tag >> 16 == CHAIN_GROUP:
            return None
        if tag <= _OUR_GROUP_END:
            continue
        elem = ds.get_item(tag, keep_deferred=True)  # a deferred value stays on disk: only its tell is needed
        tell = _value_tell(elem)
        if tell is None:
            return None
        want = struct.pack(("<" if little else ">") + "HH", tag >> 16, tag & 0xFFFF)
        for header in (8, 12):  # which one depends on the VR as encoded, checked against the bytes
            at = tell - header - encoded.tell_base
            if at >= 0 and encoded.body_bytes(at, 4) == want:
                return at
        return None
    return len(encoded.body)


def encoding_as_read(ds: Dataset) -> tuple[bool, bool] | None:
    """How the bytes really are encoded, which pydicom detects per element while reading and which
    need not be what the file meta claims (SC_rgb_jpeg.dcm says explicit VR, is implicit)."""
    for tag in ds.keys():
        elem = ds.get_item(tag, keep_deferred=True)
        if isinstance(elem, RawDataElement):
            return elem.is_implicit_VR, elem.is_little_endian
    return None


@dataclass(frozen=True)
class Splice:
    """Where the block's elements go in an instance's body, and their encoding."""

    at: int  # offset in the body of the first element after our group
    ours: bytes


def splice_point(ds: Dataset, encoded: EncodedInstance, block: Block) -> Splice | None:
    """Where and what to insert, or None when only pydicom can write the instance."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) is not None else None
    if syntax is None or syntax == DeflatedExplicitVRLittleEndian:
        return None
    encoding = encoding_as_read(ds)
    if encoding is None:
        return None
    implicit, little = encoding
    at = _insertion_point(ds, encoded, implicit, little)
    if at is None:
        return None
    charset = character_set(ds)
    ours = [
        _element(tag, vr, _encoded(vr, value, little, charset), implicit, little)
        for tag, vr, value in block_elements(block, FIRST_SLOT)
    ]
    return Splice(at, b"".join(ours))


def _encoded(vr: str, value: str | int | bytes, little: bool, charset: list[str]) -> bytes:
    """``encode_value``'s bytes; printable ASCII text (our hashes, UIDs, dates; a plain institution
    name) is those same bytes in every character set DICOM has (each keeps ASCII as it is, PS3.5
    6.1), so it is encoded here without a look-up of the character set for each of ~9 texts."""
    if isinstance(value, str) and value.isascii() and value.isprintable():
        data = value.encode("ascii")
        return data + b" " * (len(data) % 2)
    return encode_value(vr, value, little, charset)


def spliced(ds: Dataset, encoded: EncodedInstance, block: Block) -> Iterable[bytes | memoryview] | None:
    """The chained file as pieces to write in order, or None when only pydicom can write it."""
    splice = splice_point(ds, encoded, block)
    return None if splice is None else encoded.pieces(splice.at, splice.ours)


Layout = tuple[tuple[int, str, int, int], ...]  # (tag, VR, value offset in the body, length) per element


def layout(ds: Dataset, tell_base: int) -> Layout:
    """The top-level elements of a freshly parsed dataset as they lie in its body: what, where,
    how long. Read before anything else converts a value: pydicom converts Specific Character Set
    while reading, which keeps its place but not its length (-1; the next element's place, or the
    file's end, bounds it)."""
    out = []
    # the elements as held, deferred ones unread (get_item's keep_deferred), without a lookup each
    for tag, elem in sorted((int(tag), elem) for tag, elem in ds._dict.items()):
        tell = _value_tell(elem)
        if tell is None:
            raise ValueError(f"element {tag:08X} has no place in the bytes")
        length = elem.length if isinstance(elem, RawDataElement) else -1
        out.append((tag, str(elem.VR), tell - tell_base, length))
    return tuple(out)


def spliced_layout(received: Layout, splice: Splice) -> Layout:
    """The layout a file spliced at ``splice`` must have, our group aside."""
    shift = len(splice.ours)
    return tuple((t, vr, at + shift if at >= splice.at else at, n) for t, vr, at, n in received)
