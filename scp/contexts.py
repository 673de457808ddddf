"""Presentation contexts for sending stored instances (forwarding, C-MOVE sub-associations)."""

from __future__ import annotations

from collections.abc import Iterable
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
