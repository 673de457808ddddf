"""DICOM audit messages (PS3.15 A.5, the IHE ATNA schema), one AuditMessage per event.

A file export is an ``AuditMessages`` element holding one standard ``AuditMessage`` per line (the
same element the syslog feed sends on its own). The ledger record rides along as a
ParticipantObjectDetail of a "Security Resource" participant object, and ``read`` checks that the
message says exactly what its record says.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from lxml import etree

from ..errors import AuditExportError
from . import codes, record
from .context import ExportContext
from .participants import participants

NAME = "atna"
DECODE_DETAILS = True  # rendering reads the details (destination, query keys)
SUFFIX = ".atna.xml"
CONTAINER = "AuditMessages"
RECORD_DETAIL = "dicom-chain-event"


@lru_cache(maxsize=64)
def _code_attributes(code: codes.Code) -> dict[str, str]:
    return {"csd-code": code.code, "codeSystemName": code.scheme, "originalText": code.meaning}


def _coded(parent: etree._Element, tag: str, code: codes.Code) -> None:
    etree.SubElement(parent, tag, _code_attributes(code))


@lru_cache(maxsize=1024)
def _access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(address)
        return "2"
    except ValueError:
        return "1"


def _object(
    parent: etree._Element, object_id: str, type_code: str, role: str, id_type: codes.Code
) -> etree._Element:
    obj = etree.SubElement(
        parent,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": object_id,
            "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role,
        },
    )
    _coded(obj, "ParticipantObjectIDTypeCode", id_type)
    return obj


def render(rec: dict[str, Any], context: ExportContext) -> etree._Element:
    kind = codes.kind_of(rec["type"])
    institution = context.institutions.get(rec["key_id"], "")
    msg = etree.Element("AuditMessage")
    ident = etree.SubElement(
        msg,
        "EventIdentification",
        {
            "EventActionCode": kind.action,
            "EventDateTime": rec["time"],
            "EventOutcomeIndicator": codes.OUTCOME_CODES.get(rec["outcome"], "8"),
        },
    )
    _coded(ident, "EventID", kind.event_id)
    if kind.subtype is not None:
        _coded(ident, "EventTypeCode", kind.subtype)
    if rec["reason"]:
        etree.SubElement(ident, "EventOutcomeDescription").text = rec["reason"]
    for p in participants(rec, institution):
        attrs = {"UserID": p.user_id or "-", "UserIsRequestor": "true" if p.requestor else "false"}
        if p.name:
            attrs["UserName"] = p.name
        if p.address:
            attrs["NetworkAccessPointID"] = p.address
            attrs["NetworkAccessPointTypeCode"] = _access_point_type(p.address)
        active = etree.SubElement(msg, "ActiveParticipant", attrs)
        if p.role is not None:
            _coded(active, "RoleIDCode", p.role)
    source = {"AuditSourceID": context.source_id}
    if institution:
        source["AuditEnterpriseSiteID"] = institution
    etree.SubElement(msg, "AuditSourceIdentification", source)
    if rec["patient_id"]:
        _object(msg, rec["patient_id"], "1", "1", codes.ID_PATIENT)
    if rec["study_uid"]:
        _object(msg, rec["study_uid"], "2", "3", codes.ID_STUDY)
    if rec["type"] == "query.find" and isinstance(rec["details"], dict):
        query = _object(msg, str(rec["details"].get("model", "")), "2", "24", codes.ID_SOP)
        keys = json.dumps(rec["details"].get("keys", {}), sort_keys=True, ensure_ascii=False).encode()
        etree.SubElement(query, "ParticipantObjectQuery").text = base64.b64encode(keys).decode("ascii")
    carrier = _object(msg, rec["hash"], "2", "13", codes.ID_EVENT)
    etree.SubElement(
        carrier,
        "ParticipantObjectDetail",
        {
            "type": RECORD_DETAIL,
            "value": base64.b64encode(record.dumps(rec).encode()).decode("ascii"),
        },
    )
    return msg


def to_bytes(msg: etree._Element) -> bytes:
    return etree.tostring(msg, encoding="UTF-8", xml_declaration=False)


class Writer:
    """Streams messages inside one container element (lxml's incremental writer)."""

    def __init__(self, fp: BinaryIO, context: ExportContext) -> None:
        self.context = context
        self._xf = etree.xmlfile(fp, encoding="UTF-8")
        self._doc = self._xf.__enter__()
        self._doc.write_declaration()
        self._root = self._doc.element(CONTAINER)
        self._root.__enter__()
        self._doc.write("\n")

    def write(self, rec: dict[str, Any]) -> None:
        self._doc.write(render(rec, self.context))
        self._doc.write("\n")

    def close(self) -> None:
        self._root.__exit__(None, None, None)
        self._xf.__exit__(None, None, None)


def _context_of(msg: etree._Element, rec: dict[str, Any]) -> ExportContext:
    source = msg.find("AuditSourceIdentification")
    site = source.get("AuditEnterpriseSiteID", "") if source is not None else ""
    source_id = source.get("AuditSourceID", "") if source is not None else ""
    return ExportContext(
        exported_at="", source_id=source_id, institutions={rec["key_id"]: site} if site else {}
    )


def record_of(msg: etree._Element) -> dict[str, Any]:
    for detail in msg.iter("ParticipantObjectDetail"):
        if detail.get("type") == RECORD_DETAIL:
            return json.loads(base64.b64decode(detail.get("value", "")))
    raise AuditExportError("AuditMessage carries no dicom-chain-event record")


def messages(path: Path) -> Iterator[etree._Element]:
    """Each AuditMessage of a file export, parsed one at a time (memory stays flat)."""
    try:
        for _, elem in etree.iterparse(str(path), events=("end",), tag="AuditMessage"):
            yield elem
            elem.clear()
            while elem.getprevious() is not None:
                del elem.getparent()[0]
    except etree.XMLSyntaxError as exc:
        raise AuditExportError(f"{path}: not well-formed XML ({exc})") from exc


def read(path: Path) -> Iterator[dict[str, Any]]:
    for msg in messages(path):
        try:
            rec = record_of(msg)
        except (ValueError, TypeError) as exc:
            raise AuditExportError(f"{path}: an AuditMessage's record does not decode ({exc})") from exc
        expected = render(rec, _context_of(msg, rec))
        if etree.tostring(expected, method="c14n") != etree.tostring(msg, method="c14n"):
            raise AuditExportError(f"{path}: AuditMessage of event {rec.get('seq')} differs from its record")
        yield rec
