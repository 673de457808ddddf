"""An exported event: the ledger row as a flat record every format carries in full.

Whatever the format shows people, each exported event also carries this record, from which
``audit verify`` recomputes the event's hash and checks its signature and links offline. Its
fields, their order and the order of a row of ``events`` are events.EVENT_FIELDS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dicom_chain import canonjson
from dicom_chain.events import FIELD_NAMES, Event

FIELDS = FIELD_NAMES


def _unpacker(names: tuple[str, ...]) -> Callable[[Any], dict[str, Any]]:
    """``row -> {name: value}`` for rows whose columns are ``names``, written out as a tuple
    unpacking into a dict display: a third faster than ``dict(zip(names, row))``, and it runs a
    million times per export. Generated from the names, as dataclasses generate ``__init__``."""
    slots = [f"_{i}" for i in range(len(names))]
    pairs = ", ".join(f"{name!r}: {slot}" for name, slot in zip(names, slots, strict=True))
    source = f"def unpack(row):\n    {', '.join(slots)}, = row\n    return {{{pairs}}}\n"
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    return namespace["unpack"]


_unpack = _unpacker(FIELDS)


def from_row(row: Any, *, decode_details: bool = True) -> dict[str, Any]:
    """A row of ``events`` (columns in FIELDS order) as a record, unpacked by position; details
    decoded from their canonical JSON, or kept as that text (``details_json``)."""
    record = _unpack(row)
    if decode_details:
        record["details"] = canonjson.loads(record["details"])
    return record


def to_event(record: dict[str, Any]) -> Event:
    return Event.from_stored(record)


def dumps(record: dict[str, Any]) -> str:
    """One record as one line of JSON, details last in their canonical form. Details may still be
    the row's canonical text (spliced in, not decoded and encoded again) or already decoded: both
    give the same bytes, which is what lets a reader re-render a message and compare."""
    details = record["details"]
    text = details if isinstance(details, str) else canonjson.dumps(details).decode("utf-8")
    head = _ENCODER.encode({k: v for k, v in record.items() if k != "details"})
    return f'{head[:-1]},"details":{text}}}'


def details_of(record: dict[str, Any]) -> dict[str, Any]:
    details = record["details"]
    return canonjson.loads(details) if isinstance(details, str) else details


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
