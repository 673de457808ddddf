"""Checks an instance must pass before it is chained: a block must never vouch for a broken file."""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length

from dicom_chain.errors import MalformedDatasetError

PIXEL_DATA = 0x7FE00010


def check_pixel_data(ds: Dataset) -> None:
    """Native pixel data must be as long as its Image Pixel module says (plus one pad byte)."""
    if PIXEL_DATA not in ds:
        return
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        return  # encapsulated: fragments are checked when hashed
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    # a value left on disk (defer_size) counts by its declared length; hashing it checked the file holds it
    length = raw.length if isinstance(raw, RawDataElement) and raw.value is None else len(raw.value or b"")
    try:
        expected = get_expected_length(ds, unit="bytes")
    except Exception as exc:  # pydicom raises many types on garbled pixel module values
        raise MalformedDatasetError(f"pixel data without a usable Image Pixel module: {exc}") from exc
    if not isinstance(expected, int):  # a garbled module (badVR.dcm: Rows as text) gives no length
        raise MalformedDatasetError("pixel data without a usable Image Pixel module")
    if length not in (expected, expected + 1):
        raise MalformedDatasetError(f"pixel data holds {length} bytes, the image needs {expected}")
