"""The fast parse of a received data set is pydicom's parse, element for element, or declines."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless
from pynetdicom.dsutils import create_file_meta

from dicom_chain.carriers.dicom import fastread
from dicom_chain.carriers.dicom.canonical import content_digests
from dicom_chain.carriers.dicom.carrier import DICOM, IN_PLACE_BYTES
from dicom_chain.carriers.dicom.splice import PREAMBLE, file_meta_bytes, layout

from .conftest import MALFORMED, TEST_FILES
from .test_canonical import ct_like
from .test_elementwalk import _datasets, _encode

EVERY_INPUT = [*sorted(p for p in TEST_FILES.rglob("*") if p.is_file()), *sorted(MALFORMED.iterdir())]


def _as_received(data: bytes) -> tuple[bytes, bytes, object] | None:
    """A Part 10 file's data set behind the file meta our C-STORE path writes for its meta (as
    pynetdicom's spool file has it): (the bytes, that prefix, the meta); None if pydicom cannot
    read the file's meta."""
    try:
        meta = pydicom.dcmread(BytesIO(data), stop_before_pixels=True).file_meta
        prefix = PREAMBLE + file_meta_bytes(meta)
    except Exception:
        return None
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        return None
    start = 144 + struct.unpack("<I", data[140:144])[0]
    return prefix + data[start:], prefix, meta


def _same_parse(fast: FileDataset, data: bytes, meta) -> None:
    """``fast`` holds what pydicom's parse of ``data`` holds, meta replaced as the carrier does."""
    slow = pydicom.dcmread(BytesIO(data), defer_size=IN_PLACE_BYTES)
    slow.file_meta = meta
    assert list(fast._dict.items()) == list(slow._dict.items())
    assert [type(e) for e in fast._dict.values()] == [type(e) for e in slow._dict.values()]
    assert fast.original_encoding == slow.original_encoding
    assert fast.original_character_set == slow.original_character_set
    assert fast._character_set == slow._character_set
    assert (fast.preamble, fast.filename, fast.fileobj_type) == (
        slow.preamble,
        slow.filename,
        slow.fileobj_type,
    )
    assert fast.file_meta == slow.file_meta
    assert layout(fast, 0) == layout(slow, 0)
    for version in (1, 2):
        assert content_digests(fast, version, data) == content_digests(slow, version, data)
    if 0x7FE00010 in slow:  # read from the buffer, when asked for as a value
        assert fast.get_item(0x7FE00010) == slow.get_item(0x7FE00010)


@pytest.mark.parametrize("path", EVERY_INPUT, ids=lambda p: p.name)
def test_the_fast_parse_is_pydicoms_or_declines(path: Path):
    received = _as_received(path.read_bytes())
    if received is None:
        return
    data, prefix, meta = received
    try:
        fast = fastread.parse(data, prefix, meta, IN_PLACE_BYTES)
    except Exception as exc:
        raise AssertionError(f"the fast parse may decline, never fail: {exc!r}") from exc
    if fast is not None:
        _same_parse(fast, data, meta)


def test_explicit_little_endian_test_files_take_the_fast_parse():
    """Not a parse that always declines: most explicit VR little endian files are taken."""
    taken = []
    for path in EVERY_INPUT:
        received = _as_received(path.read_bytes())
        if received is not None and received[2].get("TransferSyntaxUID") == ExplicitVRLittleEndian:
            taken.append(fastread.parse(*received[:2], received[2], IN_PLACE_BYTES) is not None)
    assert len(taken) >= 40 and sum(taken) >= len(taken) // 2


def test_a_received_ct_slice_takes_the_fast_parse_with_its_pixels_in_the_buffer():
    ds = ct_like(np.arange(256 * 256, dtype=np.uint16) % 4096)
    ds.Rows = ds.Columns = 256
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data, prefix, meta = _as_received(buf.getvalue())
    fast = fastread.parse(data, prefix, meta, IN_PLACE_BYTES)
    assert fast is not None and fast._dict[0x7FE00010].value is None
    _same_parse(fast, data, meta)
    carried = DICOM.received_bytes(data, meta)
    assert carried.digests() == content_digests(pydicom.dcmread(BytesIO(data)))
    assert carried.dataset.PixelData == ds.PixelData


@pytest.mark.parametrize(
    "cut",
    [
        lambda body: body[:-1],  # the last value cut short
        lambda body: body + b"\x00\x00\x00",  # stray bytes after the last element
        lambda body: body[:4] + b"zz" + body[6:],  # a VR pydicom does not know
        lambda body: body + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0),  # a delimiter at the top level
        lambda body: struct.pack("<HH2sH", 0x0000, 0x0100, b"US", 2) + b"\x01\x00" + body,  # a command
        lambda body: b"",  # nothing at all: pydicom assumes implicit VR
    ],
    ids=["cut", "stray", "vr", "delimiter", "command", "empty"],
)
def test_what_the_fast_parse_does_not_handle_declines(cut):
    ds = Dataset()
    ds.PatientName = "A^B"
    ds.Rows = 2
    data, body = _encode(ds, ExplicitVRLittleEndian)
    received = _as_received(data)
    assert received is not None
    data, prefix, meta = received
    assert fastread.parse(data, prefix, meta, IN_PLACE_BYTES) is not None
    assert fastread.parse(prefix + cut(body), prefix, meta, IN_PLACE_BYTES) is None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ds=_datasets(), defer=st.sampled_from([4, IN_PLACE_BYTES]))
def test_the_fast_parse_is_pydicoms_on_generated_data_sets(ds: Dataset, defer: int):
    ds.PatientName = "Fast^Read"
    ds.SOPInstanceUID = "1.2.3.4"
    data, prefix, meta = _as_received(_encode(ds, ExplicitVRLittleEndian)[0])
    fast = fastread.parse(data, prefix, meta, defer)
    if fast is None:
        return
    slow = pydicom.dcmread(BytesIO(data), defer_size=defer)
    assert list(fast._dict.items()) == list(slow._dict.items())
    assert fast.original_encoding == slow.original_encoding


def _pynetdicom_head(sop_class: str, sop_instance: str, syntax: str) -> tuple[bytes, FileMetaDataset]:
    """The preamble and meta pynetdicom writes ahead of a C-STORE's data set, and its meta."""
    meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax)
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    return out.getvalue(), meta


@pytest.mark.parametrize(
    ("sop_instance", "syntax"),
    [("1.2.3.4", ExplicitVRLittleEndian), ("1.2.3.45", ImplicitVRLittleEndian), ("1.2.3", JPEGLSLossless)],
)
def test_the_meta_pynetdicom_writes_is_read_as_it_created_it(sop_instance: str, syntax: str):
    head, created = _pynetdicom_head("1.2.840.10008.5.1.4.1.1.2", sop_instance, syntax)
    found = fastread.file_meta(head + b"\x08\x00\x18\x00UI\x08\x001.2.3.4\x00")
    assert found is not None
    meta, prefix = found
    assert prefix == head == PREAMBLE + file_meta_bytes(created) == PREAMBLE + file_meta_bytes(meta)
    assert list(meta.keys()) == list(created.keys())
    for tag in created.keys():  # the group length is computed as written: create_file_meta leaves 0
        assert meta[tag].VR == created[tag].VR
        assert meta[tag].value == created[tag].value or tag == 0x00020000
    assert meta.original_encoding == created.original_encoding


def test_a_meta_not_as_pynetdicom_writes_it_is_left_to_it():
    head, created = _pynetdicom_head("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", ExplicitVRLittleEndian)
    assert fastread.file_meta(head) is not None
    del created.ImplementationVersionName
    fewer = BytesIO()
    write_file_meta_info(fewer, created, enforce_standard=False)
    assert fastread.file_meta(b"\x00" * 128 + b"DICM" + fewer.getvalue()) is None  # not its seven
    assert fastread.file_meta(head[:-1]) is None  # cut short
    short = struct.pack("<I", struct.unpack_from("<I", head, 140)[0] - 2)
    assert fastread.file_meta(head[:140] + short + head[144:]) is None  # longer than its group length
    assert fastread.file_meta(bytearray(head)) is None
    assert fastread.file_meta(head.replace(b"SH", b"LO")) is None  # another VR
