"""Consents as FHIR R4 ``Consent`` resources, both ways: what hospitals' record systems exchange. Pure.

Mapping (one resource per consent):
- ``patient.identifier``: the Patient ID (``assigner.display``: the Issuer of Patient ID);
- ``provision.actor``: the institution, by name (identifier system ``INSTITUTION_SYSTEM``), role IRCP;
- ``provision.period``: from, until; ``provision.purpose``: v3 ActReason TREAT / HRESCH, or ours;
- ``provision.data``: one ImagingStudy reference per study, identified by its Study Instance UID
  (system ``urn:dicom:uid``, value ``urn:oid:<uid>``, as FHIR ImagingStudy.identifier has it);
  none: every study of the patient;
- ``status``: active, or inactive once revoked; ``id``: the consent's id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dicom_chain.errors import SharingError
from dicom_chain.sharing import times
from dicom_chain.sharing.consent import Consent

DICOM_UID_SYSTEM = "urn:dicom:uid"
OID_PREFIX = "urn:oid:"
INSTITUTION_SYSTEM = "urn:dicom-chain:institution"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
OUR_PURPOSES = "urn:dicom-chain:purpose"
PURPOSE_CODES = {  # our purpose -> (system, code)
    "treatment": (ACT_REASON, "TREAT"),
    "research": (ACT_REASON, "HRESCH"),
    "second-opinion": (OUR_PURPOSES, "second-opinion"),  # v3 has no code for a second opinion
}
SCOPE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
}
CATEGORY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}]
RECIPIENT_ROLE = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]
}
POLICY_RULE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]}


@dataclass(frozen=True)
class ConsentTerms:
    """What a FHIR Consent says, before it is recorded as ours."""

    consent_id: str | None
    patient_id: str
    issuer: str
    institution: str
    start: str
    until: str
    studies: tuple[str, ...]
    purpose: str
    active: bool


def to_fhir(consent: Consent) -> dict[str, Any]:
    system, code = PURPOSE_CODES[consent.purpose]
    identifier: dict[str, Any] = {"value": consent.patient_id}
    if consent.issuer:
        identifier["assigner"] = {"display": consent.issuer}
    provision: dict[str, Any] = {
        "type": "permit",
        "period": {"start": _fhir_time(consent.start), "end": _fhir_time(consent.until)},
        "actor": [{"role": RECIPIENT_ROLE, "reference": {
            "identifier": {"system": INSTITUTION_SYSTEM, "value": consent.institution},
            "display": consent.institution,
        }}],
        "purpose": [{"system": system, "code": code}],
    }  # fmt: skip
    if consent.studies:
        provision["data"] = [
            {"meaning": "related", "reference": {"type": "ImagingStudy", "identifier": {
                "system": DICOM_UID_SYSTEM, "value": OID_PREFIX + uid}}}
            for uid in consent.studies
        ]  # fmt: skip
    return {
        "resourceType": "Consent",
        "id": consent.consent_id,
        "status": "active" if consent.revoked_at is None else "inactive",
        "scope": SCOPE,
        "category": CATEGORY,
        "patient": {"identifier": identifier},
        "dateTime": _fhir_time(consent.granted_at),
        "policyRule": POLICY_RULE,
        "provision": provision,
    }


def bundle(consents: list[Consent]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": to_fhir(c)} for c in consents],
    }


def read(text: str) -> list[ConsentTerms]:
    """The consents of one ``Consent`` resource or a ``Bundle`` of them (JSON)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SharingError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SharingError("a FHIR resource is a JSON object")
    if data.get("resourceType") == "Bundle":
        resources = [e.get("resource") or {} for e in data.get("entry") or []]
        return [from_fhir(r) for r in resources if r.get("resourceType") == "Consent"]
    return [from_fhir(data)]


def from_fhir(resource: dict[str, Any]) -> ConsentTerms:
    if resource.get("resourceType") != "Consent":
        raise SharingError(f"not a FHIR Consent: {resource.get('resourceType')!r}")
    cid = resource.get("id")
    try:
        identifier = resource["patient"]["identifier"]
        provision = resource["provision"]
        period = provision["period"]
        actors = provision["actor"]
    except (KeyError, TypeError) as exc:
        raise SharingError(
            f"Consent {cid}: missing {exc} (patient identifier, provision period and actor)"
        ) from exc
    if provision.get("type", "permit") != "permit":
        raise SharingError(f"Consent {cid}: only permit provisions are consents here")
    refs = [a.get("reference") or {} for a in actors]
    institutions = [(r.get("identifier") or {}).get("value") or r.get("display") for r in refs]
    if len(institutions) != 1 or not institutions[0]:
        raise SharingError(f"Consent {cid}: exactly one actor, the institution, by name")
    codes = {(p.get("system"), p.get("code")) for p in provision.get("purpose") or []}
    purposes = [name for name, coding in PURPOSE_CODES.items() if coding in codes]
    if len(purposes) != 1:
        raise SharingError(f"Consent {cid}: one purpose of {', '.join(PURPOSE_CODES)}")
    studies = []
    for item in provision.get("data") or []:
        ident = (item.get("reference") or {}).get("identifier") or {}
        value = str(ident.get("value", ""))
        if ident.get("system") != DICOM_UID_SYSTEM or not value.startswith(OID_PREFIX):
            raise SharingError(f"Consent {cid}: a study is an ImagingStudy by its urn:dicom:uid identifier")
        studies.append(value.removeprefix(OID_PREFIX))
    if "start" not in period or "end" not in period:
        raise SharingError(f"Consent {cid}: the period needs a start and an end")
    return ConsentTerms(
        consent_id=str(cid) if cid else None,
        patient_id=str(identifier.get("value", "")),
        issuer=str((identifier.get("assigner") or {}).get("display", "")),
        institution=str(institutions[0]),
        start=times.normalise(str(period["start"])),
        until=times.normalise(str(period["end"])),
        studies=tuple(studies),
        purpose=purposes[0],
        active=resource.get("status", "active") == "active",
    )


def _fhir_time(text: str) -> str:
    """FHIR dateTime, as the ledger writes it (fractions of a second are allowed): a round trip is exact."""
    return times.normalise(text)
