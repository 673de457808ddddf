"""A lossless picture's samples as one flat array, and back: what the pixel methods write into.

Only the modes a medical picture comes in: 8-bit grey (``L``), 16-bit grey (``I;16``, little-endian
samples) and 8-bit colour (``RGB``), in raster order, channels of a pixel side by side. Only the
lossless formats (PNG, TIFF): a lossy encoder would not keep a bit written into a sample.
"""

from __future__ import annotations

import hashlib
import struct
from io import BytesIO
from types import ModuleType

import numpy as np
from PIL import Image

from dicom_chain.carriers.picture import LOSSLESS
from dicom_chain.carriers.picture.pixels import open_picture
from dicom_chain.errors import MalformedPictureError, MethodRefusedError

DTYPES = {"L": np.dtype(np.uint8), "I;16": np.dtype("<u2"), "RGB": np.dtype(np.uint8)}
PIL_FORMATS = {"png": "PNG", "tiff": "TIFF"}


class Samples:
    """The decoded samples of one picture, with what re-encoding them needs."""

    def __init__(self, module: ModuleType, data: bytes) -> None:
        if module.NAME not in LOSSLESS:
            raise MethodRefusedError(
                f"{module.NAME.upper()} is lossy: a block in its pixels would not survive its own "
                "encoding (use --method metadata, or a PNG or TIFF)"
            )
        image = open_picture(data)
        if getattr(image, "n_frames", 1) != 1:
            raise MethodRefusedError("a picture of several frames: the pixel methods take one")
        if image.mode not in DTYPES:
            raise MethodRefusedError(f"mode {image.mode}: the pixel methods take {', '.join(DTYPES)}")
        stored = _stored_bits(module.NAME, data, image)
        if stored != 8 * DTYPES[image.mode].itemsize:
            # Pillow reads 16-bit colour as 8-bit RGB: written back, the picture would lose bits for good
            raise MethodRefusedError(
                f"{stored}-bit samples read as mode {image.mode}: the pixel methods would change their depth"
            )
        self.module = module
        self.mode = image.mode
        self.size = image.size
        self.values = np.asarray(image, dtype=DTYPES[image.mode]).reshape(-1).copy()

    @property
    def max_value(self) -> int:
        return int(np.iinfo(self.values.dtype).max)

    def digest(self, domain: bytes, values: np.ndarray | None = None) -> str:
        """SHA-256 of ``domain``, the mode, a newline, width and height, and the samples."""
        h = hashlib.sha256(domain + self.mode.encode("ascii") + b"\n" + struct.pack(">II", *self.size))
        h.update((self.values if values is None else values).astype(DTYPES[self.mode], copy=False).tobytes())
        return h.hexdigest()

    def encode(self, values: np.ndarray) -> bytes:
        """``values`` as a picture of this one's format, mode and size (Pillow's encoder)."""
        width, height = self.size
        shape = (height, width, 3) if self.mode == "RGB" else (height, width)
        image = Image.fromarray(values.astype(DTYPES[self.mode], copy=False).reshape(shape))
        out = BytesIO()
        try:
            image.save(out, format=PIL_FORMATS[self.module.NAME])
        except (OSError, ValueError) as exc:
            raise MalformedPictureError(f"cannot encode the picture: {exc}") from exc
        return out.getvalue()


def _stored_bits(fmt: str, data: bytes, image: Image.Image) -> int:
    """Bits per sample as the file stores them (PNG's IHDR bit depth, TIFF's BitsPerSample)."""
    if fmt == "png":
        return data[24] if len(data) > 24 else 0
    bits = image.tag_v2.get(258, (1,))  # type: ignore[attr-defined]
    values = set(bits if isinstance(bits, tuple) else (bits,))
    return int(values.pop()) if len(values) == 1 else 0


def bits_of(data: bytes) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def bytes_of(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.uint8)).tobytes()
