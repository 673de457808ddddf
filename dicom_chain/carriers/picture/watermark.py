"""Method ``watermark``: the block in the least significant bit of the picture's samples.

The payload (``DCHN``, the block's length as a big-endian u32, the serialised block) is written
one bit per sample, most significant bit of each byte first, into the samples in raster order
(channels of a pixel side by side): a 1,000-byte block takes 8,064 samples, a 90 x 90 grey
picture or 52 x 52 in colour. Lossless formats only (PNG, TIFF); the lowest bit of every sample may
change by one, for good (method ``reversible`` gives the pixels back).

The content hash (docs/design.md 11.2) is SHA-256 over ``DICOM_CHAIN watermark v1\\n``, the mode,
a newline, width and height (big-endian u32) and every sample with its lowest bit cleared: the
bits the block is written into are excluded, every other bit of every sample is covered.
"""

from __future__ import annotations

import struct
from types import ModuleType

import numpy as np

from dicom_chain.carriers.picture.samples import Samples, bits_of, bytes_of
from dicom_chain.errors import MethodRefusedError, NoBlockError

NAME = "watermark"
DOMAIN = b"DICOM_CHAIN watermark v1\n"
MAGIC = b"DCHN"
HEAD_BITS = 8 * (len(MAGIC) + 4)


def samples_needed(block_length: int) -> int:
    """The capacity a block of ``block_length`` bytes needs: one sample a bit."""
    return HEAD_BITS + 8 * block_length


def content_hash(samples: Samples) -> str:
    return samples.digest(DOMAIN, samples.values & ~np.array(1, samples.values.dtype))


def embed(module: ModuleType, data: bytes, block: bytes) -> bytes:
    samples = Samples(module, data)
    need = samples_needed(len(block))
    if need > len(samples.values):
        raise MethodRefusedError(
            f"picture of {len(samples.values)} samples is too small for a {len(block)}-byte block "
            f"by watermark: it needs {need} (one a bit)"
        )
    bits = bits_of(MAGIC + struct.pack(">I", len(block)) + block)
    values = samples.values.copy()
    one = np.array(1, values.dtype)
    values[: len(bits)] = (values[: len(bits)] & ~one) | bits.astype(values.dtype)
    return samples.encode(values)


def read_block(module: ModuleType, data: bytes) -> bytes:
    """The block in the samples' lowest bits: NoBlockError where they hold none."""
    values = Samples(module, data).values
    if len(values) < HEAD_BITS:
        raise NoBlockError("no watermark: too few samples")
    head = bytes_of(values[:HEAD_BITS] & 1)
    if head[: len(MAGIC)] != MAGIC:
        raise NoBlockError("no DICOM_CHAIN watermark")
    (length,) = struct.unpack(">I", head[len(MAGIC) :])
    if samples_needed(length) > len(values):
        raise NoBlockError("no DICOM_CHAIN watermark (its length runs past the picture)")
    return bytes_of(values[HEAD_BITS : samples_needed(length)] & 1)
