"""The imagechain block: a signed header that links one item to the chain and to its group.

Pure: no files, no database. The same block goes into DICOM private tags and, through other
carriers (dicom_chain/carriers), into PNG/JPEG/TIFF metadata, so it knows no file format. Two
header formats (docs/design.md 2.1 and 2.4): format 1, what DICOM writes, names its item with
``sop_instance_uid`` and ``study_instance_uid``; format 2 names any carrier's item with
``carrier``, ``item_id`` and ``group_id``. Readers accept both. In Python both are the same
attributes (``sop_instance_uid`` holds the item id), so links, ledger rows and verification need
not know which format a block has.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from dicom_chain import canonjson
from dicom_chain.errors import MalformedBlockError, SignatureError
from dicom_chain.keys import NodeKey, key_id_for, verify_signature

FORMAT_VERSION = 1  # what the DICOM carrier writes: every block chained so far, hashes unchanged
ITEM_FORMAT_VERSION = 2  # names the carrier and its item: what any other carrier writes
FORMAT_VERSIONS = (FORMAT_VERSION, ITEM_FORMAT_VERSION)
IMPLIED_CARRIER = "dicom"  # format 1 has no carrier field: its items are DICOM instances
GENESIS_HASH = "0" * 64  # previous hash of height 0, and of index 0 within a study
BLOCK_DOMAIN = b"DICOM_CHAIN block v1\n"
SIGNATURE_DOMAIN = b"DICOM_CHAIN block signature v1\n"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
CARRIER_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")  # short, lowercase: it is part of signed bytes


def iso_to_dt(timestamp: str) -> str:
    """'2026-11-24T13:34:04.123456Z' -> DICOM DT '20261124133404.123456+0000'."""
    t = timestamp
    return f"{t[0:4]}{t[5:7]}{t[8:10]}{t[11:13]}{t[14:16]}{t[17:26]}+0000"


def utc_now() -> str:
    """Block time: UTC, microseconds, ISO 8601 with a Z; sortable as text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Origin:
    """Where a received item's block came from: the registered institution that released it, the key
    that signed its block there, and that block's hash (kept in our ledger beside the receipt)."""

    institution: str
    key_id: str
    block_hash: str

    def to_dict(self) -> dict[str, str]:
        return {"institution": self.institution, "key_id": self.key_id, "block_hash": self.block_hash}

    @classmethod
    def from_dict(cls, data: Any) -> Origin:
        if not isinstance(data, dict) or set(data) != set(ORIGIN_KEYS):
            raise MalformedBlockError(f"block origin needs exactly {', '.join(ORIGIN_KEYS)}")
        if any(type(data[k]) is not str for k in ORIGIN_KEYS):
            raise MalformedBlockError("block origin fields are text")
        return cls(data["institution"], data["key_id"], data["block_hash"])


ORIGIN_KEYS = ("institution", "key_id", "block_hash")
ORIGIN_KEY = "origin"  # the optional format 2 header key
PICTURE_KEY = "picture"  # the optional format 2 header key of a picture chain's block (design 11)
PICTURE_METHODS = ("metadata", "watermark", "reversible")
_PICTURE_REQUIRED = ("method", "prev_file_hash", "pixels_hash")
_PICTURE_OPTIONAL = ("source_block_hash",)


@dataclass(frozen=True)
class PictureLink:
    """What a picture's block adds (docs/design.md 11): how the block is held in the picture, the
    Imagechain paper's link (the SHA-256 of the previous picture's whole file as written, block
    included), the pixels' hash by value (so that a re-encoding that kept them is told from an
    edit), and, for a picture rendered from a DICOM instance, that instance's block hash."""

    method: str
    prev_file_hash: str
    pixels_hash: str
    source_block_hash: str = ""  # "" is not serialised

    def to_dict(self) -> dict[str, str]:
        out = {"method": self.method, "prev_file_hash": self.prev_file_hash, "pixels_hash": self.pixels_hash}
        if self.source_block_hash:
            out["source_block_hash"] = self.source_block_hash
        return out

    @classmethod
    def from_dict(cls, data: Any) -> PictureLink:
        if not isinstance(data, dict) or not set(_PICTURE_REQUIRED) <= set(data) <= set(
            _PICTURE_REQUIRED + _PICTURE_OPTIONAL
        ):
            raise MalformedBlockError(
                f"block picture needs {', '.join(_PICTURE_REQUIRED)} (and no other key)"
            )
        if any(type(value) is not str for value in data.values()):
            raise MalformedBlockError("block picture fields are text")
        if "source_block_hash" in data and not data["source_block_hash"]:
            raise MalformedBlockError("block picture source_block_hash is empty")
        return cls(
            data["method"], data["prev_file_hash"], data["pixels_hash"], data.get("source_block_hash", "")
        )

    def check(self) -> None:
        if self.method not in PICTURE_METHODS:
            raise MalformedBlockError(
                f"picture method {self.method!r} is not one of {', '.join(PICTURE_METHODS)}"
            )
        for name in ("prev_file_hash", "pixels_hash") + (
            ("source_block_hash",) if self.source_block_hash else ()
        ):
            if not _HEX64.fullmatch(getattr(self, name)):
                raise MalformedBlockError(f"picture {name} is not 64 lowercase hex digits")


# Optional in both formats (docs/design.md 2.1): which canonical encoding the content hash used
# (absent: 1) and, from version 2 of DICOM's, the hash of every attribute but the pixels.
CANONICAL_KEY = "canonical"
ATTRIBUTES_KEY = "attributes_hash"
IMPLIED_CANONICAL = 1


@dataclass(frozen=True)
class BlockHeader:
    """Everything the block hash covers."""

    version: int
    chain_id: str
    height: int
    prev_hash: str
    content_hash: str
    timestamp: str
    institution: str
    key_id: str
    sop_instance_uid: str
    study_instance_uid: str
    study_index: int
    study_prev_hash: str
    carrier: str = IMPLIED_CARRIER  # format 2 only; format 1 implies "dicom" and does not serialise it
    origin: Origin | None = None  # format 2 only, optional: the sender's block of an item received from
    # another institution (docs/design.md 10.6); absent, the header serialises exactly as before
    canonical: int = IMPLIED_CANONICAL  # the content hash's canonical version; 1 is not serialised
    attributes_hash: str = ""  # canonical 2 and later: the attributes hash (1.6); "" is not serialised
    picture: PictureLink | None = None  # format 2 only, optional: a picture chain's link (design 11)

    @property
    def item_id(self) -> str:
        """The item the block covers, in its carrier's terms (DICOM: the SOP Instance UID)."""
        return self.sop_instance_uid

    @property
    def group_id(self) -> str:
        """The group whose links the block joins (DICOM: the Study Instance UID)."""
        return self.study_instance_uid

    @cached_property
    def _canonical(self) -> bytes:
        return canonjson.dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The header as its format names it (dataclasses.asdict deep-copies: too slow on ingest)."""
        names = _NAMES.get(self.version, _NAMES[FORMAT_VERSION])  # an unknown version fails check()
        out: dict[str, Any] = {key: getattr(self, name) for key, name in names.items()}
        if self.origin is not None:
            out[ORIGIN_KEY] = self.origin.to_dict()
        if self.canonical != IMPLIED_CANONICAL:
            out[CANONICAL_KEY] = self.canonical
        if self.attributes_hash:
            out[ATTRIBUTES_KEY] = self.attributes_hash
        if self.picture is not None:
            out[PICTURE_KEY] = self.picture.to_dict()
        return out

    def canonical_bytes(self) -> bytes:
        return self._canonical

    @cached_property
    def block_hash(self) -> str:
        return hashlib.sha256(BLOCK_DOMAIN + self.canonical_bytes()).hexdigest()

    @classmethod
    def from_dict(cls, data: Any) -> BlockHeader:
        if not isinstance(data, dict):
            raise MalformedBlockError("block header is not an object")
        version = data.get("version")
        if type(version) is not int or version not in _NAMES:
            raise MalformedBlockError(f"unknown block format version {version!r}")
        names = _NAMES[version]
        optional = {CANONICAL_KEY, ATTRIBUTES_KEY} | (
            {ORIGIN_KEY, PICTURE_KEY} if version == ITEM_FORMAT_VERSION else set()
        )
        if not set(names) <= set(data) <= set(names) | optional:
            missing, extra = set(names) - set(data), set(data) - set(names) - optional
            raise MalformedBlockError(
                f"block header fields differ: missing {sorted(missing)}, extra {sorted(extra)}"
            )
        for key, name in names.items():
            want = int if _TYPES[name] in ("int", int) else str
            if type(data[key]) is not want:
                raise MalformedBlockError(f"block header field {key!r} is not {want.__name__}")
        origin = Origin.from_dict(data[ORIGIN_KEY]) if ORIGIN_KEY in data else None
        picture = PictureLink.from_dict(data[PICTURE_KEY]) if PICTURE_KEY in data else None
        canonical = data.get(CANONICAL_KEY, IMPLIED_CANONICAL)
        if CANONICAL_KEY in data and (type(canonical) is not int or canonical <= IMPLIED_CANONICAL):
            raise MalformedBlockError(f"canonical version {canonical!r}: absent means 1, else an int above")
        attributes = data.get(ATTRIBUTES_KEY, "")
        if ATTRIBUTES_KEY in data and (type(attributes) is not str or not attributes):
            raise MalformedBlockError("attributes_hash is not text")
        header = cls(
            **{name: data[key] for key, name in names.items()},
            origin=origin,
            canonical=canonical,
            attributes_hash=attributes,
            picture=picture,
        )
        header.check()
        return header

    def check(self) -> None:
        """Shape rules a forged or garbled header would break."""
        if self.version not in FORMAT_VERSIONS:
            raise MalformedBlockError(f"unknown block format version {self.version}")
        if self.version == FORMAT_VERSION and self.carrier != IMPLIED_CARRIER:
            raise MalformedBlockError(f"format {FORMAT_VERSION} blocks cover DICOM instances only")
        if self.origin is not None:
            if self.version != ITEM_FORMAT_VERSION:
                raise MalformedBlockError(f"only format {ITEM_FORMAT_VERSION} blocks carry an origin")
            if not _HEX64.fullmatch(self.origin.block_hash) or not _HEX16.fullmatch(self.origin.key_id):
                raise MalformedBlockError("origin names a block hash and a key id in lowercase hex")
            if not self.origin.institution:
                raise MalformedBlockError("origin names no institution")
        if self.picture is not None:
            if self.version != ITEM_FORMAT_VERSION:
                raise MalformedBlockError(f"only format {ITEM_FORMAT_VERSION} blocks carry a picture link")
            self.picture.check()
            if (self.height == 0) != (self.picture.prev_file_hash == GENESIS_HASH):
                raise MalformedBlockError("only height 0 may (and must) follow the genesis file hash")
        if self.attributes_hash and (
            self.canonical == IMPLIED_CANONICAL or not _HEX64.fullmatch(self.attributes_hash)
        ):
            raise MalformedBlockError("attributes_hash is 64 lowercase hex digits, from canonical 2 on")
        if not CARRIER_NAME.fullmatch(self.carrier):
            raise MalformedBlockError("carrier is not a short lowercase name")
        if self.height < 0 or self.study_index < 0:
            raise MalformedBlockError("negative height or study index")
        for name in ("prev_hash", "content_hash", "study_prev_hash"):
            if not _HEX64.fullmatch(getattr(self, name)):
                raise MalformedBlockError(f"{name} is not 64 lowercase hex digits")
        if not _HEX16.fullmatch(self.key_id):
            raise MalformedBlockError("key_id is not 16 lowercase hex digits")
        if (self.height == 0) != (self.prev_hash == GENESIS_HASH):
            raise MalformedBlockError("only height 0 may (and must) follow the genesis hash")
        if (self.study_index == 0) != (self.study_prev_hash == GENESIS_HASH):
            raise MalformedBlockError("only study index 0 may (and must) follow the genesis hash")


_TYPES = {
    f.name: f.type
    for f in fields(BlockHeader)
    if f.name not in (ORIGIN_KEY, CANONICAL_KEY, ATTRIBUTES_KEY, PICTURE_KEY)
}
_COMMON = ("version", "chain_id", "height", "prev_hash", "content_hash", "timestamp", "institution", "key_id")
# serialised key -> attribute, per format; format 1's keys are frozen: its block hashes depend on them
_NAMES: dict[int, dict[str, str]] = {
    FORMAT_VERSION: {
        **{name: name for name in _COMMON},
        "sop_instance_uid": "sop_instance_uid",
        "study_instance_uid": "study_instance_uid",
        "study_index": "study_index",
        "study_prev_hash": "study_prev_hash",
    },
    ITEM_FORMAT_VERSION: {
        **{name: name for name in _COMMON},
        "carrier": "carrier",
        "item_id": "sop_instance_uid",
        "group_id": "study_instance_uid",
        "group_index": "study_index",
        "group_prev_hash": "study_prev_hash",
    },
}


@dataclass(frozen=True)
class Block:
    header: BlockHeader
    public_key: bytes
    signature: bytes

    @property
    def hash(self) -> str:
        return self.header.block_hash

    @classmethod
    def sign(cls, header: BlockHeader, key: NodeKey) -> Block:
        if header.key_id != key.key_id:
            raise SignatureError("header names another key than the one signing it")
        return cls(header, key.public_key, key.sign(SIGNATURE_DOMAIN + header.canonical_bytes()))

    def verify_signature(self, trusted_keys: frozenset[bytes] | None = None) -> None:
        """Raise SignatureError unless signed by the key it names (and, if given, a trusted one)."""
        if key_id_for(self.public_key) != self.header.key_id:
            raise SignatureError("block's public key does not match its key id")
        if trusted_keys is not None and self.public_key not in trusted_keys:
            raise SignatureError(f"block is signed by untrusted key {self.header.key_id}")
        verify_signature(self.public_key, self.signature, SIGNATURE_DOMAIN + self.header.canonical_bytes())

    def to_dict(self) -> dict[str, Any]:
        return {
            "header": self.header.to_dict(),
            "public_key": self.public_key.hex(),
            "signature": self.signature.hex(),
        }

    def to_bytes(self) -> bytes:
        """The canonical serialised block, as embedded and as stored in the ledger."""
        return self._bytes

    @cached_property
    def _bytes(self) -> bytes:  # frozen: serialised once, not for each of its ~5 uses per instance
        return canonjson.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> Block:
        """The block, from its canonical bytes (trailing padding aside) and no other form: a
        variant that decodes alike (a hex digit in upper case) would be a change no check sees."""
        text = data.rstrip(b"\x00 ")
        try:
            obj = canonjson.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedBlockError("canonical block is not UTF-8 JSON") from exc
        if not isinstance(obj, dict) or set(obj) != {"header", "public_key", "signature"}:
            raise MalformedBlockError("canonical block needs exactly header, public_key, signature")
        header = BlockHeader.from_dict(obj["header"])
        try:
            public_key = bytes.fromhex(obj["public_key"])
            signature = bytes.fromhex(obj["signature"])
        except (TypeError, ValueError) as exc:
            raise MalformedBlockError("public key or signature is not hex") from exc
        if len(public_key) != 32 or len(signature) != 64:
            raise MalformedBlockError("Ed25519 keys have 32 bytes and signatures 64")
        block = cls(header, public_key, signature)
        if block.to_bytes() != text:
            raise MalformedBlockError("serialised block is not in canonical form")
        return block
