"""A DICOM instance rendered as pictures a person looks at: one 8-bit picture per frame.

Grey images go through pydicom's Modality LUT (Rescale Slope/Intercept or a Modality LUT
Sequence, ``apply_modality_lut``), then the first VOI transform the data set names (a VOI LUT
Sequence or Window Center/Width, ``apply_voi_lut``), then onto 0-255. Where the data set names no
VOI transform, the frame's own minimum and maximum are the window. MONOCHROME1 is inverted (its
lowest value is white). Colour comes as pydicom decodes it (YBR converted to RGB), colour of more
than 8 bits stored scaled to 8, PALETTE COLOR through its palette (``apply_color_lut``). Pure: a
data set in, pictures out.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from dicom_chain.errors import MalformedDatasetError


def frames(ds: Dataset) -> list[Image.Image]:
    """Each frame of ``ds`` as an 8-bit ``L`` or ``RGB`` picture; MalformedDatasetError when its
    pixels do not decode."""
    try:
        array = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for pixels it cannot decode
        raise MalformedDatasetError(f"pixels do not decode: {exc}") from exc
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    stack = array if count > 1 else array[np.newaxis]
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        try:
            stack = np.stack([apply_color_lut(frame, ds) for frame in stack])
        except Exception as exc:  # a palette pydicom cannot apply
            raise MalformedDatasetError(f"palette does not apply: {exc}") from exc
        return [Image.fromarray(_colour(frame, 16)) for frame in stack]  # palette entries are 16-bit
    if samples > 1:
        stored = int(ds.get("BitsStored", 8 * array.dtype.itemsize) or 8)
        return [Image.fromarray(_colour(frame, stored)) for frame in stack]
    return [Image.fromarray(_grey(frame, ds)) for frame in stack]


def _grey(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    values = apply_modality_lut(frame, ds).astype(np.float64)
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        shown = apply_voi_lut(values, ds, index=0).astype(np.float64)
        # the range pydicom maps a window onto: what the extremes of any input come out as
        low, high = (float(v) for v in apply_voi_lut(np.array([-1e12, 1e12]), ds, index=0))
        if "VOILUTSequence" in ds and "WindowCenter" not in ds:
            low, high = float(shown.min()), float(shown.max())
    else:
        shown, low, high = values, float(values.min()), float(values.max())
    span = high - low
    scaled = np.zeros(shown.shape) if span <= 0 else (shown - low) / span * 255.0
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out
    return out


def _colour(frame: np.ndarray, bits: int) -> np.ndarray:
    """Colour samples of ``bits`` bits onto 8 (12-bit colour shifted by 4, not by 8)."""
    if bits > 8:
        return (frame.astype(np.uint32) >> (bits - 8)).clip(0, 255).astype(np.uint8)
    return frame.astype(np.uint8, copy=False)
