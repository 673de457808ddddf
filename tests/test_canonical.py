"""The content hash: stable across transfer syntaxes and file meta, sensitive to every value."""

from __future__ import annotations

import copy
import io
import struct
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_chain.carriers.dicom.canonical import content_hash
from dicom_chain.errors import MalformedDatasetError

from .conftest import TEST_FILES, read
from .peers import require_tool

# The same data in several transfer syntaxes, as shipped by pydicom. (rtdose_expb*.dcm is left
# out: it orders 32-bit pixels per pixel, where PS3.5 and DCMTK swap OW per 16-bit word; see
# docs/design.md. The DCMTK test below covers rtdose the way a PACS re-encodes it.)
SAME_DATA = [
    ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"],
    ["liver_1frame.dcm", "liver_expb_1frame.dcm"],
    ["SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"],
]
UNCOMPRESSED = sorted(
    p.name
    for p in TEST_FILES.glob("*.dcm")
    if p.name
    not in {
        "ExplVR_BigEndNoMeta.dcm",
        "ExplVR_LitEndNoMeta.dcm",
        "no_meta.dcm",
        "rtstruct.dcm",
        "empty_charset_LEI.dcm",
        "meta_missing_tsyntax.dcm",
        "nested_priv_SQ.dcm",
        "SC_rgb_jpeg.dcm",
        "MR_truncated.dcm",
        "rtplan_truncated.dcm",
    }
    and not pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
)


def rewrite(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Re-encode in memory with pydicom (little endian syntaxes) and read back."""
    out = copy.deepcopy(ds)
    out.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    out.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


@pytest.mark.parametrize("names", SAME_DATA, ids=lambda names: names[0])
def test_same_data_in_other_transfer_syntaxes_hashes_the_same(names):
    hashes = {name: content_hash(read(name)) for name in names}
    assert len(set(hashes.values())) == 1, hashes


def test_different_instances_hash_differently():
    hashes = [
        content_hash(read(name)) for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm")
    ]
    assert len(set(hashes)) == len(hashes)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "priv_SQ.dcm", "test-SR.dcm"])
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_pydicom_reencoding_keeps_hash(name, syntax):
    ds = read(name)
    assert content_hash(rewrite(ds, syntax)) == content_hash(ds)


@pytest.mark.dcmtk
@pytest.mark.parametrize("name", UNCOMPRESSED)
def test_dcmtk_reencoding_between_uncompressed_syntaxes_keeps_hash(name, tmp_path: Path):
    """DCMTK's dcmconv does what a DCMTK-based PACS does on a hop: every syntax, and back."""
    dcmconv = require_tool("dcmconv", "dcmtk")
    original = TEST_FILES / name
    expected = content_hash(pydicom.dcmread(original))
    for option in ("+ti", "+te", "+tb", "+td"):
        out = tmp_path / f"{option[1:]}.dcm"
        subprocess.run([dcmconv, option, str(original), str(out)], check=True, capture_output=True)
        assert content_hash(pydicom.dcmread(out)) == expected, option


def test_file_meta_is_not_hashed():
    ds = read("CT_small.dcm")
    before = content_hash(ds)
    ds.file_meta.ImplementationClassUID = "1.2.3.4"
    ds.file_meta.ImplementationVersionName = "OTHER_PACS"
    ds.file_meta.SourceApplicationEntityTitle = "ORTHANC"
    assert content_hash(ds) == before


def test_group_lengths_and_trailing_padding_are_not_hashed():
    ds = read("CT_small.dcm")
    before = content_hash(ds)
    ds.add_new(0x00080000, "UL", 1234)
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 16)
    assert content_hash(ds) == before


def test_string_padding_is_not_value():
    ds = read("CT_small.dcm")
    before = content_hash(ds)
    ds.PatientID = str(ds.PatientID) + " "
    assert content_hash(ds) == before


def test_other_private_blocks_are_hashed():
    ds = read("CT_small.dcm")
    before = content_hash(ds)
    gems = ds.private_block(0x0009, "GEMS_IDEN_01")
    tag = next(t for t in ds.keys() if t.group == 0x0009 and t.element > 0x00FF)
    ds[tag].value = b"X" * 8 if isinstance(ds[tag].value, bytes) else "CHANGED"
    assert gems is not None
    assert content_hash(ds) != before


@pytest.mark.parametrize("has_bot", [True, False])
def test_encapsulated_pixel_data_is_hashed_by_fragment_not_offset_table(has_bot):
    """A hop may rebuild the Basic Offset Table; only a change inside a fragment counts."""
    ds = read("JPEG2000.dcm")
    before = content_hash(ds)
    frames = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate(frames, has_bot=has_bot)
    assert content_hash(ds) == before
    changed = bytearray(frames[0])
    changed[len(changed) // 2] ^= 0xFF
    ds.PixelData = encapsulate([bytes(changed)], has_bot=True)
    assert content_hash(ds) != before


def test_garbled_encapsulation_is_a_named_error():
    ds = read("JPEG2000.dcm")
    ds.PixelData = b"\xfe\xff\x00\xe0\xff\xff\x00\x00garbage"
    ds["PixelData"].is_undefined_length = True
    with pytest.raises(MalformedDatasetError):
        content_hash(ds)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_one_pixel_change_changes_hash(data):
    ds = read(
        data.draw(st.sampled_from(["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "rtdose.dcm"]))
    )
    before = content_hash(ds)
    arr = ds.pixel_array.copy()
    flat = arr.reshape(-1)
    index = data.draw(st.integers(0, flat.size - 1))
    info = np.iinfo(flat.dtype)
    new = data.draw(st.integers(int(info.min), int(info.max)).filter(lambda v: v != int(flat[index])))
    flat[index] = new
    raw = arr.astype(arr.dtype.newbyteorder(">" if not ds.original_encoding[1] else "<")).tobytes()
    ds.PixelData = raw
    assert content_hash(ds) != before


def _mutable_tags(ds: Dataset) -> list:
    """Every valued attribute but pixels (own test), sequences, and what is excluded by design."""
    skip = {0x7FE00010, 0xFFFCFFFC}
    return [
        t
        for t in ds.keys()
        if t not in skip and t.element != 0 and ds[t].VR != "SQ" and ds[t].value not in (None, "", b"")
    ]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_one_attribute_change_changes_hash(data):
    name = data.draw(st.sampled_from(["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "MR_small_implicit.dcm"]))
    ds = read(name)
    before = content_hash(ds)
    tag = data.draw(st.sampled_from(_mutable_tags(ds)))
    elem = ds[tag]
    value = elem.value
    if isinstance(value, bytes):
        flip = data.draw(st.integers(0, len(value) - 1))
        elem.value = value[:flip] + bytes([value[flip] ^ 0x01]) + value[flip + 1 :]
    elif isinstance(value, int):
        elem.value = value + 1 if value < 30000 else value - 1
    elif isinstance(value, float):
        elem.value = value + 1.0
    elif elem.VM > 1:
        first = value[0]
        elem.value = [(first + 1) if isinstance(first, int | float) else str(first) + "1", *list(value)[1:]]
    else:
        elem.value = str(value) + "Z"
    assert content_hash(ds) != before, (name, tag)


def test_change_inside_a_sequence_item_changes_hash():
    ds = read("rtplan.dcm")
    before = content_hash(ds)
    item = ds.BeamSequence[0]
    item.BeamName = str(item.BeamName) + "X"
    assert content_hash(ds) != before


def test_removing_a_sequence_item_changes_hash():
    ds = read("rtplan.dcm")
    before = content_hash(ds)
    del ds.BeamSequence[-1]
    assert content_hash(ds) != before


def test_private_sequence_that_lost_its_vr_hashes_as_a_sequence():
    """priv_SQ.dcm is implicit VR: its private sequence reads as UN bytes, yet hashes as items."""
    ds = read("priv_SQ.dcm")
    explicit = rewrite(ds, ExplicitVRLittleEndian)
    assert content_hash(explicit) == content_hash(ds)


def _explicit_big_endian_with_un_sequences(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file in explicit VR big endian, each public SQ written as UN: its value
    implicit VR little endian, as PS3.5 6.2.2 says and as a tool that lacks the tag would write it."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element, write_file_meta_info
    from pydicom.uid import ExplicitVRBigEndian

    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = False, False
    for tag in sorted(map(int, ds.keys())):
        elem = ds[tag]
        if elem.VR != "SQ" or elem.tag.is_private:
            write_data_element(body, elem)
            continue
        un = DicomBytesIO()
        un.is_little_endian, un.is_implicit_VR = True, True
        write_data_element(un, elem)
        value = un.getvalue()[8:]
        body.write(struct.pack(">HH", tag >> 16, tag & 0xFFFF) + b"UN\0\0" + struct.pack(">I", len(value)))
        body.write(value)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    file_meta = copy.deepcopy(ds.file_meta)
    file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    write_file_meta_info(meta, file_meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + meta.getvalue() + body.getvalue()


def test_public_sequence_written_as_un_in_big_endian_hashes_as_in_little_endian():
    ds = read("CT_small.dcm")
    del ds.PixelData  # pydicom writes OW unswapped in big endian; the sequence is what is tested here
    assert any(ds[t].VR == "SQ" and not t.is_private for t in ds.keys())
    back = pydicom.dcmread(io.BytesIO(_explicit_big_endian_with_un_sequences(ds)))
    assert back.get_item(0x00101002).VR == "UN" and back.original_encoding == (False, False)
    assert content_hash(back) == content_hash(ds)


def test_public_sequence_written_as_un_that_is_not_items_is_a_named_error():
    ds = read("CT_small.dcm")
    del ds.PixelData
    data = bytearray(_explicit_big_endian_with_un_sequences(ds))
    at = data.index(b"\x00\x10\x10\x02UN")  # (0010,1002) as written big endian
    data[at + 12 : at + 16] = b"junk"  # the first item tag
    with pytest.raises(MalformedDatasetError):
        content_hash(pydicom.dcmread(io.BytesIO(bytes(data))))


@pytest.mark.dcmtk
def test_icon_pixels_compressed_with_the_image_hash_by_value(tmp_path: Path):
    """DCMTK's compressors encode an Icon Image Sequence's Pixel Data too (examples_overlay.dcm
    has one): in version 2 an item's pixels, like the image's, are hashed by value."""
    compressed = tmp_path / "rle.dcm"
    original = TEST_FILES / "examples_overlay.dcm"
    subprocess.run([require_tool("dcmcrle", "dcmtk"), str(original), str(compressed)], check=True)
    ds = pydicom.dcmread(compressed)
    assert ds.IconImageSequence[0]["PixelData"].is_undefined_length  # the icon was compressed too
    assert content_hash(ds) == content_hash(pydicom.dcmread(original))
