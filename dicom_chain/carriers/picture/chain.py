"""Picture chains: a sequence of pictures linked by blocks they carry (docs/design.md 11).

Pure: bytes in, bytes and findings out; the command line reads and writes the files. Each block is
a format 2 header (``carrier`` the picture's format, ``item_id`` the picture's name in the chain,
``group_id`` the chain's name or the DICOM study it was rendered from), signed with the node's key,
with a ``picture`` link: the method that holds it, the SHA-256 of the previous picture's whole
file as written (the Imagechain paper's link: change, remove or re-order a picture and the next
one's link breaks), and the pixels' hash by value. ``prev_hash`` links the blocks as in any chain.
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from dicom_chain.block import (
    GENESIS_HASH,
    ITEM_FORMAT_VERSION,
    PICTURE_METHODS,
    Block,
    BlockHeader,
    PictureLink,
    utc_now,
)
from dicom_chain.carriers.picture import LOSSLESS, format_of, reversible, watermark
from dicom_chain.carriers.picture.pixels import pixels_hash
from dicom_chain.carriers.picture.samples import Samples
from dicom_chain.errors import (
    ContentHashError,
    DicomChainError,
    MalformedBlockError,
    MalformedPictureError,
    MethodRefusedError,
    NoBlockError,
    UnknownFormatError,
)
from dicom_chain.findings import Report
from dicom_chain.keys import NodeKey
from dicom_chain.verify import signer_holds
from dicom_chain.vocab import FindingKind, Severity

# Names a picture chain's id from the signer's key and the chain's name: the same name under the
# same key is the same chain on every run (``uuid5``, RFC 9562 5.5).
CHAIN_NAMESPACE = uuid.UUID("5b0b7a0e-3c4d-4e2a-9a57-2f1d9c6b8e41")
ITEM_ID_MAX = 64  # docs/design.md 2.4: what names an item is at most 64 characters
METHODS = PICTURE_METHODS


def chain_id_for(key: NodeKey, name: str) -> str:
    return str(uuid.uuid5(CHAIN_NAMESPACE, f"{key.key_id}/{name}"))


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Tail:
    """Where a chain stands: what the next picture links to (the last block, its file's hash)."""

    block: Block
    file_hash: str

    @classmethod
    def of(cls, data: bytes) -> Tail:
        """The tail a chained picture leaves: its block, checked, and its file's hash."""
        block = read_block(data)
        block.verify_signature()
        return cls(block, file_hash(data))


def read_block(data: bytes) -> Block:
    """The block a picture carries, by whichever method holds it: NoBlockError,
    MalformedBlockError, UnknownFormatError."""
    module = format_of(data)
    found = _found_by(module, data)
    if found is None:
        raise NoBlockError("picture without a DICOM_CHAIN block (in its metadata or its pixels)")
    method, raw = found
    block = Block.from_bytes(raw)
    picture = block.header.picture
    if picture is None or block.header.carrier != module.NAME:
        raise MalformedBlockError(f"not a {module.NAME.upper()} picture's block")
    if picture.method != method:
        raise MalformedBlockError(f"block says method {picture.method}, but was found by {method}")
    return block


def _found_by(module: ModuleType, data: bytes) -> tuple[str, bytes] | None:
    """(method, serialised block): the metadata first, then, in a lossless picture, its pixels."""
    try:
        return "metadata", module.read_block(data)
    except NoBlockError:
        pass
    if module.NAME not in LOSSLESS:
        return None
    for method in (watermark, reversible):
        try:
            return method.NAME, method.read_block(module, data)
        except (NoBlockError, MethodRefusedError):
            continue
    return None


def content_hash(module: ModuleType, data: bytes, method: str) -> str:
    """What the block of a picture chained by ``method`` records as its content hash."""
    if method == "metadata":
        return module.content_hash(data)  # type: ignore[no-any-return]
    if method == watermark.NAME:
        return watermark.content_hash(Samples(module, data))
    _, samples, original = reversible.extract(module, data)
    return reversible.content_hash(samples, original)


def embed(
    pictures: Sequence[tuple[str, bytes]],
    *,
    method: str,
    chain: str,
    key: NodeKey,
    institution: str,
    after: Tail | None = None,
    group: str | None = None,
    sources: Sequence[str] | None = None,
) -> list[tuple[bytes, Block]]:
    """Chain ``pictures`` (name, bytes), in order, after ``after`` (None: a new chain from height 0);
    each comes back as the file to write and its block. ``group``: the group the pictures join
    (default: the chain's name); ``sources``: per picture, the block hash of its DICOM source."""
    if method not in METHODS:
        raise MethodRefusedError(f"method {method!r}: this version writes {', '.join(METHODS)}")
    if after is not None and after.block.header.chain_id != chain_id_for(key, chain):
        raise MalformedBlockError("the picture to continue from is not this chain's (name and key)")
    out: list[tuple[bytes, Block]] = []
    prev_block = after.block if after else None
    prev_file = after.file_hash if after else GENESIS_HASH
    for index, (name, data) in enumerate(pictures):
        module = format_of(data)
        if method == "metadata":
            content = module.content_hash(data)
        elif method == watermark.NAME:
            content = watermark.content_hash(Samples(module, data))
        else:
            content = reversible.content_hash(Samples(module, data))
        height = prev_block.header.height + 1 if prev_block else 0
        prev_hash = prev_block.hash if prev_block else GENESIS_HASH
        header = BlockHeader(
            version=ITEM_FORMAT_VERSION,
            chain_id=chain_id_for(key, chain),
            height=height,
            prev_hash=prev_hash,
            content_hash=content,
            timestamp=utc_now(),
            institution=institution,
            key_id=key.key_id,
            sop_instance_uid=item_id(name, height),
            study_instance_uid=group or chain,
            study_index=height,
            study_prev_hash=prev_hash,
            carrier=module.NAME,
            picture=PictureLink(method, prev_file, pixels_hash(data), sources[index] if sources else ""),
        )
        block = Block.sign(header, key)
        if method == "metadata":
            written = module.with_block(data, block.to_bytes())
        elif method == watermark.NAME:
            written = watermark.embed(module, data, block.to_bytes())
        else:
            written = reversible.embed(module, data, block.to_bytes())
        # The metadata methods' writers only add our chunk, segments or tag to the bytes as given
        # (with_block): their content is the input's by construction, and reading the block back
        # walks the whole structure. The pixel methods re-encode: their content is hashed again.
        faithful = read_block(written) == block and (
            method == "metadata" or content_hash(module, written, method) == content
        )
        if not faithful:
            raise MalformedPictureError(f"{name}: the picture would not carry its block faithfully")
        out.append((written, block))
        prev_block, prev_file = block, file_hash(written)
    return out


def restore(data: bytes) -> tuple[bytes, Block]:
    """The picture with the pixels it had before its block was hidden in them (method
    ``reversible``), and that block: the block's signature and content hash checked on the
    restored samples first (ContentHashError, SignatureError, MethodRefusedError)."""
    module = format_of(data)
    block = read_block(data)
    block.verify_signature()
    assert block.header.picture is not None
    if block.header.picture.method != reversible.NAME:
        raise MethodRefusedError(
            f"chained by {block.header.picture.method}: only reversible pictures restore"
        )
    _, samples, original = reversible.extract(module, data)
    if reversible.content_hash(samples, original) != block.header.content_hash:
        raise ContentHashError("the restored pixels are not those chained (content hash differs)")
    restored = samples.encode(original)
    if Samples(module, restored).digest(reversible.DOMAIN) != block.header.content_hash:
        raise ContentHashError("the restored picture does not decode to the pixels chained")
    return restored, block


def item_id(name: str, height: int) -> str:
    """The picture's id in its chain: its height and name, unique within the chain."""
    return f"{height}-{name}"[:ITEM_ID_MAX]


@dataclass
class _Found:
    where: str
    block: Block
    file_hash: str


def verify(files: Sequence[tuple[str, bytes]], trusted_keys: frozenset[bytes] | None) -> Report:
    """Each picture (its block, signature and content), then the links between those given, per
    chain: heights, block links, and each picture's link to the whole file before it."""
    report = Report(signers_checked=trusted_keys is not None)
    found: list[_Found] = []
    for where, data in files:
        report.files_checked += 1
        hit = _check_picture(where, data, report, trusted_keys)
        if hit is not None:
            found.append(hit)
            report.blocks_checked += 1
    chains: dict[str, list[_Found]] = {}
    for hit in found:
        chains.setdefault(hit.block.header.chain_id, []).append(hit)
    for chain_id, hits in chains.items():
        _check_links(chain_id, hits, report)
    return report


def _check_picture(
    where: str, data: bytes, report: Report, trusted_keys: frozenset[bytes] | None
) -> _Found | None:
    err = Severity.ERROR
    try:
        module = format_of(data)
        block = read_block(data)
    except UnknownFormatError:
        report.add(err, FindingKind.NOT_DICOM, "not a PNG, JPEG or TIFF file", path=where)
        return None
    except NoBlockError:
        report.add(err, FindingKind.NO_BLOCK, "picture without a DICOM_CHAIN block", path=where)
        return None
    except (MalformedBlockError, MalformedPictureError) as exc:
        report.add(err, FindingKind.MALFORMED_BLOCK, str(exc), path=where)
        return None
    h = block.header
    loc: dict[str, Any] = {
        "path": where,
        "sop_instance_uid": h.item_id,
        "height": h.height,
        "chain_id": h.chain_id,
    }
    if not signer_holds(block, trusted_keys, report, loc):
        return None
    assert h.picture is not None  # read_block insists
    try:
        altered = content_hash(module, data, h.picture.method) != h.content_hash
    except DicomChainError as exc:
        report.add(err, FindingKind.ALTERED, f"content cannot be hashed: {exc}", **loc)
        return _Found(where, block, file_hash(data))
    if altered and h.picture.method != "metadata":  # the content hash is of the pixels themselves
        report.add(err, FindingKind.ALTERED, "pixels changed since the picture was chained", **loc)
    elif altered:
        report.add(err, FindingKind.ALTERED, _what_changed(data, h.picture.pixels_hash), **loc)
    return _Found(where, block, file_hash(data))


def _what_changed(data: bytes, chained_pixels: str) -> str:
    """Why a picture's content hash differs, told apart by its pixels' hash."""
    try:
        same_pixels = pixels_hash(data) == chained_pixels
    except DicomChainError:
        return "content changed since it was chained (and its pixels no longer decode)"
    if same_pixels:
        return (
            "file changed since it was chained, its pixels did not: re-encoded, or metadata "
            "outside the block changed (the content hash covers the file's bytes)"
        )
    return "pixels changed since the picture was chained (content hash differs)"


def _check_links(chain_id: str, hits: list[_Found], report: Report) -> None:
    err, note = Severity.ERROR, Severity.INFO
    by_height: dict[int, list[_Found]] = {}
    for hit in hits:
        by_height.setdefault(hit.block.header.height, []).append(hit)
    for height, same in sorted(by_height.items()):
        if len({h.block.hash for h in same}) > 1:
            paths = ", ".join(h.where for h in same)
            report.add(
                err, FindingKind.FORK, f"different blocks at height {height}: {paths}", chain_id=chain_id
            )
        elif len(same) > 1:
            paths = ", ".join(h.where for h in same)
            report.add(note, FindingKind.COPY, f"the same picture given twice: {paths}", chain_id=chain_id)
    heights = sorted(by_height)
    # a chain is one key's (its id is made from that key and its name): another key's block
    # claiming a place in it is an impostor, whatever links it fakes
    signer = by_height[heights[0]][0].block.header.key_id if heights else ""
    for hit in hits:
        if hit.block.header.key_id != signer:
            message = f"signed by key {hit.block.header.key_id}, the chain's first picture by {signer}"
            report.add(err, FindingKind.BROKEN_LINK, message, path=hit.where, chain_id=chain_id)
    if heights and heights[0] > 0:
        report.add(
            note,
            FindingKind.UNCHECKED_LINK,
            f"chain starts at height {heights[0]} here: the pictures before it were not given",
            path=by_height[heights[0]][0].where,
            chain_id=chain_id,
        )
    for low, high in itertools.pairwise(heights):
        if high != low + 1:
            missing = f"{low + 1}" if high == low + 2 else f"{low + 1}-{high - 1}"
            report.add(
                err,
                FindingKind.GAP,
                f"picture(s) at height {missing} missing: removed, or not given",
                path=by_height[high][0].where,
                height=high,
                chain_id=chain_id,
            )
            continue
        before, after = by_height[low][0], by_height[high][0]
        link = after.block.header
        assert link.picture is not None
        loc: dict[str, Any] = {"path": after.where, "height": high, "chain_id": chain_id}
        if link.prev_hash != before.block.hash:
            report.add(err, FindingKind.BROKEN_LINK, f"does not follow the block of {before.where}", **loc)
        elif link.picture.prev_file_hash != before.file_hash:
            report.add(
                err,
                FindingKind.BROKEN_LINK,
                f"the picture before it, {before.where}, is not the file it was chained after "
                "(that file changed, or another took its place)",
                **loc,
            )
