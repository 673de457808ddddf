"""Checks an instance must pass before it is chained: a block must never vouch for a broken file.

Two outcomes besides passing. What cannot be kept as a whole image (pixel data shorter than its
Image Pixel module says, a module that does not decode) is refused: a block on it would vouch for
an incomplete image, and a refusal keeps it at the modality, where someone sees the failure. What
is whole but does not conform (pixel data longer than needed) is an *anomaly*: stored as received,
chained (the content hash covers the image, design.md 1.5), named in the receipt event and answered
with a warning, as Orthanc and pydicom accept it and refusing would lose a complete image at the
modality (design.md 5).
"""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length

from dicom_chain.carriers.dicom import rawvalues
from dicom_chain.errors import MalformedDatasetError

PIXEL_DATA = 0x7FE00010


def pixel_data_anomalies(ds: Dataset) -> list[str]:
    """Native pixel data must hold the whole image its Image Pixel module describes
    (MalformedDatasetError when it is shorter); bytes beyond it and its one pad byte (PS3.5 8.1.1:
    the value is padded to an even length) are returned as an anomaly, not refused."""
    if PIXEL_DATA not in ds:
        return []
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        return []  # encapsulated: fragments are checked when hashed
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    # a value left on disk (defer_size) counts by its declared length; hashing it checked the file holds it
    length = raw.length if isinstance(raw, RawDataElement) and raw.value is None else len(raw.value or b"")
    try:
        expected = _expected_length(ds)
    except Exception as exc:  # pydicom raises many types on garbled pixel module values
        raise MalformedDatasetError(f"pixel data without a usable Image Pixel module: {exc}") from exc
    if not isinstance(expected, int):  # a garbled module (badVR.dcm: Rows as text) gives no length
        raise MalformedDatasetError("pixel data without a usable Image Pixel module")
    if length < expected:
        raise MalformedDatasetError(f"incomplete image: pixel data holds {length} of {expected} bytes")
    if length > expected + 1:
        return [f"pixel-data-length: {length} bytes, {expected} expected"]
    return []


def _expected_length(ds: Dataset) -> int:
    """pydicom's ``get_expected_length(ds, unit="bytes")``, computed here from the raw values where
    each is plain (rawvalues) and Number of Frames absent, as in most images: pydicom would convert
    each first (~0.01 ms apiece)."""
    rows, columns = rawvalues.us(ds, 0x00280010), rawvalues.us(ds, 0x00280011)
    samples, allocated = rawvalues.us(ds, 0x00280002), rawvalues.us(ds, 0x00280100)
    photometric = rawvalues.cs(ds, 0x00280004)
    if None in (rows, columns, samples, allocated, photometric) or 0x00280008 in ds._dict:
        return get_expected_length(ds, unit="bytes")
    assert rows is not None and columns is not None and samples is not None and allocated is not None
    length = rows * columns * samples
    length = length // 8 + (length % 8 > 0) if allocated == 1 else length * (allocated // 8)
    return length // 3 * 2 if photometric == "YBR_FULL_422" else length


def check_pixel_data(ds: Dataset) -> None:
    """Refuses what cannot be stored as a whole image; anomalies pass (``pixel_data_anomalies``)."""
    pixel_data_anomalies(ds)
