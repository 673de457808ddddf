"""The content hash: stable across transfer syntaxes and file meta, sensitive to every value."""

from __future__ import annotations

import contextlib
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

from dicom_chain.carriers.dicom import canonical, rawvalues
from dicom_chain.carriers.dicom.canonical import (
    CANONICAL_VERSION,
    content_digests,
    content_hash,
    lossy_pixels,
)
from dicom_chain.carriers.dicom.carrier import DICOM, _parsed_in_place, read_dataset
from dicom_chain.carriers.dicom.unlengths import un_lengths_defined
from dicom_chain.errors import MalformedDatasetError, NotDicomError
from dicom_chain.node import Node
from dicom_chain.verify import verify_files

from .conftest import MALFORMED, TEST_FILES, pydicom_file, read
from .peers import require_tool
from .un_sequences import add_sequences, un_header, undefined_un

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


# --- version 1 stays put; version 2 (docs/design.md 1.4-1.6) -------------------------------------

# Computed with version 1 before version 2 existed: blocks chained by version 1 must keep verifying.
V1_FIXED = {
    "CT_small.dcm": "c8c582df0c76e5ca610fff2a9e189a10965de44287893a8d7cadcd99d913e0a0",
    "MR_small.dcm": "4391c2136cf60edae1f1a2dbb42e31d59e79e1cabd076cbc77789af039622a17",
    "rtplan.dcm": "be5e573f43e83ac8234ea4836b5e01c5ba372bef75aac1fd5e6f38c0619b8ab9",
    "priv_SQ.dcm": "e304208608e7fc1e6e76483adc36e070d073fad6ab3c733e6849be198f4f0319",
    "JPEG2000.dcm": "417150de8995f65e6d4263662cac4814715655360f2a4f23ff94a034f1e24ee8",
    "SC_rgb_rle.dcm": "ec735cab1fa6a7667cd55afe7336f3a35f4a56636e577caa339a4531f1e12697",
    "UN_sequence.dcm": "1ee8454f1251dd2158f825d772479761c8d715070f1e7f9f6f87cef6fa257bda",
    "test-SR.dcm": "2902c33c74008d1ba0fe7d1ffaf4ed2d2528be5ee6475b0ff44c46e6c83f760f",
}


@pytest.mark.parametrize("name", sorted(V1_FIXED))
def test_version_1_hashes_do_not_move(name):
    assert content_hash(read(name), version=1) == V1_FIXED[name]


def test_versions_differ_and_unknown_ones_are_refused():
    ds = read("CT_small.dcm")
    assert content_hash(ds) == content_hash(ds, version=CANONICAL_VERSION) != content_hash(ds, version=1)
    with pytest.raises(MalformedDatasetError):
        content_hash(ds, version=9)


def private_text_dataset(sh: bytes, lo: bytes, ob: bytes = b"\x01\x02\x00\x00") -> Dataset:
    ds = read("MR_small.dcm")
    ds.add_new(0x00091010, "LO", "ACME 1.0")
    ds.add_new(0x00091011, "SH", sh)
    ds.add_new(0x00091012, "LO", lo)
    ds.add_new(0x00091013, "OB", ob)
    return ds


def through_file(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    buf = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def test_v2_private_text_padding_is_hop_stable():
    """DCMTK drops extra trailing spaces of a private SH, pydicom writes NUL padding as a space:
    version 1 saw a change, version 2 does not; binary values keep their NULs."""
    original = through_file(private_text_dataset(b"ab  ", b"abc\x00"))
    hopped = through_file(private_text_dataset(b"ab", b"abc "), ImplicitVRLittleEndian)
    assert content_hash(original) == content_hash(hopped)
    assert content_hash(original, version=1) != content_hash(hopped, version=1)
    for sh, lo, ob in ((b"ab  ", b"abd\x00", b"\x01\x02\x00\x00"), (b"ab  ", b"abc\x00", b"\x01\x02")):
        changed = through_file(private_text_dataset(sh, lo, ob))
        assert content_hash(changed) != content_hash(original), (sh, lo, ob)


def test_v2_private_text_padding_survives_dcmtk(tmp_path):
    dcmconv = require_tool("dcmconv", "dcmtk")
    src, out = tmp_path / "in.dcm", tmp_path / "out.dcm"
    through_file(private_text_dataset(b"ab  ", b"abc\x00")).save_as(src)
    subprocess.run([dcmconv, "+te", str(src), str(out)], check=True, capture_output=True)
    raw = pydicom.dcmread(out)
    assert raw[0x00091011].value != b"ab  " or raw[0x00091012].value != b"abc\x00"  # DCMTK did rewrite
    assert content_hash(raw) == content_hash(pydicom.dcmread(src))


def test_v2_empty_private_sequence_equals_its_implicit_vr_hop():
    ds = read("MR_small.dcm")
    ds.add_new(0x00091010, "LO", "ACME 1.0")
    ds.add_new(0x00091011, "SQ", [])
    explicit = through_file(ds)
    implicit = through_file(copy.deepcopy(ds), ImplicitVRLittleEndian)
    assert explicit[0x00091011].VR == "SQ" and implicit.get_item(0x00091011).value in (b"", None)
    assert content_hash(explicit) == content_hash(implicit)
    assert content_hash(explicit, version=1) != content_hash(implicit, version=1)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "examples_rgb_color.dcm"])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"], ids=["rle", "j2k"])
def test_v2_lossless_compression_keeps_the_hash(name, syntax):
    original = read(name)
    compressed = copy.deepcopy(original)
    compressed.compress(syntax, generate_instance_uid=False)
    compressed = through_file(compressed, syntax)
    assert compressed.file_meta.TransferSyntaxUID == syntax and compressed["PixelData"].is_undefined_length
    assert content_hash(compressed) == content_hash(original)
    assert content_hash(compressed, version=1) != content_hash(original, version=1)


@pytest.mark.parametrize(
    "tool, options",
    [("dcmcjpls", []), ("dcmcjpeg", ["+e1"]), ("dcmcjpeg", ["+el"]), ("dcmcrle", [])],
    ids=["jpeg-ls", "jpeg-sv1", "jpeg-lossless", "rle"],
)
def test_v2_dcmtk_lossless_compression_keeps_the_hash(tmp_path, tool, options):
    exe = require_tool(tool, "dcmtk")
    for name in ("CT_small.dcm", "SC_rgb_small_odd.dcm"):
        out = tmp_path / f"{tool}-{name}"
        subprocess.run([exe, *options, str(pydicom_file(name)), str(out)], check=True, capture_output=True)
        hopped = pydicom.dcmread(out)
        assert hopped.file_meta.TransferSyntaxUID.is_compressed
        assert content_hash(hopped) == content_hash(read(name)), name


def ct_like(stored: np.ndarray, *, bits_stored: int = 12, signed: bool = True) -> Dataset:
    ds = read("CT_small.dcm")
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def test_v2_bits_outside_bits_stored_are_no_part_of_the_value():
    values = np.random.default_rng(5).integers(-2048, 2048, size=128 * 128)
    clean = values.astype(np.int16).view(np.uint16)
    garbage = (clean & 0x0FFF) | 0x5000  # high bits hold something else (an old overlay, say)
    assert content_hash(ct_like(clean)) == content_hash(ct_like(garbage))
    changed = clean.copy()
    changed[77] ^= 0x0001
    assert content_hash(ct_like(changed)) != content_hash(ct_like(clean))
    assert content_hash(ct_like(clean), version=1) != content_hash(ct_like(garbage), version=1)


def test_v2_planar_configuration_is_a_layout_not_a_value():
    ds = read("SC_rgb_small_odd.dcm")
    pixels = np.frombuffer(ds.PixelData[: 3 * 3 * 3], np.uint8).reshape(3, 3, 3)
    planar = copy.deepcopy(ds)
    planar.PlanarConfiguration = 1
    planar.PixelData = pixels.transpose(2, 0, 1).tobytes() + b"\x00"
    assert content_hash(planar) == content_hash(ds)
    reread = copy.deepcopy(ds)
    reread.PlanarConfiguration = 1  # the same bytes read by plane: other pixel values
    assert content_hash(reread) != content_hash(ds)


def test_v2_reversible_colour_transform_hashes_as_rgb():
    ds = read("examples_rgb_color.dcm")
    compressed = copy.deepcopy(ds)
    compressed.compress("1.2.840.10008.1.2.4.90", generate_instance_uid=False)
    compressed.PhotometricInterpretation = "YBR_RCT"
    assert content_hash(through_file(compressed, "1.2.840.10008.1.2.4.90")) == content_hash(ds)


def test_v2_undecodable_lossless_pixels_hash_as_their_fragments():
    ds = read("SC_rgb_rle.dcm")
    frames = list(generate_frames(ds.PixelData, number_of_frames=1))
    broken = copy.deepcopy(ds)
    broken.PixelData = encapsulate([frames[0][:64] + b"\xff" * (len(frames[0]) - 64)])
    digest = content_hash(broken)  # no exception: the fragments stand for the pixels
    assert digest != content_hash(ds)
    broken.PixelData = encapsulate([frames[0][:64] + b"\xfe" * (len(frames[0]) - 64)])
    assert content_hash(broken) != digest


def test_v2_attributes_hash_leaves_out_pixels_and_their_encoding_only():
    ds = read("CT_small.dcm")
    base = content_digests(ds)
    assert base.version == 2 and len(base.attributes) == 64
    pixels = copy.deepcopy(ds)
    pixels.PixelData = bytes(len(ds.PixelData))
    pixels.LossyImageCompression = "01"
    pixels.DerivationDescription = "lossy JPEG"
    again = content_digests(pixels)
    assert again.attributes == base.attributes and again.content != base.content
    other = copy.deepcopy(ds)
    other.PatientName = "SOMEONE^ELSE"
    assert content_digests(other).attributes != base.attributes
    assert content_digests(ds, version=1).attributes == ""


def test_v2_lossy_pixels_are_named():
    assert lossy_pixels(read("CT_small.dcm")) == ""
    assert lossy_pixels(read("MR_small_RLE.dcm")) == ""
    assert "lossy" in lossy_pixels(read("SC_rgb_jpeg_dcmtk.dcm"))
    flagged = read("CT_small.dcm")
    flagged.LossyImageCompression = "01"
    assert "01" in lossy_pixels(flagged)


def test_frozen_dictionary_is_the_one_pydicom_shipped_when_version_2_was_defined():
    """The VR decisions use DICOM 2024c whatever pydicom is installed; this pins that the frozen
    copy holds what pydicom 3.0 had, so a difference is a decision, not an accident."""
    from pydicom.datadict import dictionary_VR

    from dicom_chain.carriers.dicom.canonical import DICTIONARY_EDITION, _dictionary_vr

    assert DICTIONARY_EDITION == "2024c"
    for tag in (0x00100010, 0x7FE00010, 0x00081140, 0x60003000, 0x50000010, 0x00280106):
        assert _dictionary_vr(tag) == dictionary_VR(tag)
    assert _dictionary_vr(0x00091010) is None and _dictionary_vr(0x00990010) is None


SEQUENCE_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _undefined_length_un_files() -> tuple[Dataset, bytes, int]:
    """MR_small with a public and a private sequence (nested ones inside), and the same data as
    explicit VR big endian with both sequences written as UN of undefined length; the private tag."""
    little = read("MR_small.dcm")
    private = add_sequences(little)
    big = read("MR_small_bigendian.dcm")  # its pixels already big endian, as the file must hold them
    add_sequences(big)
    return little, undefined_un(big), private


def test_undefined_length_un_in_big_endian_hashes_as_in_little_endian(tmp_path: Path):
    """PS3.5 6.2.2: the items are implicit VR little endian whatever the syntax; pydicom alone
    reads them in the file's byte order, so the carrier reads such files through un_lengths_defined."""
    little, data, private = _undefined_length_un_files()
    expected = content_hash(little)
    assert content_hash(rewrite(little, ImplicitVRLittleEndian)) == expected
    assert content_hash(rewrite(little, ExplicitVRLittleEndian)) == expected
    assert DICOM.open(data).content_hash() == expected  # how verify and ingest read bytes
    path = tmp_path / "big.dcm"
    path.write_bytes(data)
    ds = read_dataset(path)
    assert ds.original_encoding == (False, False)
    assert ds.get_item(0x00081140).VR == "UN" and ds.get_item(private).VR == "UN"
    assert content_hash(ds) == expected


def test_undefined_length_un_in_big_endian_is_still_hashed_by_value():
    little, data, _ = _undefined_length_un_files()
    for text in (b"private text", b"Localizer"):  # in the private and in the nested public item
        at = data.index(text)
        changed = data[:at] + b"X" + data[at + 1 :]
        assert DICOM.open(changed).content_hash() != content_hash(little), text


def test_only_undefined_length_un_in_big_endian_is_touched():
    """Every other file goes to pydicom byte for byte, so no other hash can move."""
    for path in sorted(TEST_FILES.glob("*.dcm")):
        data = path.read_bytes()
        assert un_lengths_defined(data) is data, path.name
    little, data, _ = _undefined_length_un_files()
    le = undefined_un(little, little=True)  # pydicom reads explicit VR little endian UN items itself
    assert un_lengths_defined(le) is le
    fixed = un_lengths_defined(data)
    assert len(fixed) == len(data) and fixed.replace(b"\xff\xff\xff\xff", b"") != data


def test_undefined_length_un_in_big_endian_chains_and_verifies(tmp_path: Path, node: Node):
    """Ingest splices the block into the bytes as received; the stored file reads and verifies."""
    little, data, _ = _undefined_length_un_files()
    path = tmp_path / "big.dcm"
    path.write_bytes(data)
    result = node.ingest_file(path)
    assert result.block.header.content_hash == content_hash(little)
    stored = result.path.read_bytes()
    assert un_header(0x00081140) in stored  # written as received, not re-encoded
    assert verify_files([result.path]).ok


@pytest.mark.dcmtk
def test_dcmtk_reencoding_of_undefined_length_un_keeps_hash(tmp_path: Path):
    """DCMTK reads such a UN as a sequence (CP-246) and writes it as SQ, the private one too
    (with its unknown elements as UN); whatever the syntax, the hash stays."""
    dcmconv = require_tool("dcmconv", "dcmtk")
    little, data, private = _undefined_length_un_files()
    expected = content_hash(little)
    sources = {"big": data, "little": undefined_un(little, little=True)}
    for name, source in sources.items():
        original = tmp_path / f"{name}.dcm"
        original.write_bytes(source)
        for option in ("+tb", "+te", "+ti"):
            out = tmp_path / f"{name}{option[1:]}.dcm"
            subprocess.run([dcmconv, option, str(original), str(out)], check=True, capture_output=True)
            ds = read_dataset(out)
            assert content_hash(ds) == expected, (name, option)
            if option != "+ti":
                assert ds.get_item(0x00081140).VR == "SQ" and ds.get_item(private).VR == "SQ"
        back = tmp_path / f"{name}back.dcm"
        subprocess.run([dcmconv, "+tb", str(tmp_path / f"{name}ti.dcm"), str(back)], check=True)
        assert content_hash(read_dataset(back)) == expected, name


def _broken_undefined_length_un() -> dict[str, bytes]:
    """Item structures inside a big endian file's UN that do not hold together."""
    _, data, private = _undefined_length_un_files()
    public_at = data.index(un_header(0x00081140)) + 12
    private_at = data.index(un_header(private)) + 12
    pixels_at = data.index(b"\x7f\xe0\x00\x10OW")
    last = data.rindex(SEQUENCE_DELIMITER_LE, private_at, pixels_at)  # the private sequence's own
    nested_item_end = data.index(b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", private_at)
    overrun = bytearray(data)
    assert overrun[public_at : public_at + 4] == b"\xfe\xff\x00\xe0"
    struct.pack_into("<I", overrun, public_at + 4, 0xFFFFFFF0)
    short_item = bytearray(data)
    struct.pack_into("<I", short_item, public_at + 4, 7)  # ends inside the item's first element
    return {
        "item overruns the file": bytes(overrun),
        "item ends inside an element": bytes(short_item),
        "private sequence delimiter missing": data[:last] + data[last + 8 :],
        "nested item delimiter missing": data[:nested_item_end] + data[nested_item_end + 8 :],
        "file ends inside the items": data[: private_at + 20],
        "file ends before the delimiter": data[:last],
    }


@pytest.mark.parametrize("name", list(_broken_undefined_length_un()))
def test_broken_undefined_length_un_is_a_named_error(name: str):
    data = _broken_undefined_length_un()[name]
    carried = DICOM.open(data)  # reads: what does not end is a truncated element
    with pytest.raises(MalformedDatasetError):
        carried.content_hash()


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_garbled_undefined_length_un_never_escapes_as_another_error(data):
    _, good, private = _undefined_length_un_files()
    start = good.index(un_header(0x00081140))
    end = good.index(SEQUENCE_DELIMITER_LE, good.index(un_header(private))) + 16
    raw = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(start, end))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(start, len(raw))))
    garbled = bytes(raw if cut is None else raw[:cut])
    try:
        carried = DICOM.open(garbled)
    except NotDicomError:
        return
    with contextlib.suppress(MalformedDatasetError):
        carried.content_hash()


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


def _multiframe_planar_rgb(frames: int) -> Dataset:
    ds = read("SC_rgb_small_odd.dcm")  # 3 x 3 RGB, 8 bits
    ds.PlanarConfiguration = 1
    ds.NumberOfFrames = frames
    ds.PixelData = bytes(i * 7 % 256 for i in range(frames * 27)) + b"\x00"
    return ds


DEFERRED_CASES = {
    "12 of 16 bits, signed, high bits set": ct_like(
        (np.arange(128 * 128, dtype=np.uint32) * 40503 % 65536).astype(np.uint16)
    ),
    "planar RGB, 5 frames, odd length": _multiframe_planar_rgb(5),
    "pixel data shorter than the image": ct_like(np.arange(100, dtype=np.uint16)),
}


@pytest.mark.parametrize(
    "path",
    [*sorted(TEST_FILES.glob("*.dcm")), *DEFERRED_CASES],
    ids=lambda p: p.name if isinstance(p, Path) else p,
)
def test_pixels_left_on_disk_hash_as_pixels_read_whole(path, tmp_path: Path, monkeypatch):
    """A received file is read with defer_size, its pixels hashed from disk a chunk at a time
    (carrier.received_file): the hashes must be those of the file read whole, or the same error.
    Chunks of 96 bytes here, so that every file's pixels span several."""
    monkeypatch.setattr("dicom_chain.carriers.dicom.canonical.PIXEL_CHUNK_BYTES", 96)
    if not isinstance(path, Path):
        ds = DEFERRED_CASES[path]
        path = tmp_path / "case.dcm"
        ds.save_as(path, enforce_file_format=True)

    def digests(**read_args) -> object:
        try:
            return content_digests(pydicom.dcmread(path, **read_args))
        except Exception as exc:  # the same kind of failure either way (read deferred, a cut-short
            # sequence is named itself; read whole, the element inside it that the cut falls in)
            return type(exc)

    assert digests(defer_size=1) == digests()


def test_pixels_cut_short_on_disk_are_refused_as_truncated(tmp_path: Path):
    ds = ct_like(np.arange(128 * 128, dtype=np.uint16))
    path = tmp_path / "cut.dcm"
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(MalformedDatasetError, match="truncated"):
        content_digests(pydicom.dcmread(path, defer_size=1024))


@pytest.mark.dcmtk
def test_pixel_bytes_past_the_image_are_no_part_of_the_content(tmp_path: Path):
    """MR_small_padded.dcm holds 128 bytes past its 64x64 image. A lossless codec encodes the
    image and drops them (DCMTK's dcmcjpls here; Orthanc's ingest transcoding alike), so the
    content is the image, as for the pad byte (1.5): the copy still verifies, and the receipt
    event names the excess instead (validation.py)."""
    padded = read("MR_small_padded.dcm")
    assert len(padded.PixelData) == 8320
    deferred = pydicom.dcmread(pydicom_file("MR_small_padded.dcm"), defer_size=1024)
    assert content_hash(deferred) == content_hash(padded) == content_hash(read("MR_small.dcm"))
    out = tmp_path / "jls.dcm"
    subprocess.run([require_tool("dcmcjpls", "dcmtk"), pydicom_file("MR_small_padded.dcm"), out], check=True)
    compressed = pydicom.dcmread(out)
    assert compressed.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert content_hash(compressed) == content_hash(padded)
    changed = copy.deepcopy(padded)
    changed.PixelData = padded.PixelData[:100] + bytes([padded.PixelData[100] ^ 1]) + padded.PixelData[101:]
    assert content_hash(changed) != content_hash(padded)  # within the image, any change shows


# --- The shortcuts (canonical._FAST_PATH) and pixels hashed where they were received -------------

EVERY_INPUT = [*sorted(p for p in TEST_FILES.rglob("*") if p.is_file()), *sorted(MALFORMED.iterdir())]


def _outcome(compute) -> object:
    """The digests, or the named error (type and message) the computation ends in."""
    try:
        return compute()
    except Exception as exc:
        return type(exc).__name__, str(exc)


def _both_ways(monkeypatch, compute) -> tuple[object, object]:
    fast = _outcome(compute)
    monkeypatch.setattr(canonical, "_FAST_PATH", False)
    monkeypatch.setattr(rawvalues, "ENABLED", False)
    slow = _outcome(compute)
    monkeypatch.setattr(canonical, "_FAST_PATH", True)
    monkeypatch.setattr(rawvalues, "ENABLED", True)
    return fast, slow


@pytest.mark.parametrize("path", EVERY_INPUT, ids=lambda p: p.name)
def test_the_shortcuts_hash_every_input_as_the_general_path_does(path: Path, monkeypatch):
    """Every pydicom test file and every malformed input, in both versions, read whole and as a
    C-STORE received to memory (pixels left in the buffer): the same digests with and without the
    shortcuts, or the same error. Each computation parses afresh: hashing converts some values."""

    def read_whole(version: int):
        return lambda: content_digests(read_dataset(path), version)

    def received():
        data = path.read_bytes()
        return DICOM.received_bytes(data, pydicom.dcmread(io.BytesIO(data)).file_meta).digests()

    for compute in (read_whole(1), read_whole(2), received):
        fast, slow = _both_ways(monkeypatch, compute)
        assert fast == slow


@pytest.mark.parametrize("path", EVERY_INPUT, ids=lambda p: p.name)
def test_pixels_hashed_in_the_received_buffer_hash_as_pixels_read_whole(path: Path):
    """A data set received to memory is parsed with its pixels left in the buffer
    (carrier._parsed_in_place) and hashed from a view of it: the digests of the bytes parsed the
    plain way, or the same error."""
    data = path.read_bytes()
    for version in (1, 2):
        whole = _outcome(lambda v=version: content_digests(pydicom.dcmread(io.BytesIO(data)), v))
        in_place = _outcome(lambda v=version: content_digests(_parsed_in_place(data), v, data))
        assert in_place == whole


def test_a_received_ct_slice_keeps_its_pixels_in_the_buffer():
    """The case the shortcut is for: the pixels are not read out of the received bytes, yet what
    reads them as a value (pydicom's writer, say) still gets them."""
    ds = ct_like(np.arange(256 * 256, dtype=np.uint16) % 4096)
    ds.Rows = ds.Columns = 256
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    carried = DICOM.received_bytes(data, ds.file_meta)
    assert carried.dataset._dict[0x7FE00010].value is None  # left in the buffer
    assert carried.digests() == content_digests(pydicom.dcmread(io.BytesIO(data)))
    assert carried.dataset.PixelData == ds.PixelData


def test_received_pixels_cut_short_are_refused_as_truncated():
    ds = ct_like(np.arange(128 * 128, dtype=np.uint16))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()[:-1000]
    with pytest.raises(MalformedDatasetError, match=r"\(7FE0,0010\) is truncated: \d+ of 32768 bytes") as cut:
        DICOM.received_bytes(data, ds.file_meta).digests()
    with pytest.raises(MalformedDatasetError) as read_whole:
        content_digests(pydicom.dcmread(io.BytesIO(data)))
    assert str(cut.value) == str(read_whole.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bits=st.sampled_from([(16, 12, 11), (16, 12, 13), (16, 15, 14), (8, 7, 6), (32, 24, 23), (16, 1, 0)]),
    signed=st.booleans(),
    data=st.data(),
)
def test_samples_already_normal_skip_normalising_with_the_same_bytes(bits, signed, data):
    """Samples whose bits above Bits Stored are clear (or each a sign extension) are hashed as they
    are; any other are normalised. Either way the bytes are those of normalising them."""
    allocated, stored, high = bits
    limit = (1 << stored) - 1
    mostly_in_range = st.integers(-(limit + 1) // 2 if signed else 0, limit // 2 if signed else limit)
    half = (limit + 1) // 2
    edges = st.sampled_from([limit, limit + 1, half - 1, half, -half, -half - 1])  # each side of the range
    values = data.draw(
        st.lists(st.one_of(mostly_in_range, edges, st.integers(0, (1 << allocated) - 1)), min_size=1)
    )
    samples = np.array([v % (1 << allocated) for v in values], dtype=f"<u{allocated // 8}")
    shape = canonical._PixelShape(1, len(values), 1, 1, allocated, stored, high, signed, False, "MONOCHROME2")
    fast = bytes(shape.normalise(samples.copy()))
    canonical._FAST_PATH = False
    try:
        assert bytes(shape.normalise(samples.copy())) == fast
    finally:
        canonical._FAST_PATH = True
