"""DICOM audit messages (PS3.15 A.5, the IHE ATNA schema), one AuditMessage per event.

A file export is an ``AuditMessages`` element holding one standard ``AuditMessage`` per line (the
same element the syslog feed sends on its own). The ledger record rides along as a
ParticipantObjectDetail of a "Security Resource" participant object, and ``read`` checks that the
message says exactly what its record says.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from lxml import etree

from dicom_chain.audit import codes, record
from dicom_chain.audit.context import ExportContext
from dicom_chain.audit.participants import participants
from dicom_chain.audit.transfers import Transfer
from dicom_chain.errors import AuditExportError
from dicom_chain.vocab import EventType

NAME = "atna"
DECODE_DETAILS = False  # rendering decodes them itself; the embedded record splices their text
SUFFIX = ".atna.xml"
CONTAINER = "AuditMessages"
RECORD_DETAIL = "dicom-chain-event"


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SLOT = "\ue000"  # a private-use character: marks where a template takes a value
TEMPLATES_MAX = 512  # message shapes kept (event kind x participants x objects): a few dozen in use


def _xml(text: str) -> str:
    """XML 1.0 cannot carry some characters at all (C0 controls, lone surrogates): U+FFFD instead.
    The record, in base64, keeps the original."""
    return _NOT_XML.sub("\ufffd", text)


@lru_cache(maxsize=64)
def _code_attributes(code: codes.Code) -> dict[str, str]:
    return {"csd-code": code.code, "codeSystemName": code.scheme, "originalText": code.meaning}


@lru_cache(maxsize=1024)
def _access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(address)
        return "2"
    except ValueError:
        return "1"


def _fields(rec: dict[str, Any], context: ExportContext) -> tuple[tuple, dict[str, str]]:
    """The message's shape (which elements exist) and the value of every variable part."""
    kind = codes.kind_of(rec["type"])
    institution = context.institutions.get(rec["key_id"], "")
    values = {
        "time": rec["time"],
        "outcome": codes.OUTCOME_CODES.get(rec["outcome"], "8"),
        "source": _xml(context.source_id),
        "hash": rec["hash"],
        "payload": base64.b64encode(record.dumps(rec).encode()).decode("ascii"),
    }
    if rec["reason"]:
        values["reason"] = _xml(rec["reason"])
    people = []
    for i, p in enumerate(participants(rec, institution)):
        values[f"p{i}.user"] = _xml(p.user_id) or "-"
        if p.name:
            values[f"p{i}.name"] = _xml(p.name)
        if p.address:
            values[f"p{i}.address"] = _xml(p.address)
            values[f"p{i}.type"] = _access_point_type(p.address)
        people.append((p.requestor, bool(p.name), bool(p.address), p.role))
    if institution:
        values["site"] = _xml(institution)
    if rec["patient_id"]:
        values["patient"] = _xml(rec["patient_id"])
    if rec["study_uid"]:
        values["study"] = _xml(rec["study_uid"])
    query = rec["type"] == EventType.QUERY_FIND
    if query:
        details = record.details_of(rec)
        values["model"] = _xml(str(details.get("model", ""))) or "-"
        keys = json.dumps(details.get("keys", {}), sort_keys=True, ensure_ascii=False).encode()
        values["query"] = base64.b64encode(keys).decode("ascii")
    shape = (
        kind,
        bool(rec["reason"]),
        tuple(people),
        bool(institution),
        bool(rec["patient_id"]),
        bool(rec["study_uid"]),
        query,
    )
    return shape, values


def _build(shape: tuple, v: dict[str, str]) -> etree._Element:
    """The message for ``shape`` with the values ``v`` (real ones, or slot markers for a template)."""
    kind, has_reason, people, has_site, has_patient, has_study, query = shape
    msg = etree.Element("AuditMessage")
    ident = etree.SubElement(
        msg,
        "EventIdentification",
        {
            "EventActionCode": kind.action,
            "EventDateTime": v["time"],
            "EventOutcomeIndicator": v["outcome"],
        },
    )
    etree.SubElement(ident, "EventID", _code_attributes(kind.event_id))
    if kind.subtype is not None:
        etree.SubElement(ident, "EventTypeCode", _code_attributes(kind.subtype))
    if has_reason:
        etree.SubElement(ident, "EventOutcomeDescription").text = v["reason"]
    for i, (requestor, has_name, has_address, role) in enumerate(people):
        attrs = {"UserID": v[f"p{i}.user"], "UserIsRequestor": "true" if requestor else "false"}
        if has_name:
            attrs["UserName"] = v[f"p{i}.name"]
        if has_address:
            attrs["NetworkAccessPointID"] = v[f"p{i}.address"]
            attrs["NetworkAccessPointTypeCode"] = v[f"p{i}.type"]
        active = etree.SubElement(msg, "ActiveParticipant", attrs)
        if role is not None:
            etree.SubElement(active, "RoleIDCode", _code_attributes(role))
    source = {"AuditSourceID": v["source"]}
    if has_site:
        source["AuditEnterpriseSiteID"] = v["site"]
    etree.SubElement(msg, "AuditSourceIdentification", source)
    if has_patient:
        _object(msg, v["patient"], "1", "1", codes.ID_PATIENT)
    if has_study:
        _object(msg, v["study"], "2", "3", codes.ID_STUDY)
    if query:
        etree.SubElement(
            _object(msg, v["model"], "2", "24", codes.ID_SOP), "ParticipantObjectQuery"
        ).text = v["query"]
    carrier = _object(msg, v["hash"], "2", "13", codes.ID_EVENT)
    etree.SubElement(carrier, "ParticipantObjectDetail", {"type": RECORD_DETAIL, "value": v["payload"]})
    return msg


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
    etree.SubElement(obj, "ParticipantObjectIDTypeCode", _code_attributes(id_type))
    return obj


class _Template:
    """A message built once per shape with slot markers; each event is a copy with its values set:
    lxml copies a tree in C several times faster than Python builds one element by element."""

    def __init__(self, shape: tuple, names: list[str]) -> None:
        self.element = _build(shape, {name: _SLOT + name for name in names})
        self.slots: list[tuple[tuple[int, ...], str | None, str]] = []
        self._find(self.element, ())

    def _find(self, elem: etree._Element, path: tuple[int, ...]) -> None:
        for attr, value in elem.attrib.items():
            if value.startswith(_SLOT):
                self.slots.append((path, attr, value[1:]))
        if elem.text and elem.text.startswith(_SLOT):
            self.slots.append((path, None, elem.text[1:]))
        for i, child in enumerate(elem):
            self._find(child, (*path, i))

    def fill(self, values: dict[str, str]) -> etree._Element:
        msg = copy.deepcopy(self.element)
        for path, attr, name in self.slots:
            node = msg
            for i in path:
                node = node[i]
            if attr is None:
                node.text = values[name]
            else:
                node.set(attr, values[name])
        return msg


_templates: dict[tuple, _Template] = {}


def render(rec: dict[str, Any], context: ExportContext) -> etree._Element:
    shape, values = _fields(rec, context)
    template = _templates.get(shape)
    if template is None:
        if len(_templates) >= TEMPLATES_MAX:
            _templates.clear()
        template = _templates[shape] = _Template(shape, list(values))
    return template.fill(values)


def render_direct(rec: dict[str, Any], context: ExportContext) -> etree._Element:
    """The same message built element by element: the reference the templates are tested against."""
    return _build(*_fields(rec, context))


EVENTS_DETAIL = "dicom-chain-events"  # a transfer's events: first and last seq, count, SHA-256


def render_transfer(transfer: Transfer, context: ExportContext) -> etree._Element:
    """One "DICOM Instances Transferred" message for a study's receipts from one association (IHE
    ITI TF-2 3.20.6): the first receipt's participants and patient, the study with a SOPClass
    element per class and its NumberOfInstances (PS3.15 A.5.1), and instead of one event's record
    the events it stands for (``Transfer.summary``), so an auditor can match it with an export."""
    msg = render(transfer.first, context)
    msg.find("EventIdentification").set("EventDateTime", transfer.last_time)
    for obj in msg.iter("ParticipantObjectIdentification"):
        id_type = obj.find("ParticipantObjectIDTypeCode").get("csd-code")
        if id_type == codes.ID_STUDY.code:
            etree.SubElement(obj, "ParticipantObjectDescription").text = f"{transfer.count} instances"
            for uid, count in sorted(transfer.sop_classes.items()):
                if uid:
                    etree.SubElement(obj, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})
        elif id_type == codes.ID_EVENT.code:
            obj.set("ParticipantObjectID", transfer.events_sha256)
            detail = obj.find("ParticipantObjectDetail")
            detail.set("type", EVENTS_DETAIL)
            summary = json.dumps(transfer.summary(), sort_keys=True, separators=(",", ":"))
            detail.set("value", base64.b64encode(summary.encode()).decode("ascii"))
    return msg


def transfer_of(msg: etree._Element) -> dict[str, Any] | None:
    """The events summary a transfer message carries (None for a message about one event)."""
    for detail in msg.iter("ParticipantObjectDetail"):
        if detail.get("type") == EVENTS_DETAIL:
            return json.loads(base64.b64decode(detail.get("value", "")))
    return None


def transfer_bytes(transfer: Transfer, context: ExportContext) -> bytes:
    return etree.tostring(render_transfer(transfer, context), encoding="UTF-8", xml_declaration=False)


def to_bytes(rec: dict[str, Any], context: ExportContext) -> bytes:
    """One AuditMessage on its own (the syslog feed's payload), UTF-8, no declaration."""
    return etree.tostring(render(rec, context), encoding="UTF-8", xml_declaration=False)


SEPARATOR = ""


def header(context: ExportContext) -> str:
    return f"<?xml version='1.0' encoding='UTF-8'?>\n<{CONTAINER}>\n"


def render_batch(recs: list[dict[str, Any]], context: ExportContext) -> list[str]:
    """Messages serialised by lxml, one per line, inside the container ``header`` opens."""
    return [etree.tostring(render(rec, context), encoding="unicode") + "\n" for rec in recs]


def footer(context: ExportContext) -> str:
    return f"</{CONTAINER}>\n"


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


RENDERS_RECORDS = True  # read() re-renders each record and compares: audit verify passes `altered`


def difference(expected: etree._Element, actual: etree._Element, where: str = "") -> str:
    """The first place two messages differ: element path, attribute or text ('' if equal)."""
    where = f"{where}/{actual.tag}" if where else str(actual.tag)
    if expected.tag != actual.tag:
        return f"{where}: the record makes a {expected.tag} element here"
    for name in sorted(set(expected.attrib) | set(actual.attrib)):
        if expected.get(name) != actual.get(name):
            said, found = _short(expected.get(name)), _short(actual.get(name))
            return f"{where}@{name}: the record says {said}, the file {found}"
    if (expected.text or "").strip() != (actual.text or "").strip():
        return f"{where}: the record says {_short(expected.text)}, the file {_short(actual.text)}"
    if len(expected) != len(actual):
        return f"{where}: {len(expected)} elements in the record's rendering, {len(actual)} in the file"
    for e, a in zip(expected, actual, strict=True):
        if found := difference(e, a, where):
            return found
    return ""


def _short(text: str | None) -> str:
    text = repr(text or "")
    return text if len(text) <= 80 else text[:77] + "..."


def read(path: Path, altered: Callable[[Any, str], None] | None = None) -> Iterator[dict[str, Any]]:
    """The records of an export this module wrote, each checked against its own message. A
    message that parses but says other than its record is reported to ``altered`` (the record is
    still yielded, for its own checks), or without it ends the reading as an error; only what
    does not parse is unreadable."""
    for msg in messages(path):
        try:
            rec = record_of(msg)
        except (ValueError, TypeError) as exc:
            raise AuditExportError(f"{path}: an AuditMessage's record does not decode ({exc})") from exc
        expected = render(rec, _context_of(msg, rec))
        if etree.tostring(expected, method="c14n") != etree.tostring(msg, method="c14n"):
            what = difference(expected, msg) or "its serialisation"
            if altered is None:
                raise AuditExportError(
                    f"{path}: AuditMessage of event {rec.get('seq')} differs from its record ({what})"
                )
            altered(rec.get("seq"), what)
        yield rec
