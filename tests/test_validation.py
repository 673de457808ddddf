"""Instance checks before chaining: a block must never vouch for a truncated image."""

from __future__ import annotations

import pytest

from dicom_chain.carriers.dicom.validation import check_pixel_data
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
    with pytest.raises(MalformedDatasetError, match="needs"):
        check_pixel_data(ds)


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
