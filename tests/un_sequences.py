"""Sequences written as UN of undefined length (PS3.5 6.2.2): what a tool that lacks the tags writes.

Shared by the content hash tests and the malformed input generator.
"""

from __future__ import annotations

import copy
import struct

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

PRIVATE_CREATOR = "UN SEQUENCES 1.0"


def add_sequences(ds: Dataset) -> int:
    """A public SQ with a nested one, and a private SQ with a nested private SQ; returns the
    private sequence's tag. Items of defined and undefined length, as writers mix them."""
    first, second, code = Dataset(), Dataset(), Dataset()
    first.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    first.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121311", "DCM", "Localizer"
    second.ReferencedSOPInstanceUID = "1.2.3.4.5.7"
    second.PurposeOfReferenceCodeSequence = Sequence([code])
    second.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = Sequence([first, second])

    block = ds.private_block(0x0029, PRIVATE_CREATOR, create=True)
    inner, item = Dataset(), Dataset()
    inner.add_new(block.get_tag(0x03), "US", 7)
    inner.is_undefined_length_sequence_item = True
    item.add_new(block.get_tag(0x01), "LO", "private text")
    item.add_new(block.get_tag(0x02), "SQ", Sequence([inner]))
    item[block.get_tag(0x02)].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    block.add_new(0x10, "SQ", Sequence([item]))
    return int(block.get_tag(0x10))


def undefined_un(ds: Dataset, *, little: bool = False) -> bytes:
    """``ds`` as a Part 10 file in explicit VR big (or little) endian, every top-level SQ written
    as UN of undefined length, its items and delimiters implicit VR little endian (PS3.5 6.2.2).

    Values are written as they are held: read big endian data for a big endian file."""
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = little, False
    order = "<" if little else ">"
    for tag in sorted(map(int, ds.keys())):
        elem = ds[tag]
        if elem.VR != "SQ":
            write_data_element(body, elem)
            continue
        elem = copy.deepcopy(elem)
        elem.is_undefined_length = True
        un = DicomBytesIO()
        un.is_little_endian, un.is_implicit_VR = True, True
        write_data_element(un, elem)
        value = un.getvalue()[8:]
        assert value.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
        body.write(struct.pack(order + "HH", tag >> 16, tag & 0xFFFF) + b"UN\0\0\xff\xff\xff\xff" + value)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    file_meta = copy.deepcopy(ds.file_meta)
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    write_file_meta_info(meta, file_meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + meta.getvalue() + body.getvalue()


def un_header(tag: int, *, little: bool = False) -> bytes:
    """The bytes that start such an element, to find it in a file."""
    order = "<" if little else ">"
    return struct.pack(order + "HH", tag >> 16, tag & 0xFFFF) + b"UN\0\0\xff\xff\xff\xff"
