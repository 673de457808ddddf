"""Which carrier reads a file: each registered carrier is asked, in order, about its first bytes.

DICOM is registered here; another format registers its carrier once (``register``) and every
reader of files (``verify``, ``Node.ingest_file``) handles it without a branch of its own.
"""

from __future__ import annotations

from pathlib import Path

from dicom_chain.carriers.base import Carried, Carrier
from dicom_chain.carriers.dicom.carrier import DICOM
from dicom_chain.errors import NotDicomError, UnknownFormatError

_CARRIERS: list[Carrier] = [DICOM]


def register(carrier: Carrier) -> None:
    """Add a carrier (once); it is asked after those registered before it."""
    if carrier not in _CARRIERS:
        _CARRIERS.append(carrier)


def unregister(carrier: Carrier) -> None:
    if carrier in _CARRIERS:
        _CARRIERS.remove(carrier)


def carriers() -> tuple[Carrier, ...]:
    return tuple(_CARRIERS)


def _head(source: bytes | Path) -> bytes:
    if isinstance(source, bytes):
        return source
    length = max(c.magic_length for c in _CARRIERS)
    with open(source, "rb") as fp:
        return fp.read(length)


def carrier_for(source: bytes | Path) -> Carrier:
    """The carrier whose magic bytes ``source`` (a file's bytes or its path) starts with;
    UnknownFormatError when none does. A path is read only as far as the magic needs."""
    head = _head(source)
    for carrier in _CARRIERS:
        if carrier.recognises(head[: carrier.magic_length]):
            return carrier
    raise UnknownFormatError(f"not a file any carrier reads ({', '.join(c.name for c in _CARRIERS)})")


def open_bytes(data: bytes) -> Carried:
    return carrier_for(data).open(data)


def open_file(path: Path) -> Carried:
    """A file parsed by its carrier: NotDicomError naming the path when no carrier can; OSError
    (other than a folder given as a file) passes through, since unreadable is not malformed."""
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError as exc:
        raise NotDicomError(f"{path}: is a directory") from exc
    try:
        return open_bytes(data)
    except NotDicomError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
