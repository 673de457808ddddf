"""Presentation contexts for sending stored instances (forwarding, C-MOVE sub-associations)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from enum import StrEnum
from typing import Protocol

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext

MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers 1-255


class Stored(Protocol):
    sop_class_uid: str
    transfer_syntax: str


def contexts_for(items: Iterable[Stored]) -> list[PresentationContext]:
    """One context per (SOP class, stored syntax); uncompressed instances may also go re-encoded."""
    wanted: dict[str, set[str]] = {}
    for item in items:
        wanted.setdefault(item.sop_class_uid, set()).add(item.transfer_syntax)
    contexts = []
    for sop_class, syntaxes in sorted(wanted.items()):
        for syntax in sorted(syntaxes):
            contexts.append(build_context(sop_class, [syntax]))
        if any(not UID(s).is_compressed for s in syntaxes):
            contexts.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    return contexts[:MAX_CONTEXTS]


class Sending(StrEnum):
    """How a stored instance goes out on an association."""

    AS_STORED = "as-stored"  # its file's bytes, in the syntax it was stored in
    RE_ENCODED = "re-encoded"  # decoded, then re-encoded by pynetdicom to an accepted syntax


def sending(accepted: Collection[tuple[str, str]], sop_class: str, syntax: str) -> Sending | None:
    """How ``(sop_class, syntax)`` can go over a peer's ``accepted`` (SOP class, syntax) pairs; None
    when it cannot. The rule is pynetdicom's own (``Association._get_valid_context``): the exact
    syntax, else an uncompressed one of the same byte order (explicit/implicit VR, deflated or
    not); compressed pixels are never converted."""
    if (sop_class, syntax) in accepted:
        return Sending.AS_STORED
    stored = UID(syntax)
    if not _convertible(stored):
        return None
    for accepted_class, accepted_syntax in accepted:
        other = UID(accepted_syntax)
        if accepted_class != sop_class or not _convertible(other):
            continue
        if other.is_little_endian == stored.is_little_endian:  # pynetdicom never swaps byte order
            return Sending.RE_ENCODED
    return None


def _convertible(syntax: UID) -> bool:
    """Uncompressed (deflate counts as uncompressed): pydicom can re-encode it. A private or
    unknown syntax is not, since nothing says what its bytes are."""
    return syntax.is_transfer_syntax and not syntax.is_compressed
