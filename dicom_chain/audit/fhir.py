"""FHIR R4: a Bundle (type collection) of AuditEvent resources, one entry per line.

Types and subtypes come from the DICOM audit vocabulary (codes.py). Each AuditEvent carries the
full ledger record as an entity detail (base64 JSON), which ``read`` checks against everything
the resource shows, so an edited outcome or patient is found even though the record is intact.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dicom_chain.audit import codes, record
from dicom_chain.audit.context import ExportContext
from dicom_chain.audit.participants import participants
from dicom_chain.errors import AuditExportError
from dicom_chain.vocab import EventType

NAME = "fhir"
DECODE_DETAILS = False  # rendering decodes them itself; the embedded record splices their text
SUFFIX = ".fhir.json"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
NETWORK_TYPE_IP = "2"  # AuditEvent.agent.network.type: IP address
RECORD_DETAIL = "dicom-chain-event"
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # built once: a million entries


def _coding(code: codes.Code) -> dict[str, str]:
    system = codes.DCM_SYSTEM if code.scheme == codes.DCM else f"urn:dicom-chain:{code.scheme}"
    return {"system": system, "code": code.code, "display": code.meaning}


def _entity(value: str, type_code: str, type_display: str, role: str, role_display: str) -> dict[str, Any]:
    return {
        "what": {"identifier": {"value": value}},
        "type": {"system": ENTITY_TYPE, "code": type_code, "display": type_display},
        "role": {"system": OBJECT_ROLE, "code": role, "display": role_display},
    }


def render(rec: dict[str, Any], context: ExportContext) -> dict[str, Any]:
    kind = codes.kind_of(rec["type"])
    institution = context.institutions.get(rec["key_id"], "")
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": rec["hash"][:64],
        "type": _coding(kind.event_id),
        "action": kind.action,
        "recorded": rec["time"],
        "outcome": codes.OUTCOME_CODES.get(rec["outcome"], "8"),
    }
    if kind.subtype is not None:
        resource["subtype"] = [_coding(kind.subtype)]
    if rec["reason"]:
        resource["outcomeDesc"] = rec["reason"]
    agents = []
    for p in participants(rec, institution):
        agent: dict[str, Any] = {"who": {"display": p.user_id}, "requestor": p.requestor}
        if p.role is not None:
            agent["type"] = {"coding": [_coding(p.role)]}
        if p.name:
            agent["name"] = p.name
        if p.address:
            agent["network"] = {"address": p.address, "type": NETWORK_TYPE_IP}
        agents.append(agent)
    resource["agent"] = agents
    resource["source"] = {
        "site": institution or context.source_id,
        "observer": {"display": context.source_id},
        "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
    entities = []
    if rec["patient_id"]:
        entities.append(_entity(rec["patient_id"], "1", "Person", "1", "Patient"))
    if rec["study_uid"]:
        study = _entity(rec["study_uid"], "2", "System Object", "3", "Report")
        study["what"]["identifier"]["system"] = "urn:dicom:uid"
        entities.append(study)
    details = record.details_of(rec)
    if rec["type"] == EventType.QUERY_FIND:
        query = _entity(str(details.get("model", "")), "2", "System Object", "24", "Query")
        query["query"] = base64.b64encode(
            json.dumps(details.get("keys", {}), sort_keys=True, ensure_ascii=False).encode()
        ).decode("ascii")
        entities.append(query)
    carrier = _entity(rec["hash"], "2", "System Object", "13", "Security Resource")
    carrier["detail"] = [
        {
            "type": RECORD_DETAIL,
            "valueBase64Binary": base64.b64encode(record.dumps(rec).encode()).decode("ascii"),
        }
    ]
    entities.append(carrier)
    resource["entity"] = entities
    return resource


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{uuid.UUID(resource['id'][:32])}", "resource": resource}


SEPARATOR = ",\n"  # between entries: JSON allows no comma after the last


def header(context: ExportContext) -> str:
    head = {"resourceType": "Bundle", "type": "collection", "timestamp": context.exported_at}
    return json.dumps(head, ensure_ascii=False)[:-1] + ', "entry": [\n'


def render_batch(recs: list[dict[str, Any]], context: ExportContext) -> list[str]:
    return [_ENCODER.encode(_entry(render(rec, context))) for rec in recs]


def footer(context: ExportContext) -> str:
    return "\n]}\n"


def _context_of(resource: dict[str, Any], rec: dict[str, Any]) -> ExportContext:
    source = resource.get("source", {})
    observer = source.get("observer", {}).get("display", "")
    site = source.get("site", "")
    return ExportContext(
        exported_at="", source_id=observer, institutions={rec["key_id"]: site} if site != observer else {}
    )


def record_of(resource: dict[str, Any]) -> dict[str, Any]:
    for entity in resource.get("entity", []):
        for detail in entity.get("detail", []):
            if detail.get("type") == RECORD_DETAIL:
                return json.loads(base64.b64decode(detail["valueBase64Binary"]))
    raise AuditExportError(f"AuditEvent {resource.get('id')} carries no {RECORD_DETAIL} record")


Altered = Callable[[Any, str], None]  # (event seq, what differs): an export edited after it was cut
RENDERS_RECORDS = True  # read() re-renders each record and compares: audit verify passes `altered`


def difference(expected: Any, actual: Any, where: str = "") -> str:
    """The first place two JSON values differ, as ``path: expected ... found ...`` ('' if equal)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(expected.keys() | actual.keys()):
            found = difference(expected.get(key), actual.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return ""
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            if found := difference(e, a, f"{where}[{i}]"):
                return found
        return ""
    if expected == actual:
        return ""
    return f"{where}: the record says {_short(expected)}, the file {_short(actual)}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def read(path: Path, altered: Altered | None = None) -> Iterator[dict[str, Any]]:
    """The records of a bundle this module wrote, each checked against its own resource. An
    entry that parses but shows other than its record says so to ``altered`` (the record is
    still yielded, for its own checks), or without it ends the reading as an error."""
    with path.open(encoding="utf-8") as fp:
        head = fp.readline()
        if not head.startswith('{"resourceType": "Bundle"'):
            raise AuditExportError(f"{path}: not a FHIR Bundle written by dicom-chain")
        for number, line in enumerate(fp, 2):
            line = line.strip().rstrip(",")
            if not line or line == "]}":
                continue
            try:
                entry = json.loads(line)
                resource = entry["resource"]
                rec = record_of(resource)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise AuditExportError(f"{path}:{number}: not an AuditEvent entry ({exc})") from exc
            expected = _entry(render(rec, _context_of(resource, rec)))
            if expected != entry:
                what = f"line {number}, {difference(expected, entry)}"
                if altered is None:
                    raise AuditExportError(
                        f"{path}: AuditEvent {rec.get('seq')} differs from its record ({what})"
                    )
                altered(rec.get("seq"), what)
            yield rec
