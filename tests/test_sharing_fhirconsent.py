"""Consents as FHIR R4 Consent resources: valid for fhir.resources, and a round trip keeps them."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent as FhirConsent

from dicom_chain.errors import SharingError
from dicom_chain.sharing import fhirconsent
from dicom_chain.sharing.consent import Consent

STUDY = "1.2.826.0.1.3680043.8.498.1"
CONSENT = Consent(
    consent_id="0b7f8a36-1f0a-4a3c-9a51-2f6c5c9a7e11", patient_id="P1", issuer="HOSP_A_MRN",
    institution="HOSPITAL_B", start="2026-11-01T00:00:00.000000Z", until="2026-12-01T00:00:00.000000Z",
    studies=(STUDY,), purpose="second-opinion", source="cli", granted_at="2026-11-01T09:30:00.123456Z",
)  # fmt: skip


def test_an_exported_consent_is_a_valid_fhir_consent_with_the_study_reference():
    resource = fhirconsent.to_fhir(CONSENT)
    parsed = FhirConsent.model_validate(resource)
    assert parsed.status == "active" and parsed.id == CONSENT.consent_id
    assert parsed.patient.identifier.value == "P1"
    assert parsed.provision.actor[0].reference.display == "HOSPITAL_B"
    [data] = parsed.provision.data
    assert data.reference.identifier.system == "urn:dicom:uid"
    assert data.reference.identifier.value == "urn:oid:" + STUDY
    assert (
        Bundle.model_validate(fhirconsent.bundle([CONSENT, CONSENT])).entry[1].resource.id
        == CONSENT.consent_id
    )


@pytest.mark.parametrize("purpose", ["treatment", "research", "second-opinion"])
def test_a_round_trip_keeps_every_term(purpose):
    from dataclasses import replace

    consent = replace(CONSENT, purpose=purpose, studies=() if purpose == "research" else CONSENT.studies)
    [terms] = fhirconsent.read(json.dumps(fhirconsent.to_fhir(consent)))
    assert (terms.consent_id, terms.patient_id, terms.issuer, terms.institution) == (
        consent.consent_id, "P1", "HOSP_A_MRN", "HOSPITAL_B",
    )  # fmt: skip
    assert (terms.start, terms.until, terms.studies, terms.purpose, terms.active) == (
        consent.start, consent.until, consent.studies, purpose, True,
    )  # fmt: skip


def test_a_revoked_consent_is_inactive_and_reads_back_so():
    revoked = CONSENT.revoked("2026-11-05T00:00:00Z", "asked")
    resource = fhirconsent.to_fhir(revoked)
    assert FhirConsent.model_validate(resource).status == "inactive"
    assert fhirconsent.read(json.dumps(fhirconsent.bundle([revoked])))[0].active is False


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(resourceType="Patient"), "not a FHIR Consent"),
        (lambda r: r["provision"].pop("period"), "missing"),
        (lambda r: r["provision"]["actor"].append(r["provision"]["actor"][0]), "exactly one actor"),
        (lambda r: r["provision"].update(purpose=[{"system": "x", "code": "y"}]), "one purpose"),
        (lambda r: r["provision"]["data"][0]["reference"]["identifier"].update(system="x"), "urn:dicom:uid"),
        (lambda r: r["provision"].update(type="deny"), "only permit"),
    ],
)
def test_what_cannot_be_a_consent_here_is_refused(mutate, message):
    resource = fhirconsent.to_fhir(CONSENT)
    mutate(resource)
    with pytest.raises(SharingError, match=message):
        fhirconsent.read(json.dumps(resource))
