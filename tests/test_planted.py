"""What a sender plants: incoming DICOM_CHAIN blocks are stripped and replaced by the node's own.

A block copied from a chained instance, one forged with another key that claims our chain, or our
creator spoofed in another slot or another private group: after ingest (the one library call the
C-STORE handler makes) the stored file holds exactly one DICOM_CHAIN block in group 0071, ours,
signed by the node key, and the files verify with the node key pinned. A DICOM_CHAIN creator in
another group is kept as ordinary private data (hashed, never read as a block).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicom_chain.block import Block
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.carriers.dicom.embedding import embed_block, read_block
from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP, PRIVATE_CREATOR
from dicom_chain.keys import NodeKey
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_files


def _study(seed: int) -> list[Dataset]:
    return list(ct_study(StudySpec(seed=seed, instances=2, rows=8, columns=8)))


def _creators(ds: Dataset) -> list[int]:
    return [int(t) for t in ds.keys() if t.is_private_creator and ds[t].value == PRIVATE_CREATOR]


def _ours(node: Node, path: Path) -> Block:
    ds = pydicom.dcmread(path)
    assert [c >> 16 for c in _creators(ds) if c >> 16 == CHAIN_GROUP] == [CHAIN_GROUP]  # one, ours
    block = read_block(ds)
    assert block.public_key == node.key.public_key and block.header.chain_id == node.chain_id
    return block


def test_a_block_copied_from_a_chained_instance_is_replaced(node: Node):
    first = node.ingest(item_from_dataset(_study(1)[0]))
    donor = pydicom.dcmread(first.path)
    target = _study(2)[0]
    for tag in [t for t in donor.keys() if t.group == CHAIN_GROUP]:
        target[tag] = donor[tag]
    stored = node.ingest(item_from_dataset(target)).path
    block = _ours(node, stored)
    assert block.header.height == 1 and block != read_block(donor)
    assert verify_files([first.path, stored], frozenset({node.key.public_key})).ok


def test_a_block_forged_with_another_key_for_our_chain_is_replaced(node: Node):
    first = node.ingest(item_from_dataset(_study(3)[0]))
    attacker = NodeKey.generate()
    ds = _study(3)[1]
    claimed = read_block(pydicom.dcmread(first.path)).header
    header = replace(claimed, key_id=attacker.key_id, height=1, sop_instance_uid=ds.SOPInstanceUID)
    forged = Block.sign(header, attacker)
    embed_block(ds, forged)
    stored = node.ingest(item_from_dataset(ds)).path
    assert _ours(node, stored).public_key != attacker.public_key
    assert verify_files([first.path, stored], frozenset({node.key.public_key})).ok


def test_creators_spoofed_in_other_slots_and_groups_are_stripped(node: Node):
    first = node.ingest(item_from_dataset(_study(4)[0]))
    copied = read_block(pydicom.dcmread(first.path)).to_bytes()
    ds = _study(4)[1]
    for group, slot in ((CHAIN_GROUP, 0x20), (CHAIN_GROUP, 0x30), (0x0073, 0x10)):
        ds.add_new((group << 16) | slot, "LO", PRIVATE_CREATOR)
        ds.add_new((group << 16) | (slot << 8) | 0x10, "OB", copied)
    stored = node.ingest(item_from_dataset(ds)).path
    _ours(node, stored)
    # another group's creator is ordinary private data: kept, covered by the hash, never read as a block
    assert [c >> 16 for c in _creators(pydicom.dcmread(stored))] == [CHAIN_GROUP, 0x0073]
    assert verify_files([first.path, stored], frozenset({node.key.public_key})).ok
