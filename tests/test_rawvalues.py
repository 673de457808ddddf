"""Pixel module values read raw are what pydicom's conversion gives, or left to it."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from dicom_chain.carriers.dicom import rawvalues
from dicom_chain.carriers.dicom.canonical import _PixelShape
from dicom_chain.carriers.dicom.indexvalues import index_values
from dicom_chain.carriers.dicom.validation import pixel_data_anomalies

from .conftest import MALFORMED, TEST_FILES

EVERY_INPUT = [*sorted(p for p in TEST_FILES.rglob("*") if p.is_file()), *sorted(MALFORMED.iterdir())]


def _read(data: bytes) -> Dataset | None:
    try:
        return pydicom.dcmread(BytesIO(data), force=True)
    except Exception:
        return None


def _outcome(compute, ds: Dataset) -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return compute(ds)
    except Exception as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("path", EVERY_INPUT, ids=lambda p: p.name)
def test_the_pixel_module_read_raw_is_the_pixel_module_pydicom_converts(path: Path, monkeypatch):
    """The shape the canonical hash normalises by, the anomalies the checks find and the values
    the index keeps, on fresh parses of every pydicom test file and malformed input: the same
    with raw reads as without."""
    data = path.read_bytes()
    for compute in (_PixelShape.of, pixel_data_anomalies, index_values):
        fast = _read(data)
        if fast is None:
            return
        found = _outcome(compute, fast)
        monkeypatch.setattr(rawvalues, "ENABLED", False)
        assert _outcome(compute, _read(data)) == found
        monkeypatch.setattr(rawvalues, "ENABLED", True)


def _element(vr: str | None, value: bytes, little: bool = True) -> Dataset:
    ds = Dataset()
    tag = BaseTag(0x00280010 if vr != "CS" else 0x00280004)
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, vr is None, little)
    return ds


@pytest.mark.parametrize(
    ("vr", "value", "raw"),
    [
        ("US", b"\x00\x02", 512),
        ("US", b"\x00\x02\x01\x00", None),  # two numbers
        ("US", b"\x00", None),  # garbled length
        ("US", b"", None),  # empty
        ("SS", b"\x00\x02", None),  # another VR
        (None, b"\x00\x02", None),  # implicit VR
        ("CS", b"MONOCHROME2 ", "MONOCHROME2"),
        ("CS", b"YBR_FULL_422", "YBR_FULL_422"),
        ("CS", b"RGB\\RGB ", None),  # two values
        ("CS", b"rgb ", None),  # not valid CS characters: pydicom warns
        ("CS", b"MONOCHROME2\x00", None),  # NUL padding
        ("CS", b"A" * 18, None),  # too long for CS
    ],
)
def test_only_plain_values_are_read_raw(vr: str | None, value: bytes, raw: object):
    ds = _element(vr, value)
    read = rawvalues.cs if vr == "CS" else rawvalues.us
    tag = 0x00280004 if vr == "CS" else 0x00280010
    assert read(ds, tag) == raw
    if raw is not None:
        assert ds[tag].value == raw  # what pydicom's conversion gives
    assert rawvalues.us(_element("US", b"\x00\x02", little=False), 0x00280010) is None  # big endian
