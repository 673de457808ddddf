"""Put a block into a dataset's ``DICOM_CHAIN`` private block, and read it back.

The canonical block (offset 0x10) is the authority; the readable elements are copies for
people and viewers, and reading cross-checks them so a hand-edited copy does not pass unseen.
"""

from __future__ import annotations

import struct

from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from dicom_chain.block import Block, iso_to_dt
from dicom_chain.carriers.dicom.privatetags import (
    CHAIN_GROUP,
    ELEMENTS,
    PRIVATE_CREATOR,
    chain_block_tags,
    creator_slots,
    free_slot,
    register_private_dictionary,
)
from dicom_chain.errors import MalformedBlockError, MalformedDatasetError, NoBlockError

register_private_dictionary()

LO_MAX_CHARS = 64  # PS3.5 6.2: LO holds at most 64 characters; the canonical block keeps the rest
# Specific Character Set terms that mean the default repertoire, ISO-IR 6 (ASCII) only, PS3.3 C.12.1.1.2.
# pydicom decodes the default as Latin-1; the copies keep to ASCII so that every reader agrees.
DEFAULT_REPERTOIRE = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
UNENCODABLE = "?"  # stands in a readable copy for a character the data set's character set lacks


def _readable(block: Block) -> dict[int, object]:
    h = block.header
    return {
        0x02: h.chain_id,
        0x03: h.height,
        0x04: h.prev_hash,
        0x05: h.content_hash,
        0x06: iso_to_dt(h.timestamp),
        0x07: _lo(h.institution),
        0x08: h.key_id,
        0x09: h.study_index,
        0x0B: block.hash,
    }


def _lo(text: str) -> str:
    return text.replace("\\", "/")[:LO_MAX_CHARS]


def character_set(ds: Dataset) -> list[str]:
    """The data set's Specific Character Set terms, ``[""]`` when absent (the default repertoire)."""
    value = ds.get("SpecificCharacterSet")
    if value is None or value == "":
        return [""]
    return [str(value)] if isinstance(value, str) else [str(term) for term in value]


def _encodable(char: str, charset: list[str]) -> bool:
    if char.isascii():
        return char.isprintable()
    for term in charset:
        if term.strip() in DEFAULT_REPERTOIRE:
            continue
        try:
            char.encode(convert_encodings([term])[0])
        except (UnicodeError, LookupError):
            continue
        return True
    return False


def readable_text(text: str, charset: list[str]) -> str:
    """The text a readable copy holds in a data set of ``charset``: each character the character
    set cannot encode becomes ``?``. The canonical block keeps the exact text; a copy is for people.
    Printable ASCII, what our hashes, UIDs and dates always are, is in every character set:
    returned as it is, without a test per character (~10 texts per instance)."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(char if _encodable(char, charset) else UNENCODABLE for char in text)


def encode_text(text: str, charset: list[str]) -> bytes:
    """``text`` (already through ``readable_text``) in the data set's character set."""
    return encode_string(text, convert_encodings(charset))


def decode_text(data: bytes, charset: list[str]) -> str:
    return decode_bytes(data, convert_encodings(charset), set())


def remove_blocks(ds: Dataset) -> None:
    for tag in chain_block_tags(ds):
        del ds[tag]


def block_elements(block: Block, slot: int) -> list[tuple[int, str, str | int | bytes]]:
    """(tag, VR, value) of every element of our private block at ``slot``, in tag order."""
    base = (CHAIN_GROUP << 16) | (slot << 8)
    elements: list[tuple[int, str, str | int | bytes]] = [((CHAIN_GROUP << 16) | slot, "LO", PRIVATE_CREATOR)]
    elements += [(base | offset, ELEMENTS[offset][0], value) for offset, value in _readable(block).items()]
    elements.append((base | 0x10, "OB", block.to_bytes()))
    return elements


def encode_value(vr: str, value: str | int | bytes, little: bool, charset: list[str]) -> bytes:
    """Our values as they go into a file (padded to even length); text in the data set's
    character set, ``?`` for what it cannot encode."""
    if isinstance(value, str):
        data = encode_text(readable_text(value, charset), charset)
        return data + b" " * (len(data) % 2)
    if isinstance(value, int):
        return struct.pack("<I" if little else ">I", value)
    return value + b"\x00" * (len(value) % 2)


def embed_block(ds: Dataset, block: Block) -> None:
    """Replace any DICOM_CHAIN block in ``ds`` by ``block``; other private blocks stay as they are."""
    remove_blocks(ds)
    slot = free_slot(ds)
    if slot is None:
        raise MalformedDatasetError(f"all 240 private creator slots of group {CHAIN_GROUP:04X} are taken")
    implicit, little = target_encoding(ds)
    charset = character_set(ds)
    creator, *rest = block_elements(block, slot)
    # The creator goes in last: while it is absent pydicom stores the raw elements as they are,
    # instead of decoding each one to tag it with its creator.
    for tag, vr, value in [*rest, creator]:
        data = encode_value(vr, value, little, charset)
        ds[tag] = RawDataElement(BaseTag(tag), vr, len(data), data, 0, implicit, little, True, False)


def target_encoding(ds: Dataset) -> tuple[bool, bool]:
    """(implicit VR, little endian) the dataset will be written in: its transfer syntax decides."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_transfer_syntax:
        return syntax.is_implicit_VR, syntax.is_little_endian
    implicit, little = getattr(ds, "original_encoding", (None, None))
    return bool(implicit), little is not False


def read_block(ds: Dataset) -> Block:
    slots = creator_slots(ds)
    if not slots:
        raise NoBlockError("no DICOM_CHAIN private block")
    if len(slots) > 1:
        raise MalformedBlockError(f"{len(slots)} DICOM_CHAIN private blocks; expected one")
    base = (CHAIN_GROUP << 16) | (slots[0] << 8)
    for tag in chain_block_tags(ds):
        if tag >> 8 == base >> 8 and tag & 0xFF not in ELEMENTS:  # covered by no hash nor signature
            raise MalformedBlockError(
                f"element (0071,{tag & 0xFFFF:04X}) is not part of the DICOM_CHAIN block format"
            )
    canonical = ds.get_item(base | 0x10)
    if canonical is None or not isinstance(canonical.value, bytes):
        raise MalformedBlockError("DICOM_CHAIN block has no canonical block element")
    block = Block.from_bytes(canonical.value)
    charset = character_set(ds)
    ascii_only = all(term.strip() in DEFAULT_REPERTOIRE for term in charset)
    for offset, expected in _readable(block).items():
        elem = ds.get_item(base | offset)
        if elem is None:
            continue  # a reader may drop copies; the canonical block still decides
        vr = ELEMENTS[offset][0]
        if isinstance(expected, str) and not (ascii_only and expected.isascii() and expected.isprintable()):
            # the copy as written: through the character set and back (printable ASCII in the
            # default repertoire comes back as it went, so it is not sent on the round trip)
            expected = decode_text(encode_text(readable_text(expected, charset), charset), charset)
        if _copy_value(elem, vr, charset) not in _candidates(expected, vr):
            raise MalformedBlockError(
                f"readable field {ELEMENTS[offset][3]} differs from the canonical block"
            )
    return block


def _copy_value(elem: RawDataElement | DataElement, vr: str, charset: list[str]) -> object:
    """A readable copy's value, whatever a hop did to its VR; text decoded with the data set's
    character set. A UL copy whose VR a hop lost (UN) comes back as its raw 4 bytes."""
    if not isinstance(elem, RawDataElement):
        return _normalise(elem.value, vr, charset)
    data = bytes(elem.value or b"")
    if vr == "UL" and len(data) == 4:
        if elem.VR in (None, "UN"):
            return data
        return struct.unpack("<I" if elem.is_little_endian else ">I", data)[0]
    return _normalise(data, vr, charset)


def _candidates(expected: object, vr: str) -> list[object]:
    """What a copy of ``expected`` may read as. A UL copy left UN by a hop keeps the byte order
    it was written in, which a reader cannot know (a tool that lacks our dictionary does not
    swap it when it changes the byte order): either order is accepted."""
    if vr == "UL" and isinstance(expected, int):
        return [expected, struct.pack("<I", expected), struct.pack(">I", expected)]
    return [_normalise(expected, vr, [""])]


def _normalise(value: object, vr: str, charset: list[str]) -> object:
    if vr in ("UL", "OB"):
        return bytes(value) if isinstance(value, bytearray) else value
    if isinstance(value, bytes):
        value = decode_text(value, charset)
    return str(value).strip(" \x00")


SENDER_CHECKPOINT = 0x30  # privatetags.RELEASE_ELEMENTS


def attach_checkpoint(ds: Dataset, request: str) -> None:
    """Put our checkpoint (an add-checkpoint request body) in the block of an instance being released."""
    slots = creator_slots(ds)
    if len(slots) != 1:
        raise MalformedBlockError("an instance carries a checkpoint in its one DICOM_CHAIN block")
    data = request.encode("utf-8")
    ds.add_new(
        (CHAIN_GROUP << 16) | (slots[0] << 8) | SENDER_CHECKPOINT, "OB", data + b"\x00" * (len(data) % 2)
    )


def take_checkpoint(ds: Dataset) -> str:
    """The sender's checkpoint a released instance carries, removed from it ("" for none): a
    stored file never holds it, and ``read_block`` refuses anything unsigned in the block."""
    slots = creator_slots(ds)
    if len(slots) != 1:
        return ""
    tag = (CHAIN_GROUP << 16) | (slots[0] << 8) | SENDER_CHECKPOINT
    if tag not in ds:
        return ""
    value = ds[tag].value  # read now if the parser deferred it (a received data set's large values)
    del ds[tag]
    if not isinstance(value, bytes):
        return ""
    return value.rstrip(b"\x00").decode("utf-8", "replace")
