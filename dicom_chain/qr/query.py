"""C-FIND and retrieve identifiers, pure: what a query asks for and what each answer says.

An identifier is parsed into a ``Query`` (information model, level, matching keys, the elements
to return) following PS3.4 C.4.1: unique keys of every level above the query level must be
present with a single value. The index (``index.py``) turns a ``Query`` into SQL; ``response``
turns one matched entity back into an identifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from dicom_chain.block import iso_to_dt
from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP, ELEMENTS, PRIVATE_CREATOR, QUERY_ELEMENTS
from dicom_chain.db.indexschema import ATTRIBUTES as INDEX_ATTRIBUTES
from dicom_chain.db.indexschema import LEVELS, PRIVATE_ANSWERS, IndexAttribute, Level
from dicom_chain.errors import IdentifierError, MalformedDatasetError
from dicom_chain.qr.matching import KeyMatch, parse_key

Model = Literal["PATIENT", "STUDY"]  # Patient Root, Study Root
MODEL_LEVELS: dict[Model, tuple[Level, ...]] = {"PATIENT": LEVELS, "STUDY": LEVELS[1:]}
UNIQUE_KEYS: dict[Level, str] = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
# The DICOM attributes a query may name (our private answers are keyed by tag, not keyword).
ATTRIBUTES: dict[str, IndexAttribute] = {a.keyword: a for a in INDEX_ATTRIBUTES if a.private_offset is None}
_PRIVATE_VR = {offset: (ELEMENTS | QUERY_ELEMENTS)[offset][0] for offset in PRIVATE_ANSWERS}
_NOT_RETURNED = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}


def level_of(keyword: str, model: Model) -> Level:
    """Patient attributes belong to the STUDY level in the Study Root model (PS3.4 C.6.2)."""
    level = ATTRIBUTES[keyword].level
    return "STUDY" if model == "STUDY" and level == "PATIENT" else level


@dataclass(frozen=True)
class Query:
    model: Model
    level: Level
    keys: dict[str, KeyMatch]  # non-universal matching keys, by keyword
    requested: tuple[DataElement, ...]  # the identifier's elements, answered in this order
    unsupported: tuple[str, ...] = ()  # keys sent with a value that we cannot match on (-> FF01)
    private_slot: int | None = None  # the slot the identifier gave our private creator, if any

    @property
    def depth(self) -> int:
        return LEVELS.index(self.level)

    def describe(self) -> dict[str, str]:
        """The keys asked, for the ledger: keyword (or tag) -> value as sent."""
        out = {}
        for elem in self.requested:
            name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
            if elem.VR != "SQ" and name not in ("QueryRetrieveLevel",):
                out[name] = _text(elem.value)
        return out


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)  # type: ignore[union-attr]
    return str(value)


UNDEFINED_LENGTH = 0xFFFFFFFF


def _elements(identifier: Dataset) -> list[DataElement]:
    """The identifier's elements in tag order; MalformedDatasetError for any that is cut short."""
    try:
        out = []
        for tag in sorted(identifier.keys()):
            raw = identifier.get_item(tag)
            length = getattr(raw, "length", UNDEFINED_LENGTH)
            value = getattr(raw, "value", None)
            if length != UNDEFINED_LENGTH and isinstance(value, bytes) and len(value) != length:
                cut = f"{len(value)} of {length} bytes"
                raise MalformedDatasetError(f"element {Tag(tag)} is cut short ({cut})")
            out.append(identifier[tag])
        return out
    except MalformedDatasetError:
        raise
    except Exception as exc:  # pydicom decodes raw elements lazily: garbage surfaces here
        raise MalformedDatasetError(f"identifier does not decode: {exc}") from exc


def parse_query(identifier: Dataset, model: Model, *, retrieve: bool = False) -> Query:
    """Read an identifier under ``model``; IdentifierError for what PS3.4 C.4.1 does not allow.

    ``retrieve``: a C-MOVE/C-GET identifier, where only unique keys count (PS3.4 C.4.2.2.1).
    """
    elements = _elements(identifier)
    by_keyword = {e.keyword: e for e in elements if e.keyword}
    level_elem = by_keyword.get("QueryRetrieveLevel")
    level = _text(level_elem.value).strip().upper() if level_elem is not None else ""
    levels = MODEL_LEVELS[model]
    if level not in levels:
        root = "Patient Root" if model == "PATIENT" else "Study Root"
        raise IdentifierError(f"QueryRetrieveLevel {level or '(missing)'!r} is not a level of {root}")
    depth = levels.index(level)  # type: ignore[arg-type]
    for above in levels[:depth]:
        unique = UNIQUE_KEYS[above]
        elem = by_keyword.get(unique)
        value = _text(elem.value).strip() if elem is not None else ""
        if not value or "\\" in value or "*" in value or "?" in value:
            raise IdentifierError(f"{level} level needs a single {unique} (PS3.4 C.4.1.2.1)")
    if retrieve:
        unique = UNIQUE_KEYS[level]  # type: ignore[index]
        elem = by_keyword.get(unique)
        value = _text(elem.value).strip() if elem is not None else ""
        if not value or "*" in value or "?" in value:
            raise IdentifierError(f"a {level} retrieve needs {unique}: one value or a list (PS3.4 C.4.2.2.1)")
    keys: dict[str, KeyMatch] = {}
    unsupported: list[str] = []
    private_slot = None
    for elem in elements:
        tag = elem.tag
        if tag.group == CHAIN_GROUP and tag.element <= 0xFF and _text(elem.value).strip() == PRIVATE_CREATOR:
            private_slot = tag.element
            continue
        keyword = elem.keyword
        attr = ATTRIBUTES.get(keyword)
        if attr is None or LEVELS.index(level_of(keyword, model)) > LEVELS.index(level):  # type: ignore[arg-type]
            has_value = bool(elem.value) if elem.VR == "SQ" else bool(_text(elem.value).strip("* "))
            if has_value and keyword not in _NOT_RETURNED and tag.group != CHAIN_GROUP:
                unsupported.append(keyword or str(tag))
            continue
        if retrieve and keyword != UNIQUE_KEYS.get(level_of(keyword, model)):
            continue
        vr = elem.VR if elem.VR not in ("UN", None) else dictionary_VR(tag)
        match = parse_key(vr, _text(elem.value))
        if match.universal:
            continue
        if not attr.matchable:
            unsupported.append(keyword)
            continue
        keys[keyword] = match
    return Query(
        model=model,
        level=level,  # type: ignore[arg-type]
        keys=keys,
        requested=tuple(elements),
        unsupported=tuple(unsupported),
        private_slot=private_slot,
    )


def response(query: Query, values: Mapping[str, object], retrieve_ae_title: str) -> Dataset:
    """One C-FIND answer: every requested element, filled where the index knows it, else empty."""
    ds = Dataset()
    non_ascii = False
    for elem in query.requested:
        tag = elem.tag
        keyword = elem.keyword
        if tag.group == CHAIN_GROUP:
            continue  # our private block is written below, in one piece
        if keyword == "SpecificCharacterSet":
            continue
        if keyword == "QueryRetrieveLevel":
            ds.QueryRetrieveLevel = query.level
            continue
        if keyword == "RetrieveAETitle":
            continue
        if keyword == "InstanceAvailability":
            ds.InstanceAvailability = "ONLINE"
            continue
        attr = ATTRIBUTES.get(keyword)
        value = None
        if attr is not None and LEVELS.index(level_of(keyword, query.model)) <= query.depth:
            value = values.get(keyword)
        if elem.VR == "SQ":
            ds.add(DataElement(tag, "SQ", Sequence()))
            continue
        vr = (
            elem.VR if elem.VR not in ("UN", None) else (dictionary_VR(tag) if keyword_for_tag(tag) else "UN")
        )
        if value in (None, "") or (isinstance(value, list) and not value):
            ds.add(DataElement(tag, vr, None))
            continue
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        ds.add(DataElement(tag, vr, value))
    if "QueryRetrieveLevel" not in ds:
        ds.QueryRetrieveLevel = query.level
    ds.RetrieveAETitle = retrieve_ae_title
    if query.level == "IMAGE":
        slot = query.private_slot or 0x10
        ds.add(DataElement(Tag(CHAIN_GROUP, slot), "LO", PRIVATE_CREATOR))
        for offset, attribute in PRIVATE_ANSWERS.items():
            keyword = attribute.keyword
            value = values.get(keyword)
            if keyword == "ChainVerificationState" and isinstance(value, str):
                value = value.upper()  # CS: upper case
            elif keyword == "ChainVerifiedAt" and isinstance(value, str) and "T" in value:
                value = iso_to_dt(value)
            ds.add(DataElement(Tag(CHAIN_GROUP, (slot << 8) | offset), _PRIVATE_VR[offset], value))
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


VERSIONS_OFFSET, SENDERS_OFFSET = 0x22, 0x23  # privatetags.QUERY_ELEMENTS
LO_MAX = 64  # PS3.5 6.2: an LO value has at most 64 characters


def add_versions(ds: Dataset, query: Query, senders: list[str], count: int) -> Dataset:
    """An IMAGE answer's version count and, when several, the sender of each, oldest first."""
    slot = query.private_slot or 0x10
    ds.add(DataElement(Tag(CHAIN_GROUP, (slot << 8) | VERSIONS_OFFSET), "UL", count))
    values = [(s or "UNKNOWN").replace("\\", "/")[:LO_MAX] for s in senders]
    ds.add(DataElement(Tag(CHAIN_GROUP, (slot << 8) | SENDERS_OFFSET), "LO", values or None))
    return ds
