"""Put a block into a dataset's ``DICOM_CHAIN`` private block, and read it back.

The canonical block (offset 0x10) is the authority; the readable elements are copies for
people and viewers, and reading cross-checks them so a hand-edited copy does not pass unseen.
"""

from __future__ import annotations

import struct
from datetime import datetime

from pydicom.dataset import Dataset

from .block import FORMAT_VERSION, Block
from .errors import MalformedBlockError, NoBlockError
from .privatetags import (
    CHAIN_GROUP,
    ELEMENTS,
    PRIVATE_CREATOR,
    chain_block_tags,
    creator_slots,
    register_private_dictionary,
)

register_private_dictionary()

LO_MAX_CHARS = 64  # PS3.5 6.2: LO holds at most 64 characters; the canonical block keeps the rest


def _readable(block: Block) -> dict[int, object]:
    h = block.header
    return {
        0x01: str(FORMAT_VERSION),
        0x02: h.chain_id,
        0x03: h.height,
        0x04: h.prev_hash,
        0x05: h.content_hash,
        0x06: _iso_to_dt(h.timestamp),
        0x07: _lo(h.institution),
        0x08: h.key_id,
        0x09: h.study_index,
        0x0A: h.study_prev_hash,
        0x0B: block.hash,
        0x0C: block.signature,
    }


def _lo(text: str) -> str:
    return text.replace("\\", "/")[:LO_MAX_CHARS]


def _iso_to_dt(timestamp: str) -> str:
    moment = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y%m%d%H%M%S.%f") + "+0000"


def remove_blocks(ds: Dataset) -> None:
    for tag in chain_block_tags(ds):
        del ds[tag]


def embed_block(ds: Dataset, block: Block) -> None:
    """Replace any DICOM_CHAIN block in ``ds`` by ``block``; other private blocks stay as they are."""
    remove_blocks(ds)
    private = ds.private_block(CHAIN_GROUP, PRIVATE_CREATOR, create=True)
    for offset, value in _readable(block).items():
        private.add_new(offset, ELEMENTS[offset][0], value)
    data = block.to_bytes()
    private.add_new(0x10, "OB", data + b"\x00" * (len(data) % 2))


def read_block(ds: Dataset) -> Block:
    slots = creator_slots(ds)
    if not slots:
        raise NoBlockError("no DICOM_CHAIN private block")
    if len(slots) > 1:
        raise MalformedBlockError(f"{len(slots)} DICOM_CHAIN private blocks; expected one")
    base = (CHAIN_GROUP << 16) | (slots[0] << 8)
    canonical = ds.get_item(base | 0x10)
    if canonical is None or not isinstance(canonical.value, bytes):
        raise MalformedBlockError("DICOM_CHAIN block has no canonical block element")
    block = Block.from_bytes(canonical.value)
    for offset, expected in _readable(block).items():
        elem = ds.get_item(base | offset)
        if elem is None:
            continue  # a reader may drop copies; the canonical block still decides
        found = _normalise(ds[base | offset].value, ELEMENTS[offset][0], ds)
        if found != _normalise(expected, ELEMENTS[offset][0], ds):
            raise MalformedBlockError(
                f"readable field {ELEMENTS[offset][3]} differs from the canonical block"
            )
    return block


def _normalise(value: object, vr: str, ds: Dataset) -> object:
    """Compare copies whatever VR a hop left them with (UN after implicit VR without our dictionary)."""
    if vr == "UL":
        if isinstance(value, bytes):
            little = getattr(ds, "original_encoding", (None, True))[1] is not False
            return struct.unpack("<I" if little else ">I", value[:4])[0] if len(value) >= 4 else value
        return value
    if vr == "OB":
        return bytes(value) if isinstance(value, bytes | bytearray) else value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value).strip(" \x00")
