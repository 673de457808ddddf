"""The element walk gives the layout pydicom's parse gives, or says it cannot (never another one)."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_chain.carriers.dicom.elementwalk import walk
from dicom_chain.carriers.dicom.splice import encoding_as_read, layout
from dicom_chain.errors import NeedMore, Unwalkable

from .conftest import MALFORMED, TEST_FILES
from .test_splice import SPLICEABLE

# Files whose walk is not pydicom's layout, and why: there confirm_written leaves it to pydicom.
DIFFERENT = {
    # The meta says explicit VR, the bytes are implicit: pydicom names the pixel data's VR from its
    # dictionary ("OB or OW") where a raw implicit element has none.
    "SC_rgb_jpeg.dcm",
}
DEFER_BYTES = 1 << 20  # as the carrier parses a stored file back


def _agree(found, expected) -> bool:
    """As DicomCarried compares them: a converted element (length -1) has its length bounded by
    the next element's place, and in implicit VR its VR from pydicom's dictionary."""
    if len(found) != len(expected):
        return False
    for (tag, vr, at, n), (want_tag, want_vr, want_at, want_n) in zip(found, expected, strict=True):
        if (tag, at) != (want_tag, want_at) or (want_n != -1 and n != want_n):
            return False
        if vr != want_vr and not (want_n == -1 and vr == "None"):
            return False
    return True


def _both(data: bytes):
    """(walk, pydicom's layout) of a Part 10 file's data set; the walk's result or its refusal."""
    ds = pydicom.dcmread(BytesIO(data), defer_size=DEFER_BYTES)
    start = 144 + struct.unpack("<I", data[140:144])[0]
    expected = layout(ds, start)
    encoding = encoding_as_read(ds)
    if encoding is None:  # no element left as read: splice_point gives up on it before any walk
        return Unwalkable("no element as read"), expected
    try:
        return walk(data, start, len(data), start, *encoding), expected
    except Unwalkable as exc:
        return exc, expected


def _part10_with_group_length(path: Path) -> bool:
    data = path.read_bytes()[:144]
    return data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"


def _pydicom_reads(path: Path) -> bool:
    try:
        pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except Exception:
        return False  # nothing to agree with
    return True


PYDICOM_FILES = sorted(
    p.name for p in TEST_FILES.glob("*.dcm") if _part10_with_group_length(p) and _pydicom_reads(p)
)


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_the_walk_agrees_with_pydicom_on_its_test_files(name: str):
    data = (TEST_FILES / name).read_bytes()
    found, expected = _both(data)
    if isinstance(found, Unwalkable):
        assert name not in SPLICEABLE, f"{name} is spliced, so its walk must not fall back: {found}"
        return
    assert _agree(found, expected) == (name not in DIFFERENT)


def test_every_spliceable_file_is_walked():
    assert set(SPLICEABLE) <= set(PYDICOM_FILES)
    for name in SPLICEABLE:
        found, expected = _both((TEST_FILES / name).read_bytes())
        assert not isinstance(found, Exception), name
        assert _agree(found, expected), name


@pytest.mark.parametrize("path", sorted(MALFORMED.iterdir()), ids=lambda p: p.name)
def test_the_walk_agrees_with_pydicom_or_declines_on_malformed_input(path: Path):
    data = path.read_bytes()
    if not _part10_with_group_length(path):
        return
    try:
        found, expected = _both(data)
    except Exception:
        return  # pydicom refuses it: confirmation never sees it
    if not isinstance(found, Unwalkable):
        assert _agree(found, expected)


def test_a_truncated_or_garbled_walk_declines():
    ds = Dataset()
    ds.PatientName = "A^B"
    ds.Rows = 2
    body = _encode(ds, ExplicitVRLittleEndian)[1]
    with pytest.raises(Unwalkable, match="past the end"):
        walk(body[:-1], 0, len(body) - 1, 0, False, True)
    with pytest.raises(NeedMore):
        walk(body[:6], 0, len(body), 0, False, True)
    garbled = bytearray(body)
    garbled[4:6] = b"ZZ"
    with pytest.raises(Unwalkable, match="VR"):
        walk(bytes(garbled), 0, len(body), 0, False, True)
    delimiter = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    with pytest.raises(Unwalkable, match="top level"):
        walk(body + delimiter, 0, len(body) + 8, 0, False, True)


def _encode(ds: Dataset, syntax: str) -> tuple[bytes, bytes]:
    """A Part 10 file of ``ds`` in ``syntax``, and its data set's bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    return data, data[144 + struct.unpack("<I", data[140:144])[0] :]


# Values of various VRs, odd lengths padded by pydicom as it writes them.
_VALUES = st.one_of(
    st.tuples(st.just("LO"), st.text("ABCdef 123^", max_size=9)),
    st.tuples(st.just("US"), st.integers(0, 65535)),
    st.tuples(st.just("SL"), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just("FD"), st.floats(allow_nan=False)),
    st.tuples(st.just("OB"), st.binary(max_size=21)),
    st.tuples(st.just("UN"), st.binary(max_size=13)),
    st.tuples(st.just("UT"), st.text("xyz ", max_size=11)),
    st.tuples(st.just("AT"), st.integers(0, 2**32 - 1)),
)
# Public elements in their dictionary VR (pydicom writes a public UN in implicit VR by its dictionary).
_PUBLIC = st.one_of(
    st.tuples(st.just(0x00081030), st.just("LO"), st.text("abc ", max_size=7)),
    st.tuples(st.just(0x00100020), st.just("LO"), st.text("0123", max_size=5)),
    st.tuples(st.just(0x00180050), st.just("DS"), st.sampled_from(["1.5", "0", "12.25"])),
    st.tuples(st.just(0x00280010), st.just("US"), st.integers(0, 65535)),
    st.tuples(st.just(0x7FE00010), st.just("OB"), st.binary(max_size=9)),
)
_PRIVATE_GROUPS = st.sampled_from([0x0009, 0x0029, 0x7FDF])


@st.composite
def _datasets(draw, depth: int = 0) -> Dataset:
    ds = Dataset()
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            vr, value = draw(_VALUES)
            ds.add_new((draw(_PRIVATE_GROUPS) << 16) | draw(st.integers(0x1000, 0x10FF)), vr, value)
        else:
            ds.add_new(*draw(_PUBLIC))
    if depth < 3:
        for _ in range(draw(st.integers(0, 2))):
            seq = Sequence([draw(_datasets(depth + 1)) for _ in range(draw(st.integers(0, 3)))])
            tag = (draw(_PRIVATE_GROUPS) << 16) | draw(st.integers(0x1100, 0x11FF))
            ds.add_new(tag, "SQ", seq)
            ds[tag].is_undefined_length = draw(st.booleans())
            for item in seq:
                item.is_undefined_length_sequence_item = draw(st.booleans())
    return ds


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ds=_datasets(),
    syntax=st.sampled_from([ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]),
)
def test_the_walk_agrees_with_pydicom_on_generated_data_sets(ds: Dataset, syntax: str):
    ds.PatientName = "Walk^Test"  # at least one element at the top level
    ds.SOPInstanceUID = "1.2.3.4"
    data, _ = _encode(ds, syntax)
    found, expected = _both(data)
    assert not isinstance(found, Exception), found
    assert _agree(found, expected)
