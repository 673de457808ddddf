"""Imagechain for ordinary picture files (PNG, JPEG, TIFF): siblings of the DICOM carrier, with
the same block (format 2, docs/design.md 2.4 and 11). One module per format says where the block
goes and what the content hash covers; ``chain`` links a sequence of pictures and checks one."""

from __future__ import annotations

from types import ModuleType

from dicom_chain.carriers.picture import jpeg, png, tiff
from dicom_chain.errors import UnknownFormatError

FORMATS: tuple[ModuleType, ...] = (png, jpeg, tiff)
LOSSLESS = frozenset({png.NAME, tiff.NAME})  # what the pixel methods may write into


def format_of(data: bytes) -> ModuleType:
    """The format module for a file's bytes; UnknownFormatError when none recognises them."""
    for module in FORMATS:
        if module.recognises(data[:8]):
            return module
    raise UnknownFormatError("not a PNG, JPEG or TIFF file")


__all__ = ["FORMATS", "LOSSLESS", "format_of", "jpeg", "png", "tiff"]
