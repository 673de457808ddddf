"""The private block: written beside other vendors' blocks without disturbing them, read back after hops."""

from __future__ import annotations

import copy
import io
import struct
import subprocess
from pathlib import Path

import pydicom
import pytest

from dicom_chain.block import FORMAT_VERSION, GENESIS_HASH, Block, BlockHeader, utc_now
from dicom_chain.carriers.dicom.canonical import content_hash
from dicom_chain.carriers.dicom.embedding import (
    UNENCODABLE,
    _encodable,
    embed_block,
    read_block,
    readable_text,
    remove_blocks,
)
from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP, PRIVATE_CREATOR, chain_block_tags
from dicom_chain.errors import MalformedBlockError, NoBlockError
from dicom_chain.keys import NodeKey

from .conftest import read
from .peers import require_tool

KEY = NodeKey.generate()


def make_block(ds, height: int = 0, institution: str = "Test Hospital") -> Block:
    return Block.sign(
        BlockHeader(
            version=FORMAT_VERSION,
            chain_id="c0ffee00-0000-4000-8000-000000000000",
            height=height,
            prev_hash=GENESIS_HASH if height == 0 else "ab" * 32,
            content_hash=content_hash(ds),
            timestamp=utc_now(),
            institution=institution,
            key_id=KEY.key_id,
            sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            study_index=0,
            study_prev_hash=GENESIS_HASH,
        ),
        KEY,
    )


def private_snapshot(ds) -> dict:
    """Every private element but ours, as raw bytes after writing: what must not change."""
    ours = chain_block_tags(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    again = pydicom.dcmread(buf)
    return {int(t): again.get_item(t).value for t in again.keys() if t.is_private and t not in ours}


def test_embedding_leaves_other_private_blocks_untouched():
    ds = read("CT_small.dcm")  # carries nine GEMS private blocks
    before = private_snapshot(ds)
    assert len(before) > 20
    embed_block(ds, make_block(ds))
    assert private_snapshot(ds) == before
    assert ds[(CHAIN_GROUP << 16) | 0x0010].value == PRIVATE_CREATOR


def test_embedding_takes_a_free_slot_when_ours_is_occupied():
    ds = read("MR_small.dcm")
    ds.add_new((CHAIN_GROUP << 16) | 0x0010, "LO", "ACME_VENDOR")
    ds.add_new((CHAIN_GROUP << 16) | 0x1001, "LO", "acme value")
    block = make_block(ds)
    embed_block(ds, block)
    assert ds[(CHAIN_GROUP << 16) | 0x1001].value == "acme value"
    assert read_block(ds) == block


def test_embedding_does_not_change_the_content_hash():
    ds = read("CT_small.dcm")
    before = content_hash(ds)
    embed_block(ds, make_block(ds))
    assert content_hash(ds) == before


def test_re_embedding_replaces_the_block():
    ds = read("MR_small.dcm")
    embed_block(ds, make_block(ds))
    second = make_block(ds, institution="Second")
    embed_block(ds, second)
    assert read_block(ds) == second
    assert len([t for t in ds.keys() if t.group == CHAIN_GROUP and t.element < 0x100]) == 1


def test_long_institution_is_kept_whole_in_the_canonical_block():
    ds = read("MR_small.dcm")
    name = "Hospital \\ of a very long name " * 4
    block = make_block(ds, institution=name)
    embed_block(ds, block)
    assert read_block(ds).header.institution == name


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_block_survives_little_endian_rewrite(syntax):
    ds = read("CT_small.dcm")
    block = make_block(ds)
    embed_block(ds, block)
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    assert read_block(pydicom.dcmread(buf)) == block


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    "source_syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"], ids=["implicit", "explicit"]
)
@pytest.mark.parametrize("option", ["+ti", "+te", "+tb", "+td"])
def test_block_survives_dcmtk_reencoding(option, source_syntax, tmp_path: Path):
    """DCMTK knows nothing of our VRs: from implicit VR it keeps them as UN, even in big endian."""
    dcmconv = require_tool("dcmconv", "dcmtk")
    ds = read("CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = source_syntax
    block = make_block(ds, height=0x0102)  # not a palindrome in bytes: byte order must be right
    embed_block(ds, block)
    src, out = tmp_path / "in.dcm", tmp_path / "out.dcm"
    ds.save_as(src, enforce_file_format=True)
    subprocess.run([dcmconv, option, str(src), str(out)], check=True, capture_output=True)
    again = pydicom.dcmread(out)
    assert read_block(again) == block
    assert content_hash(again) == block.header.content_hash


def test_edited_readable_copy_is_detected():
    ds = read("MR_small.dcm")
    embed_block(ds, make_block(ds))
    slot_base = next(t for t in ds.keys() if t.group == CHAIN_GROUP and ds[t].value == PRIVATE_CREATOR)
    base = (CHAIN_GROUP << 16) | ((slot_base.element & 0xFF) << 8)
    ds[base | 0x03].value = 42  # the readable height
    with pytest.raises(MalformedBlockError, match="ChainHeight"):
        read_block(ds)


def test_missing_and_doubled_blocks_are_named_errors():
    ds = read("MR_small.dcm")
    with pytest.raises(NoBlockError):
        read_block(ds)
    embed_block(ds, make_block(ds))
    twin = copy.deepcopy(ds)
    remove_blocks(twin)
    assert not chain_block_tags(twin)
    ds.add_new((CHAIN_GROUP << 16) | 0x00FE, "LO", PRIVATE_CREATOR)
    with pytest.raises(MalformedBlockError, match="2 DICOM_CHAIN"):
        read_block(ds)


@pytest.mark.parametrize("order", ["<I", ">I"])
def test_ul_copy_left_un_is_read_in_either_byte_order(order: str):
    """A tool that lacks our dictionary rewrites a big endian file's UL copy as UN, bytes unswapped."""
    ds = read("MR_small_bigendian.dcm")
    block = make_block(ds, height=258)  # 0x102: a value whose two byte orders differ
    embed_block(ds, block)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    written = buf.getvalue()
    as_ul = b"\x00\x71\x10\x03UL\x00\x04" + struct.pack(">I", 258)  # (0071,1003) ChainHeight
    assert written.count(as_ul) == 1

    def with_un(value: int) -> pydicom.Dataset:
        as_un = b"\x00\x71\x10\x03UN\x00\x00" + struct.pack(">I", 4) + struct.pack(order, value)
        return pydicom.dcmread(io.BytesIO(written.replace(as_ul, as_un)))

    assert read_block(with_un(258)) == block
    with pytest.raises(MalformedBlockError, match="ChainHeight"):
        read_block(with_un(259))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "9f86d081884c7d65",
        "2026-11-29T20:25:19Z",
        "Test Hospital",
        "tab\there",
        "bell\x07",
        "Zürich",
        "東京",
    ],
)
@pytest.mark.parametrize("charset", [[""], ["ISO_IR 100"], ["ISO_IR 192"], ["", "ISO 2022 IR 87"]])
def test_readable_text_of_printable_ascii_is_the_text_character_by_character(text: str, charset: list[str]):
    by_character = "".join(c if _encodable(c, charset) else UNENCODABLE for c in text)
    assert readable_text(text, charset) == by_character


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192"])
def test_an_edited_readable_text_copy_is_detected_in_any_character_set(charset):
    """Printable ASCII skips the round trip through the character set, never the comparison."""
    ds = read("CT_small.dcm")
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    embed_block(ds, make_block(ds))
    raw = io.BytesIO()
    ds.save_as(raw, enforce_file_format=True)
    stored = pydicom.dcmread(io.BytesIO(raw.getvalue()))
    read_block(stored)  # as written: passes
    hash_copy = (CHAIN_GROUP << 16) | 0x1005  # the readable content hash, first slot
    text = stored[hash_copy].value
    stored[hash_copy].value = ("0" if text[0] != "0" else "1") + text[1:]
    with pytest.raises(MalformedBlockError, match="differs from the canonical block"):
        read_block(stored)
