"""An instance's identity: UIDs held raw are read as pydicom would convert them, or by pydicom."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from dicom_chain.carriers.dicom import identity
from dicom_chain.carriers.dicom.identity import instance_identity

from .conftest import MALFORMED, TEST_FILES

EVERY_INPUT = [*sorted(p for p in TEST_FILES.rglob("*") if p.is_file()), *sorted(MALFORMED.iterdir())]


def _outcome(ds: Dataset) -> object:
    try:
        return instance_identity(ds)
    except Exception as exc:
        return type(exc).__name__, str(exc)


def _read(data: bytes) -> Dataset | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(BytesIO(data), force=True)
    except Exception:
        return None


@pytest.mark.parametrize("path", EVERY_INPUT, ids=lambda p: p.name)
def test_uids_read_raw_name_the_instance_as_pydicoms_conversion_does(path: Path, monkeypatch):
    data = path.read_bytes()
    fast, slow = _read(data), _read(data)
    if fast is None:
        return
    found = _outcome(fast)
    monkeypatch.setattr(identity, "_plain_uid", lambda ds, tag: None)
    assert _outcome(slow) == found


def _with_raw_uid(value: bytes, vr: str | None = "UI") -> Dataset:
    ds = Dataset()
    for tag, uid in (
        (0x00080016, b"1.2.840.10008.5.1.4.1.1.2"),
        (0x0020000D, b"1.2.3"),
        (0x0020000E, b"1.2.4"),
    ):
        ds._dict[BaseTag(tag)] = RawDataElement(BaseTag(tag), "UI", len(uid), uid, 0, False, True)
    ds._dict[BaseTag(0x00080018)] = RawDataElement(
        BaseTag(0x00080018), vr, len(value), value, 0, vr is None, True
    )
    return ds


@pytest.mark.parametrize(
    ("value", "vr", "taken"),
    [
        (b"1.2.3.4\x00", "UI", True),  # padded to an even length
        (b"1.2.3.45", "UI", True),
        (b"1.2.3.4 ", "UI", False),  # space padding: pydicom strips it, its way
        (b"1.2.03.4", "UI", False),  # not a valid UID: pydicom converts (and warns)
        (b"1.2.3\\1.2.4", "UI", False),  # two values
        (b"1." + b"1" * 70, "UI", False),  # too long: refused by the check, not read here
        (b"1.2.3.4", "LO", False),  # another VR
        (b"1.2.3.4\x00", None, False),  # implicit VR
        (b"", "UI", False),  # empty: "has no"
    ],
)
def test_only_a_valid_uid_as_written_is_read_raw(value: bytes, vr: str | None, taken: bool):
    ds = _with_raw_uid(value, vr)
    assert (identity._plain_uid(ds, 0x00080018) is not None) == taken
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = _outcome(_with_raw_uid(value, vr))
        original = identity._plain_uid
        identity._plain_uid = lambda ds, tag: None
        try:
            assert _outcome(_with_raw_uid(value, vr)) == converted
        finally:
            identity._plain_uid = original
