"""Where the chain lives inside a dataset: one private block, creator ``DICOM_CHAIN``.

Group 0x0071 (odd, so private per PS3.5 7.8.1). The creator's slot (0x10-0xFF) is whatever is
free, so the block never displaces another vendor's; readers find it by creator, not by slot.
"""

from __future__ import annotations

from pydicom.datadict import add_private_dict_entries
from pydicom.dataset import Dataset

PRIVATE_CREATOR = "DICOM_CHAIN"
CHAIN_GROUP = 0x0071

# Offset within the block -> (VR, VM, description, keyword). The canonical block (0x10) is the
# authority; the others are readable copies for people and viewers, checked against it.
ELEMENTS: dict[int, tuple[str, str, str, str]] = {
    0x01: ("LO", "1", "Chain Block Format Version", "ChainFormatVersion"),
    0x02: ("LO", "1", "Chain ID", "ChainID"),
    0x03: ("UL", "1", "Chain Height", "ChainHeight"),
    0x04: ("LO", "1", "Previous Block Hash", "ChainPreviousBlockHash"),
    0x05: ("LO", "1", "Content Hash", "ChainContentHash"),
    0x06: ("DT", "1", "Block Timestamp", "ChainTimestamp"),
    0x07: ("LO", "1", "Block Institution", "ChainInstitution"),
    0x08: ("LO", "1", "Signing Key ID", "ChainKeyID"),
    0x09: ("UL", "1", "Index Within Study", "ChainStudyIndex"),
    0x0A: ("LO", "1", "Previous Study Block Hash", "ChainStudyPreviousBlockHash"),
    0x0B: ("LO", "1", "Block Hash", "ChainBlockHash"),
    0x0C: ("OB", "1", "Block Signature", "ChainSignature"),
    0x10: ("OB", "1", "Canonical Block", "ChainCanonicalBlock"),
}


def register_private_dictionary() -> None:
    """Let pydicom know our VRs, so an implicit VR file still reads them as LO/UL/OB."""
    entries = {(CHAIN_GROUP << 16) | 0x1000 | offset: entry for offset, entry in ELEMENTS.items()}
    add_private_dict_entries(PRIVATE_CREATOR, {k: (v[0], v[1], v[2], "") for k, v in entries.items()})


def creator_slots(ds: Dataset) -> list[int]:
    """Slots (0x10-0xFF) in our group whose private creator is ``DICOM_CHAIN``."""
    slots = []
    for slot in range(0x10, 0x100):
        tag = (CHAIN_GROUP << 16) | slot
        if tag not in ds:
            continue
        value = ds.get_item(tag).value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, str) and value.strip(" \x00") == PRIVATE_CREATOR:
            slots.append(slot)
    return slots


def chain_block_tags(ds: Dataset) -> frozenset[int]:
    """Every tag of every ``DICOM_CHAIN`` block in ``ds``, creator elements included."""
    tags: set[int] = set()
    slots = creator_slots(ds)
    if not slots:
        return frozenset()
    for slot in slots:
        tags.add((CHAIN_GROUP << 16) | slot)
    ranges = [((CHAIN_GROUP << 16) | (slot << 8), (CHAIN_GROUP << 16) | (slot << 8) | 0xFF) for slot in slots]
    for tag in ds.keys():  # noqa: SIM118 - iterating a Dataset yields (decoded) elements, not tags
        if tag >> 16 == CHAIN_GROUP and any(lo <= tag <= hi for lo, hi in ranges):
            tags.add(int(tag))
    return frozenset(tags)
