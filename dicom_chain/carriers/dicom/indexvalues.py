"""What the Query/Retrieve index keeps of a DICOM instance, read from its dataset.

The attributes are those ``db/indexschema.py`` declares; this module only knows how to read each
from a pydicom Dataset (character sets, raw values). The index folds them into its rows
(``qr/index.py`` ``IndexRecord.from_values``), so the carriers never import the index.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_chain.carriers.dicom import rawvalues
from dicom_chain.db.indexschema import ATTRIBUTES

_CHARSET_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})  # decoded per Specific Character Set
_PN_DELIMITERS = {0x5C, 0x3D, 0x5E}  # \ = ^: each component group / component decodes on its own
_TEXT_DELIMITERS = {0x5C}


@lru_cache(maxsize=64)
def _tag(keyword: str) -> int:
    return int(tag_for_keyword(keyword) or 0)


def _text(ds: Dataset, keyword: str, limit: int, encodings: list[str]) -> str:
    """An attribute as text, cut to its column; what does not decode indexes as empty.

    Raw values are decoded here, without pydicom's conversion (which validates every value, and
    cost a millisecond per instance for the two dozen attributes the index keeps)."""
    tag = _tag(keyword)
    try:
        elem = ds._dict.get(tag)  # get_item's element, without its Tag() and call (~1 us each)
        if isinstance(elem, RawDataElement) and elem.value is None:
            elem = ds.get_item(tag)  # left unread: get_item reads it in
        if elem is None:
            return ""
        value = elem.value
        if isinstance(value, bytes):
            vr = elem.VR or dictionary_VR(tag)
            if vr in _CHARSET_VRS:
                delimiters = _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS
                value = decode_bytes(value, encodings, delimiters)
            else:
                value = value.decode("latin-1", "replace")
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, list | MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")[:limit]


def _encodings(ds: Dataset) -> list[str]:
    try:
        return list(convert_encodings(ds.get("SpecificCharacterSet") or "ISO_IR 6"))
    except Exception:
        return ["iso8859"]


def _int(ds: Dataset, keyword: str) -> int | None:
    plain = rawvalues.us(ds, _tag(keyword))  # Rows, Columns: read raw, as pydicom converts them
    if plain is not None:
        return plain
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:
        return None


_READ = tuple(a for a in ATTRIBUTES if a.column is not None and not a.from_block)


def index_values(ds: Dataset) -> dict[str, Any]:
    """Keyword -> text (cut to what the index reads) or integer, for every attribute the index
    stores; what does not decode is empty, never an error."""
    charset = _encodings(ds)
    return {
        a.keyword: _int(ds, a.keyword) if a.integer else _text(ds, a.keyword, a.chars, charset) for a in _READ
    }
