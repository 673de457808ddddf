"""Instance checks before chaining: a block must never vouch for a truncated image."""

from __future__ import annotations

import pytest

from dicom_chain.carriers.dicom.validation import check_pixel_data, pixel_data_anomalies
from dicom_chain.errors import MalformedDatasetError

from .conftest import read


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "SC_rgb_small_odd.dcm", "JPEG2000.dcm"]
)
def test_intact_images_pass(name):
    check_pixel_data(read(name))


def test_short_pixel_data_is_refused():
    ds = read("CT_small.dcm")
    ds.PixelData = ds.PixelData[:-2]
    with pytest.raises(MalformedDatasetError, match="incomplete image: pixel data holds"):
        check_pixel_data(ds)


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "SC_rgb_small_odd.dcm", "JPEG2000.dcm", "rtplan.dcm"]
)
def test_conforming_instances_have_no_anomaly(name):
    """SC_rgb_small_odd's 27 bytes of pixels carry their one pad byte: padding, not an anomaly."""
    assert pixel_data_anomalies(read(name)) == []


def test_pixel_data_longer_than_the_image_is_an_anomaly_not_a_refusal():
    """pydicom's MR_small_padded.dcm: 8,320 bytes for a 64x64 16-bit image; Orthanc and pydicom
    take it, so it is kept whole and named (design.md 5), here and on 8 bits."""
    padded = read("MR_small_padded.dcm")
    assert pixel_data_anomalies(padded) == ["pixel-data-length: 8320 bytes, 8192 expected"]
    check_pixel_data(read("MR_small_padded.dcm"))  # passes
    rgb = read("SC_rgb_small_odd.dcm")
    rgb.PixelData += b"\x01\x02"
    assert pixel_data_anomalies(rgb) == ["pixel-data-length: 30 bytes, 27 expected"]


def test_pixel_module_that_does_not_decode_is_refused():
    ds = read("CT_small.dcm")
    del ds.Rows
    with pytest.raises(MalformedDatasetError):
        check_pixel_data(ds)


def test_instances_without_pixels_pass():
    check_pixel_data(read("rtplan.dcm"))


def test_pixel_module_with_values_of_the_wrong_type_is_a_named_error():
    """badVR.dcm's Image Pixel values read as text: a named error, never a TypeError."""
    with pytest.raises(MalformedDatasetError, match="Image Pixel module"):
        check_pixel_data(read("badVR.dcm"))


def test_an_item_reads_its_pixel_module_once_and_names_what_the_check_found(monkeypatch):
    """``check`` and ``anomalies`` share one reading; one asked on its own still reads."""
    from dicom_chain.carriers.dicom import validation
    from dicom_chain.carriers.dicom.carrier import DICOM

    calls = []
    real = validation._expected_length
    monkeypatch.setattr(validation, "_expected_length", lambda *a, **k: calls.append(1) or real(*a, **k))
    carried = DICOM.dataset(read("MR_small_padded.dcm"))
    assert carried.item().anomalies == ("pixel-data-length: 8320 bytes, 8192 expected",)
    assert len(calls) == 1
    assert carried.anomalies() == ("pixel-data-length: 8320 bytes, 8192 expected",)
    assert len(calls) == 2
    short = read("CT_small.dcm")
    short.PixelData = short.PixelData[:-2]
    with pytest.raises(MalformedDatasetError, match="incomplete image"):
        DICOM.dataset(short).item()
