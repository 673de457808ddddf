"""A picture's pixels by value: what a re-encoding that keeps them does not move.

SHA-256 over ``DICOM_CHAIN pixels v1\\n``, Pillow's mode name, a newline, width and height (two
big-endian 32-bit integers) and the decoded samples as Pillow holds them (``Image.tobytes()``),
frame by frame for a multi-frame TIFF. Lossless formats decode to the same samples anywhere; a
JPEG's samples depend on the decoder (the IDCT of its libjpeg), so for JPEG this tells a
re-encoding from an edit only where the same decoder reads both.
"""

from __future__ import annotations

import hashlib
import struct
from io import BytesIO

from PIL import Image, ImageSequence, UnidentifiedImageError

from dicom_chain.errors import MalformedPictureError

DOMAIN = b"DICOM_CHAIN pixels v1\n"
# Pillow's guard against decompression bombs, kept: a chained picture is an image someone looks at
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def open_picture(data: bytes) -> Image.Image:
    """The picture decoded by Pillow; MalformedPictureError when it does not decode."""
    try:
        image = Image.open(BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MalformedPictureError(f"picture does not decode: {exc}") from exc
    return image


def pixels_hash(data: bytes) -> str:
    image = open_picture(data)
    h = hashlib.sha256(DOMAIN)
    try:
        for frame in ImageSequence.Iterator(image):
            h.update(frame.mode.encode("ascii") + b"\n" + struct.pack(">II", *frame.size))
            h.update(frame.tobytes())
    except (OSError, ValueError) as exc:
        raise MalformedPictureError(f"picture does not decode: {exc}") from exc
    return h.hexdigest()
