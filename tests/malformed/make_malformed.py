"""Writes the malformed inputs in this folder; run it again after changing it and commit the files.

Every parser in the project is run against every file here (tests/test_malformed.py).
"""

from __future__ import annotations

import io
import json
import random
import struct
from pathlib import Path

import pydicom

from dicom_chain.block import FORMAT_VERSION, GENESIS_HASH, Block, BlockHeader
from dicom_chain.carriers.dicom.canonical import content_hash
from dicom_chain.carriers.dicom.embedding import embed_block
from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP, PRIVATE_CREATOR
from dicom_chain.keys import NodeKey

HERE = Path(__file__).parent
FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct():
    return pydicom.dcmread(FILES / "CT_small.dcm")


def signed_block(ds) -> Block:
    key = NodeKey.generate()
    header = BlockHeader(
        FORMAT_VERSION, "00000000-0000-4000-8000-000000000000", 0, GENESIS_HASH, content_hash(ds),
        "2026-01-01T00:00:00.000000Z", "Malformed Inputs", key.key_id, str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID), 0, GENESIS_HASH,
    )  # fmt: skip
    return Block.sign(header, key)


def main() -> None:
    rng = random.Random(1507)
    out: dict[str, bytes] = {}
    out["empty.dcm"] = b""
    out["random.bin"] = bytes(rng.getrandbits(8) for _ in range(512))
    out["text_file.dcm"] = b"hello, I am not an image\n"
    out["preamble_only.dcm"] = b"\x00" * 128 + b"DICM"
    whole = (FILES / "CT_small.dcm").read_bytes()
    out["truncated_header.dcm"] = whole[:300]
    out["truncated_pixels.dcm"] = whole[:-1000]

    ds = ct()
    del ds.SOPInstanceUID
    out["no_sop_instance_uid.dcm"] = part10(ds)

    ds = ct()
    ds.StudyInstanceUID = "../../../../etc"
    ds.SOPInstanceUID = "../../passwd"
    out["uid_path_traversal.dcm"] = part10(ds)

    ds = ct()
    ds.SOPInstanceUID = "1." * 50
    out["uid_too_long.dcm"] = part10(ds)

    ds = ct()
    block = ds.private_block(CHAIN_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "OB", b"{not json at all")
    out["block_garbage_json.dcm"] = part10(ds)

    ds = ct()
    data = signed_block(ds).to_dict()
    data["header"]["height"] = "zero"
    block = ds.private_block(CHAIN_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "OB", json.dumps(data).encode() + b" ")
    out["block_wrong_types.dcm"] = part10(ds)

    ds = ct()
    embed_block(ds, signed_block(ds))
    ds.add_new((CHAIN_GROUP << 16) | 0x00FF, "LO", PRIVATE_CREATOR)
    out["block_two_creators.dcm"] = part10(ds)

    ds = ct()
    good = signed_block(ds)
    embed_block(ds, Block(good.header, good.public_key, bytes(64)))
    out["block_bad_signature.dcm"] = part10(ds)

    ds = ct()
    embed_block(ds, signed_block(ds))
    ds.PatientName = "ALTERED^AFTER^CHAINING"
    out["block_content_altered.dcm"] = part10(ds)

    ds = pydicom.dcmread(FILES / "JPEG2000.dcm")
    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\x00\xe0\xff\xff\x00\x00abc"
    out["broken_encapsulation.dcm"] = part10(ds)

    # Elements that claim more bytes than the file holds (64 KB; nearly 4 GB for the pixels).
    raw = bytearray(whole)
    at = raw.find(b"\x10\x00\x10\x00PN")  # (0010,0010) PatientName, explicit VR LE
    struct.pack_into("<H", raw, at + 6, 0xFFF0)
    out["overlong_element.dcm"] = bytes(raw)
    raw2 = bytearray(whole)
    at = raw2.find(b"\xe0\x7f\x10\x00OW")
    struct.pack_into("<I", raw2, at + 8, 0xFFFFFFF0)
    out["pixel_length_lie.dcm"] = bytes(raw2)

    # Three that parse, hash and sign, yet would not verify once written with a block (ingest
    # must refuse them): a dataset ending in part of an element header, which the block went
    # after; SeriesNumber's VR changed to SQ; an element of group 0071 with no creator, which our
    # block, taking the first slot, would own.
    ds = ct()
    for tag in [t for t in ds.keys() if t > 0x0071FFFF]:
        del ds[tag]
    out["partial_header_at_end.dcm"] = part10(ds) + b"\xe0\x7f\x10\x00OW"
    raw3 = bytearray(whole)
    at = raw3.find(b"\x20\x00\x11\x00IS")  # (0020,0011) SeriesNumber, explicit VR LE
    raw3[at + 4 : at + 6] = b"SQ"
    out["vr_changed_to_sq.dcm"] = bytes(raw3)
    ds = ct()
    ds.add_new((CHAIN_GROUP << 16) | 0x1001, "LO", "ORPHAN")
    out["orphan_in_chain_group.dcm"] = part10(ds)

    out["big_endian_odd_us.dcm"] = _odd_us_big_endian((FILES / "MR_small_bigendian.dcm").read_bytes())
    out["big_endian_un_no_delimiter.dcm"] = _un_without_delimiter_big_endian()

    # pydicom's own broken files (its tests read them as invalid), and imperfect but whole ones
    for name in PYDICOM_FILES:
        out[f"pydicom_{name}"] = (FILES / name).read_bytes()
    # Pixel Data longer than the image needs, 8-bit: odd 27 bytes of RGB, padded to 28, then 8 more
    ds = pydicom.dcmread(FILES / "SC_rgb_small_odd.dcm")
    ds.PixelData = ds.PixelData + bytes(range(8))
    out["pixels_longer_8bit.dcm"] = part10(ds)

    for name, data in out.items():
        (HERE / name).write_bytes(data)


PYDICOM_FILES = (
    "badVR.dcm",  # Image Pixel values of the wrong VR (Rows as text)
    "MR_truncated.dcm",  # ends inside Pixel Data
    "rtplan_truncated.dcm",  # ends inside a sequence item
    "no_meta.dcm",  # no preamble nor file meta
    "no_meta_group_length.dcm",
    "meta_missing_tsyntax.dcm",  # file meta without Transfer Syntax UID
    "ExplVR_LitEndNoMeta.dcm",
    "ExplVR_BigEndNoMeta.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",  # a sequence delimiter inside a fragment
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 fragments with a JP2 header (non-conformant)
    "MR_small_padded.dcm",  # Pixel Data 8,320 bytes where the image needs 8,192: kept, with an anomaly
)


def _odd_us_big_endian(data: bytes) -> bytes:
    """Rows (0028,0010) US declared 3 bytes long in a big endian file."""
    raw = bytearray(data)
    at = raw.find(b"\x00\x28\x00\x10US\x00\x02")
    if at < 0:
        raise SystemExit("Rows not found")
    raw[at + 6 : at + 8] = b"\x00\x03"
    return bytes(raw[: at + 10]) + b"\x00" + bytes(raw[at + 10 :])


def _un_without_delimiter_big_endian() -> bytes:
    """A private sequence written as UN of undefined length in explicit VR big endian, its
    implicit VR little endian items never closed: the sequence delimiter is left out."""
    from tests.un_sequences import add_sequences, un_header, undefined_un

    ds = pydicom.dcmread(FILES / "MR_small_bigendian.dcm")
    private = add_sequences(ds)
    data = undefined_un(ds)
    start = data.index(un_header(private)) + 12
    last = data.rindex(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", start, data.index(b"\x7f\xe0\x00\x10OW"))
    return data[:last] + data[last + 8 :]


if __name__ == "__main__":
    main()
