"""Presentation contexts for sending stored instances (forwarding, C-MOVE sub-associations, C-GET).

An instance goes over an association in the syntax it was stored in when the peer accepted that
syntax (its bytes, no decode); else re-encoded between uncompressed syntaxes by pynetdicom; else,
compressed pixels that pydicom's handlers decode, decompressed to native little endian. The block
still verifies after a lossless decompression (pixels are hashed by value, docs/design.md 1.5); a
lossy one is named `lossy-reencoded` by verify, never `altered` (1.6).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext

MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1-255
# What a decompressed instance can go as: pydicom decodes to native little endian, and pynetdicom
# converts between these three (never to big endian: it does not swap bytes).
NATIVE_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
# Lossless syntaxes (docs/design.md 1.5): decompressing these keeps the chained pixel values.
LOSSLESS = frozenset(
    {
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Process 14
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14, SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless Only
        "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless Only, RPCL
        "1.2.840.10008.1.2.5",  # RLE Lossless
    }
)


class Stored(Protocol):
    sop_class_uid: str
    transfer_syntax: str


def contexts_for(items: Iterable[Stored], *, decompressing: bool = False) -> list[PresentationContext]:
    """One context per (SOP class, stored syntax), then one of uncompressed little endian syntaxes
    for every class with uncompressed instances, and ``decompressing`` (C-MOVE) with compressed
    ones pydicom decodes too: a destination that takes only uncompressed data gets them all."""
    wanted: dict[str, set[str]] = {}
    for item in items:
        wanted.setdefault(item.sop_class_uid, set()).add(item.transfer_syntax)
    as_stored, native = [], []
    for sop_class, syntaxes in sorted(wanted.items()):
        as_stored += [build_context(sop_class, [syntax]) for syntax in sorted(syntaxes)]
        if any(_convertible(UID(s)) or (decompressing and decodable(s)) for s in syntaxes):
            native.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    return (as_stored + native)[:MAX_CONTEXTS]  # the stored syntaxes first, should they not all fit


class Sending(StrEnum):
    """How a stored instance goes out on an association."""

    AS_STORED = "as-stored"  # its file's bytes, in the syntax it was stored in
    RE_ENCODED = "re-encoded"  # decoded, then re-encoded by pynetdicom to an accepted syntax
    DECOMPRESSED = "decompressed"  # pixels decoded by pydicom, sent native little endian


def sending(
    accepted: Collection[tuple[str, str]], sop_class: str, syntax: str, *, decompressing: bool = False
) -> Sending | None:
    """How ``(sop_class, syntax)`` can go over a peer's ``accepted`` (SOP class, syntax) pairs; None
    when it cannot. The first two rules are pynetdicom's own (``Association._get_valid_context``):
    the exact syntax, else an uncompressed one of the same byte order (explicit/implicit VR,
    deflated or not). With ``decompressing`` (C-MOVE, C-GET), ours: compressed pixels pydicom
    decodes go decompressed over an accepted native little endian syntax."""
    how = _over(syntax, {s for c, s in accepted if c == sop_class})
    return None if how is Sending.DECOMPRESSED and not decompressing else how


def _over(syntax: str, accepted: Collection[str]) -> Sending | None:
    if syntax in accepted:
        return Sending.AS_STORED
    stored = UID(syntax)
    if _convertible(stored):
        for other in map(UID, accepted):  # pynetdicom never swaps byte order
            if _convertible(other) and other.is_little_endian == stored.is_little_endian:
                return Sending.RE_ENCODED
        return None
    if decodable(syntax) and any(s in NATIVE_LE for s in accepted):
        return Sending.DECOMPRESSED
    return None


def _convertible(syntax: UID) -> bool:
    """Uncompressed (deflate counts as uncompressed): pydicom can re-encode it. A private or
    unknown syntax is not, since nothing says what its bytes are."""
    return syntax.is_transfer_syntax and not syntax.is_compressed


def decodable(syntax: str) -> bool:
    """Compressed pixels that pydicom's handlers (with the pylibjpeg plugins installed) decode."""
    uid = UID(syntax)
    if not uid.is_transfer_syntax or not uid.is_compressed:
        return False
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:  # MPEG, HEVC, ...: no decoder at all
        return False


def decompress(ds: Dataset) -> Dataset:
    """``ds`` with its pixels decoded, as Explicit VR Little Endian, under the same SOP Instance UID.

    No colour conversion of our own (the canonical pixel bytes are the codec's output, 1.5), so a
    lossless instance still verifies. A lossy one is marked so (Lossy Image Compression 01, PS3.3
    C.7.6.1.1.5) if its file did not say it: verify then names it `lossy-reencoded`, not altered.
    """
    syntax = str(ds.file_meta.TransferSyntaxUID)
    ds.decompress(as_rgb=False, generate_instance_uid=False)
    if syntax not in LOSSLESS and "LossyImageCompression" not in ds:
        ds.LossyImageCompression = "01"
    return ds


def preferred_syntax(offered: Sequence[str], held: Collection[str]) -> str | None:
    """The syntax to accept for a storage context a C-GET peer proposed with ``offered`` (its order
    of preference), when this node holds instances of its SOP class in ``held``.

    The peer's first syntax over which every held instance can go: the stored syntax when all of
    them are in it, else a native one (decompressing what must be). Failing that, the peer's first
    held syntax (what is stored in it goes; the rest fails, each with its reason). None: no
    preference (pynetdicom's own choice stands)."""
    held = set(held) or {ExplicitVRLittleEndian}  # nothing held yet: what anything can go as
    for syntax in offered:
        if all(_over(h, {syntax}) is not None for h in held):
            return syntax
    return next((s for s in offered if s in held), None)


def prefer_stored(
    supported: Sequence[PresentationContext],
    offered: Mapping[str, Sequence[str]],
    held: Mapping[str, Collection[str]],
) -> list[PresentationContext]:
    """``supported`` with, for each SOP class in ``offered`` (a C-GET peer's storage classes and
    the syntaxes it proposed for each), ``preferred_syntax`` moved first. pynetdicom accepts the
    first of the acceptor's syntaxes the requestor proposed, so this order is the choice."""
    result = []
    for cx in supported:
        sop_class = str(cx.abstract_syntax)
        choice = (
            preferred_syntax(offered[sop_class], held.get(sop_class, ())) if sop_class in offered else None
        )
        if choice is not None and choice in cx.transfer_syntax:
            ordered = [choice, *(s for s in cx.transfer_syntax if s != choice)]
            chosen = build_context(cx.abstract_syntax, ordered)
            chosen.scu_role, chosen.scp_role = cx.scu_role, cx.scp_role
            cx = chosen
        result.append(cx)
    return result
