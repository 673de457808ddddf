"""Blocks: hashing, signing, the canonical serialised form, and refusing anything malformed."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_chain.block import (
    FORMAT_VERSION,
    GENESIS_HASH,
    ITEM_FORMAT_VERSION,
    Block,
    BlockHeader,
    Origin,
    PictureLink,
    utc_now,
)
from dicom_chain.errors import MalformedBlockError, SignatureError
from dicom_chain.keys import NodeKey

KEY = NodeKey.generate()


def header(**changes) -> BlockHeader:
    base = BlockHeader(
        version=FORMAT_VERSION,
        chain_id="8d1c8f1e-0000-4000-8000-000000000001",
        height=0,
        prev_hash=GENESIS_HASH,
        content_hash="ab" * 32,
        timestamp=utc_now(),
        institution="Hôpital Saint-Éloi",
        key_id=KEY.key_id,
        sop_instance_uid="1.2.3.4",
        study_instance_uid="1.2.3",
        study_index=0,
        study_prev_hash=GENESIS_HASH,
    )
    return dataclasses.replace(base, **changes)


def test_round_trip_is_exact():
    block = Block.sign(header(), KEY)
    again = Block.from_bytes(block.to_bytes())
    assert again == block
    assert again.to_bytes() == block.to_bytes()
    again.verify_signature()


def test_hash_covers_every_header_field():
    base = header(height=5, prev_hash="cd" * 32, study_index=2, study_prev_hash="ef" * 32)
    variants = {
        "chain_id": "other",
        "height": 6,
        "prev_hash": "ce" * 32,
        "content_hash": "ac" * 32,
        "timestamp": "2000-01-01T00:00:00.000000Z",
        "institution": "Other",
        "key_id": "0" * 16,
        "sop_instance_uid": "9.9",
        "study_instance_uid": "9.8",
        "study_index": 3,
        "study_prev_hash": "ee" * 32,
    }
    # format 1 serialises no carrier (it is always "dicom"); format 2's test covers it
    # format 1 carries no origin either: format 2 only (test_origin_*)
    every = {f.name for f in dataclasses.fields(BlockHeader)}
    assert (
        set(variants) | {"version", "carrier", "origin", "canonical", "attributes_hash", "picture"} == every
    )
    for name, value in variants.items():
        assert dataclasses.replace(base, **{name: value}).block_hash != base.block_hash, name
    v2 = dataclasses.replace(base, canonical=2, attributes_hash="12" * 32)
    assert v2.block_hash != base.block_hash
    for name, value in {"canonical": 3, "attributes_hash": "13" * 32}.items():
        assert dataclasses.replace(v2, **{name: value}).block_hash != v2.block_hash, name
    item = header(version=ITEM_FORMAT_VERSION, carrier="png")
    for name, value in {**variants, "carrier": "jpeg"}.items():
        assert dataclasses.replace(item, **{name: value}).block_hash != item.block_hash, name


def test_format_1_hashes_do_not_move():
    """A fixed format 1 header and its hash, computed before format 2 existed: every block already
    chained must keep verifying."""
    fixed = header(
        height=3,
        prev_hash="cd" * 32,
        timestamp="2026-11-24T13:34:04.123456Z",
        key_id="0123456789abcdef",
        study_index=1,
        study_prev_hash="ef" * 32,
    )
    assert fixed.block_hash == "749009ac360bc02023089fdaabfebd2b656c09f51c30623cb74af9a0ec6874ea"
    assert "carrier" not in fixed.to_dict() and "sop_instance_uid" in fixed.to_dict()


def test_canonical_version_and_attributes_hash_are_serialised_only_when_not_implied():
    """A version 1 header keeps its bytes (no new keys); a version 2 one names its version and
    attributes hash, and reads back in either format."""
    assert {"canonical", "attributes_hash"}.isdisjoint(header().to_dict())
    for version, carrier in ((FORMAT_VERSION, "dicom"), (ITEM_FORMAT_VERSION, "png")):
        block = Block.sign(
            header(version=version, carrier=carrier, canonical=2, attributes_hash="34" * 32), KEY
        )
        names = block.header.to_dict()
        assert (names["canonical"], names["attributes_hash"]) == (2, "34" * 32)
        again = Block.from_bytes(block.to_bytes())
        assert again == block and again.header.canonical == 2
        again.verify_signature()


@pytest.mark.parametrize(
    "changes",
    [
        {"canonical": 1},  # implied: writing it would give one header two encodings
        {"canonical": "2"},
        {"canonical": 0},
        {"attributes_hash": "34" * 32},  # without a canonical version that has one
        {"canonical": 2, "attributes_hash": "XYZ"},
        {"canonical": 2, "attributes_hash": ""},
    ],
)
def test_bad_canonical_fields_are_refused(changes):
    data = Block.sign(header(), KEY).to_dict()
    data["header"].update(changes)
    with pytest.raises(MalformedBlockError):
        Block.from_bytes(json.dumps(data).encode())


def test_format_2_names_the_carrier_and_its_item_and_reads_back():
    block = Block.sign(header(version=ITEM_FORMAT_VERSION, carrier="png", sop_instance_uid="photo-1"), KEY)
    names = block.header.to_dict()
    assert (names["carrier"], names["item_id"], names["group_id"]) == ("png", "photo-1", "1.2.3")
    assert {"sop_instance_uid", "study_instance_uid", "study_index"}.isdisjoint(names)
    again = Block.from_bytes(block.to_bytes())
    assert again == block and again.header.item_id == "photo-1" and again.header.group_id == "1.2.3"
    again.verify_signature()


@pytest.mark.parametrize(
    "version, changes",
    [
        (FORMAT_VERSION, {"carrier": "png"}),  # format 1 has no carrier field at all
        (ITEM_FORMAT_VERSION, {"sop_instance_uid": "1.2"}),  # format 1's names in a format 2 header
        (ITEM_FORMAT_VERSION, {"carrier": "PNG files"}),
        (ITEM_FORMAT_VERSION, {"version": 1}),  # format 2's names under format 1
    ],
)
def test_headers_mixing_formats_are_refused(version, changes):
    data = Block.sign(header(version=version, carrier="png" if version == 2 else "dicom"), KEY).to_dict()
    data["header"].update(changes)
    with pytest.raises(MalformedBlockError):
        Block.from_bytes(json.dumps(data).encode())


def test_format_1_cannot_be_built_for_another_carrier():
    with pytest.raises(MalformedBlockError):
        header(carrier="png").check()


def test_tampered_header_fails_signature():
    block = Block.sign(header(), KEY)
    forged = Block(
        dataclasses.replace(block.header, content_hash="00" * 32), block.public_key, block.signature
    )
    with pytest.raises(SignatureError):
        forged.verify_signature()


def test_other_key_cannot_pass_as_the_signer():
    other = NodeKey.generate()
    block = Block.sign(header(), KEY)
    with pytest.raises(SignatureError):
        Block(block.header, other.public_key, block.signature).verify_signature()
    with pytest.raises(SignatureError):
        block.verify_signature(trusted_keys=frozenset({other.public_key}))
    block.verify_signature(trusted_keys=frozenset({KEY.public_key}))


def test_signing_with_a_key_the_header_does_not_name_is_refused():
    with pytest.raises(SignatureError):
        Block.sign(header(key_id="0" * 16), KEY)


@pytest.mark.parametrize(
    "changes",
    [
        {"height": 1},  # height 1 after genesis
        {"prev_hash": "ab" * 32},  # height 0 not after genesis
        {"study_index": 1},
        {"content_hash": "XYZ"},
        {"height": -1, "prev_hash": "ab" * 32},
        {"version": 99},
    ],
)
def test_malformed_headers_are_refused(changes):
    block = Block.sign(header(), KEY)
    data = block.to_dict()
    data["header"].update(changes)
    with pytest.raises(MalformedBlockError):
        Block.from_bytes(json.dumps(data).encode())


def test_wrong_types_and_fields_are_refused():
    data = Block.sign(header(), KEY).to_dict()
    for mutate in (
        lambda d: d["header"].update(height="0"),
        lambda d: d["header"].pop("institution"),
        lambda d: d["header"].update(extra=1),
        lambda d: d.update(signature="zz"),
        lambda d: d.update(public_key="ab"),
        lambda d: d.pop("signature"),
    ):
        broken = json.loads(json.dumps(data))
        mutate(broken)
        with pytest.raises(MalformedBlockError):
            Block.from_bytes(json.dumps(broken).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_a_named_error_or_a_valid_block(data):
    with contextlib.suppress(MalformedBlockError):
        Block.from_bytes(data)


def test_chained_headers_link_by_hash():
    first = Block.sign(header(), KEY)
    second = Block.sign(
        header(height=1, prev_hash=first.hash, study_index=1, study_prev_hash=first.hash), KEY
    )
    assert second.header.prev_hash == first.hash
    assert first.hash != second.hash


ORIGIN = Origin("HOSPITAL_A", "0123456789abcdef", "fe" * 32)


def test_origin_is_signed_and_reads_back_on_format_2():
    received = header(version=ITEM_FORMAT_VERSION, origin=ORIGIN)
    block = Block.sign(received, KEY)
    again = Block.from_bytes(block.to_bytes())
    assert again.header.origin == ORIGIN
    assert again.to_bytes() == block.to_bytes()
    again.verify_signature()
    assert json.loads(block.to_bytes())["header"]["origin"]["institution"] == "HOSPITAL_A"
    plain = header(version=ITEM_FORMAT_VERSION)
    assert plain.block_hash != received.block_hash  # the link is covered by the hash and signature
    assert "origin" not in plain.to_dict()  # absent: format 2 serialises exactly as before


def test_origin_tampered_fails_signature():
    block = Block.sign(header(version=ITEM_FORMAT_VERSION, origin=ORIGIN), KEY)
    other = dataclasses.replace(ORIGIN, block_hash="ee" * 32)
    forged = dataclasses.replace(block, header=dataclasses.replace(block.header, origin=other))
    with pytest.raises(SignatureError):
        forged.verify_signature()


@pytest.mark.parametrize(
    "version, origin",
    [
        (FORMAT_VERSION, ORIGIN),  # format 1 is frozen: no origin
        (ITEM_FORMAT_VERSION, Origin("", "0123456789abcdef", "fe" * 32)),
        (ITEM_FORMAT_VERSION, Origin("A", "XYZ", "fe" * 32)),
        (ITEM_FORMAT_VERSION, Origin("A", "0123456789abcdef", "short")),
    ],
)
def test_malformed_origins_are_refused(version, origin):
    with pytest.raises(MalformedBlockError):
        header(version=version, origin=origin).check()


def test_origin_of_the_wrong_shape_is_refused():
    data = header(version=ITEM_FORMAT_VERSION, origin=ORIGIN).to_dict()
    data["origin"] = {"institution": "A", "key_id": "0123456789abcdef"}
    with pytest.raises(MalformedBlockError):
        BlockHeader.from_dict(data)
    data["origin"] = "A"
    with pytest.raises(MalformedBlockError):
        BlockHeader.from_dict(data)


PICTURE = PictureLink("metadata", GENESIS_HASH, "9a" * 32)


def test_a_picture_link_is_signed_and_reads_back_on_format_2():
    chained = header(version=ITEM_FORMAT_VERSION, carrier="png", picture=PICTURE)
    block = Block.sign(chained, KEY)
    again = Block.from_bytes(block.to_bytes())
    assert again.header.picture == PICTURE and again.to_bytes() == block.to_bytes()
    again.verify_signature()
    assert "source_block_hash" not in json.loads(block.to_bytes())["header"]["picture"]
    plain = header(version=ITEM_FORMAT_VERSION, carrier="png")
    assert "picture" not in plain.to_dict() and plain.block_hash != chained.block_hash
    later = header(version=ITEM_FORMAT_VERSION, carrier="png", height=1, prev_hash="cd" * 32)
    base = dataclasses.replace(later, picture=PictureLink("watermark", "ab" * 32, "9a" * 32, "ef" * 32))
    for change in (
        {"method": "reversible"},
        {"prev_file_hash": "ac" * 32},
        {"pixels_hash": "9b" * 32},
        {"source_block_hash": "ee" * 32},
    ):
        moved = dataclasses.replace(base, picture=dataclasses.replace(base.picture, **change))
        assert moved.block_hash != base.block_hash, change


@pytest.mark.parametrize(
    "version, height, picture",
    [
        (FORMAT_VERSION, 0, PICTURE),  # format 1 is frozen
        (ITEM_FORMAT_VERSION, 0, PictureLink("stego", GENESIS_HASH, "9a" * 32)),
        (ITEM_FORMAT_VERSION, 0, PictureLink("metadata", "ab" * 32, "9a" * 32)),  # height 0 follows genesis
        (ITEM_FORMAT_VERSION, 1, PICTURE),  # and nothing else does
        (ITEM_FORMAT_VERSION, 0, PictureLink("metadata", GENESIS_HASH, "9A" * 32)),
        (ITEM_FORMAT_VERSION, 0, PictureLink("metadata", GENESIS_HASH, "9a" * 32, "short")),
    ],
)
def test_malformed_picture_links_are_refused(version, height, picture):
    prev = GENESIS_HASH if height == 0 else "cd" * 32
    with pytest.raises(MalformedBlockError):
        header(version=version, carrier="png" if version == ITEM_FORMAT_VERSION else "dicom", height=height,
               prev_hash=prev, picture=picture).check()  # fmt: skip


@pytest.mark.parametrize(
    "picture",
    [
        {"method": "metadata", "prev_file_hash": GENESIS_HASH},
        {"method": "metadata", "prev_file_hash": GENESIS_HASH, "pixels_hash": "9a" * 32, "extra": "x"},
        {"method": "metadata", "prev_file_hash": GENESIS_HASH, "pixels_hash": 5},
        {
            "method": "metadata",
            "prev_file_hash": GENESIS_HASH,
            "pixels_hash": "9a" * 32,
            "source_block_hash": "",
        },
        "metadata",
    ],
)
def test_a_picture_link_of_the_wrong_shape_is_refused(picture):
    data = header(version=ITEM_FORMAT_VERSION, carrier="png", picture=PICTURE).to_dict()
    data["picture"] = picture
    with pytest.raises(MalformedBlockError):
        BlockHeader.from_dict(data)
