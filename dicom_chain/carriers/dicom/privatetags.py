"""Where the chain lives inside a dataset: one private block, creator ``DICOM_CHAIN``.

Group 0x0071 (odd, so private per PS3.5 7.8.1). The creator's slot (0x10-0xFF) is whatever is
free, so the block never displaces another vendor's; readers find it by creator, not by slot.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.datadict import add_private_dict_entries
from pydicom.dataset import Dataset

PRIVATE_CREATOR = "DICOM_CHAIN"
CHAIN_GROUP = 0x0071

# Offset within the block -> (VR, VM, description, keyword). The canonical block (0x10) is the
# authority; the others are readable copies for people and viewers, checked against it.
ELEMENTS: dict[int, tuple[str, str, str, str]] = {
    0x02: ("LO", "1", "Chain ID", "ChainID"),
    0x03: ("UL", "1", "Chain Height", "ChainHeight"),
    0x04: ("LO", "1", "Previous Block Hash", "ChainPreviousBlockHash"),
    0x05: ("LO", "1", "Content Hash", "ChainContentHash"),
    0x06: ("DT", "1", "Block Timestamp", "ChainTimestamp"),
    0x07: ("LO", "1", "Block Institution", "ChainInstitution"),
    0x08: ("LO", "1", "Signing Key ID", "ChainKeyID"),
    0x09: ("UL", "1", "Index Within Study", "ChainStudyIndex"),
    0x0B: ("LO", "1", "Block Hash", "ChainBlockHash"),
    0x10: ("OB", "1", "Canonical Block", "ChainCanonicalBlock"),
}
# Returned by C-FIND at IMAGE level only, never written into files: the index's view of an instance.
QUERY_ELEMENTS: dict[int, tuple[str, str, str, str]] = {
    0x20: ("CS", "1", "Verification State", "ChainVerificationState"),
    0x21: ("DT", "1", "Verified At", "ChainVerifiedAt"),
    # how many versions the ledger holds of the instance, and who sent each, oldest first (the
    # calling AE title, or the local user): a correction, or a replacement, shows (design 5)
    0x22: ("UL", "1", "Number of Versions", "ChainNumberOfVersions"),
    0x23: ("LO", "1-n", "Version Senders", "ChainVersionSenders"),
}
# Written only into instances released to another institution, never into a stored file (the
# receiver's block replaces ours, and this with it): the sender's latest checkpoint, as the body of a
# c2sp.org/tlog-witness add-checkpoint request (old size, consistency proof, signed note), which the
# receiver judges as a witness (tlog/witnessing.py). Outside the content hash like the rest of the
# block, and not vouched for by the block's signature: the note carries its own.
RELEASE_ELEMENTS: dict[int, tuple[str, str, str, str]] = {
    # OB, UTF-8: a signed note's em dashes are in no character set a data set may declare
    0x30: ("OB", "1", "Sender Checkpoint", "ChainSenderCheckpoint"),
}
# Offsets 0x01, 0x0A, 0x0C are reserved (format version, previous study block hash, signature):
# those live in the canonical block only, which every reader must parse anyway.


def register_private_dictionary() -> None:
    """Let pydicom know our VRs, so an implicit VR file still reads them as LO/UL/OB."""
    every = ELEMENTS | QUERY_ELEMENTS | RELEASE_ELEMENTS
    entries = {(CHAIN_GROUP << 16) | 0x1000 | offset: entry for offset, entry in every.items()}
    add_private_dict_entries(PRIVATE_CREATOR, {k: (v[0], v[1], v[2], "") for k, v in entries.items()})


# DCMTK's private dictionary for the elements above, shipped beside this module so `dcmdump`,
# `findscu` and `storescp` name them (README: DCMDICTPATH). tests/test_privatetags.py holds it
# equal to dcmtk_dictionary(): the tables above are the one source.
DCMTK_DICTIONARY = Path(__file__).with_name("dicom-chain.dic")


def dcmtk_dictionary() -> str:
    """The text of ``dicom-chain.dic``, in DCMTK's private dictionary syntax (as its private.dic):
    ``(gggg,"CREATOR",ee)<TAB>VR<TAB>Keyword<TAB>VM<TAB>PrivateTag``, one element per line."""
    lines = [
        "# DCMTK private dictionary for dicom-chain's DICOM_CHAIN block (group 0071).",
        "# Generated from dicom_chain/carriers/dicom/privatetags.py; do not edit by hand.",
        "# Load with the standard one: DCMDICTPATH=/usr/share/libdcmtk17/dicom.dic:THIS_FILE",
    ]
    for offset, (vr, vm, _name, keyword) in sorted((ELEMENTS | QUERY_ELEMENTS | RELEASE_ELEMENTS).items()):
        lines.append(
            f'({CHAIN_GROUP:04x},"{PRIVATE_CREATOR}",{offset:02x})\t{vr}\t{keyword}\t{vm}\tPrivateTag'
        )
    return "\n".join(lines) + "\n"


_CREATOR_LO = (CHAIN_GROUP << 16) | 0x0010
_CREATOR_HI = (CHAIN_GROUP << 16) | 0x00FF


def _creator_value(ds: Dataset, tag: int) -> str:
    value = ds.get_item(tag).value
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.strip(" \x00") if isinstance(value, str) else ""


def creator_slots(ds: Dataset) -> list[int]:
    """Slots (0x10-0xFF) in our group whose private creator is ``DICOM_CHAIN``."""
    return [
        tag & 0xFF
        for tag in _int_tags(ds)
        if _CREATOR_LO <= tag <= _CREATOR_HI and _creator_value(ds, tag) == PRIVATE_CREATOR
    ]


def _int_tags(ds: Dataset) -> list[int]:
    """Tags as plain ints: BaseTag compares in Python, ints in C, and these loops run per instance."""
    return list(map(int, ds.keys()))


def free_slot(ds: Dataset) -> int | None:
    """The lowest slot of our group no private creator holds (PS3.5 7.8.1), or None if all are taken."""
    used = {tag & 0xFF for tag in _int_tags(ds) if _CREATOR_LO <= tag <= _CREATOR_HI}
    return next((slot for slot in range(0x10, 0x100) if slot not in used), None)


def chain_block_tags(ds: Dataset) -> frozenset[int]:
    """Every tag of every ``DICOM_CHAIN`` block in ``ds``, creator elements included."""
    slots = set(creator_slots(ds))
    if not slots:
        return frozenset()
    return frozenset(
        tag
        for tag in _int_tags(ds)
        if tag >> 16 == CHAIN_GROUP
        and ((_CREATOR_LO <= tag <= _CREATOR_HI and tag & 0xFF in slots) or (tag >> 8) & 0xFF in slots)
    )
