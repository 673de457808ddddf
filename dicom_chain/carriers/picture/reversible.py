"""Method ``reversible``: the block hidden in the pixels so that they can be given back bit for bit.

Histogram shifting (Z. Ni, Y.-Q. Shi, N. Ansari, W. Su, "Reversible data hiding", IEEE Trans.
Circuits and Systems for Video Technology 16(3), 2006): in the samples after the first 32, take
the most frequent value P (the peak) and the value Z nearest to it that no sample has (the zero).
Every sample strictly between them moves one step towards Z, which empties the value next to P
(P + d, d = +1 when Z > P, else -1). Then each sample equal to P carries one bit of the payload in
raster order: 0 leaves it P, 1 makes it P + d. No sample moves by more than one.

The first 32 samples carry P and Z (16 bits each, most significant first) in their lowest bits.
The lowest bits they held before go first in the payload, so they are given back too. After them
comes ``DCHN``, the block's length (big-endian u32) and the serialised block. Capacity is the
number of samples equal to P: the payload needs 32 + 64 + 8 x block length of them. A picture
whose samples take every value has no zero, and is refused with a clear error.

Restoring reads P and Z, collects the bits from the samples equal to P or P + d, puts those back
to P, moves the shifted samples back by one step, and gives back the 32 header samples' lowest
bits. The content hash (docs/design.md 11.2) is SHA-256 over ``DICOM_CHAIN reversible v1\\n``, the
mode, a newline, width and height (big-endian u32) and the original samples. Verification
restores them and hashes the result, so a verified picture is proof that ``restore`` gives back
exactly the pixels that were chained.
"""

from __future__ import annotations

import struct
from types import ModuleType

import numpy as np

from dicom_chain.carriers.picture.samples import Samples, bits_of, bytes_of
from dicom_chain.errors import MethodRefusedError, NoBlockError

NAME = "reversible"
DOMAIN = b"DICOM_CHAIN reversible v1\n"
MAGIC = b"DCHN"
HEADER_SAMPLES = 32  # P and Z, 16 bits each, in the first samples' lowest bits
HEAD_BITS = 8 * (len(MAGIC) + 4)


def content_hash(samples: Samples, original: np.ndarray | None = None) -> str:
    return samples.digest(DOMAIN, original)


def embed(module: ModuleType, data: bytes, block: bytes) -> bytes:
    samples = Samples(module, data)
    values = samples.values.copy()
    if len(values) <= HEADER_SAMPLES:
        raise MethodRefusedError("picture too small for the reversible method")
    body = values[HEADER_SAMPLES:]
    histogram = np.bincount(body, minlength=samples.max_value + 1)
    peak = int(np.argmax(histogram))
    empty = np.flatnonzero(histogram == 0)
    if not len(empty):
        raise MethodRefusedError(
            "every sample value is taken: no empty histogram bin to shift into (reversible method); "
            "use --method metadata"
        )
    zero = int(empty[np.argmin(np.abs(empty - peak))])
    payload = bits_of(bytes_of(values[:HEADER_SAMPLES] & 1) + MAGIC + struct.pack(">I", len(block)) + block)
    capacity = int(histogram[peak])
    if capacity < len(payload):
        raise MethodRefusedError(
            f"the picture's most frequent sample value occurs {capacity} times; a {len(block)}-byte "
            f"block needs {len(payload)} (reversible method): use a larger picture, or --method metadata"
        )
    step = 1 if zero > peak else -1
    low, high = sorted((peak, zero))
    shifted = (body > low) & (body < high)
    body[shifted] = _moved(body[shifted], step)
    carriers = np.flatnonzero(body == peak)[: len(payload)]
    body[carriers] = _moved(body[carriers], step * payload.astype(np.int64))
    head = bits_of(struct.pack(">HH", peak, zero)).astype(values.dtype)
    values[:HEADER_SAMPLES] = (values[:HEADER_SAMPLES] & ~np.array(1, values.dtype)) | head
    return samples.encode(values)


def extract(module: ModuleType, data: bytes) -> tuple[bytes, Samples, np.ndarray]:
    """The block, the picture's samples and the original samples; NoBlockError where the pixels
    hold no block by this method."""
    samples = Samples(module, data)
    values = samples.values
    if len(values) <= HEADER_SAMPLES:
        raise NoBlockError("no reversible block: too few samples")
    peak, zero = struct.unpack(">HH", bytes_of(values[:HEADER_SAMPLES] & 1))
    if peak == zero or max(peak, zero) > samples.max_value:
        raise NoBlockError("no reversible block")
    step = 1 if zero > peak else -1
    body = values[HEADER_SAMPLES:]
    carriers = body[(body == peak) | (body == peak + step)]
    bits = (carriers == peak + step).astype(np.uint8)
    start = HEADER_SAMPLES + HEAD_BITS
    if len(bits) < start:
        raise NoBlockError("no reversible block")
    head = bytes_of(bits[HEADER_SAMPLES:start])
    if head[: len(MAGIC)] != MAGIC:
        raise NoBlockError("no reversible block")
    (length,) = struct.unpack(">I", head[len(MAGIC) :])
    if start + 8 * length > len(bits):
        raise NoBlockError("no reversible block (its length runs past the carriers)")
    block = bytes_of(bits[start : start + 8 * length])
    original = values.copy()
    restored = original[HEADER_SAMPLES:]
    low, high = sorted((peak, zero))
    restored[body == peak + step] = peak
    moved = (body > low + (step == 1)) & (body <= high) if step == 1 else (body >= low) & (body < high - 1)
    restored[moved] = _moved(body[moved], -step)
    one = np.array(1, values.dtype)
    original[:HEADER_SAMPLES] = (values[:HEADER_SAMPLES] & ~one) | bits[:HEADER_SAMPLES].astype(values.dtype)
    return block, samples, original


def _moved(values: np.ndarray, by: int | np.ndarray) -> np.ndarray:
    """``values`` moved by ``by`` (never out of range here), in their own unsigned type."""
    return (values.astype(np.int64) + by).astype(values.dtype)


def read_block(module: ModuleType, data: bytes) -> bytes:
    return extract(module, data)[0]


def restore(module: ModuleType, data: bytes) -> bytes:
    """The picture with its original samples, re-encoded in its format (its block gone)."""
    _, samples, original = extract(module, data)
    return samples.encode(original)
