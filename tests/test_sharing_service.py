"""Deciding and recording in one call; the policy's history; replaying the ledger's decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.errors import SharingError
from dicom_chain.events import EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.node import Node
from dicom_chain.sharing import fhirconsent, policyfile, service
from dicom_chain.sharing.registry import Registry
from dicom_chain.sharing.replay import replay
from dicom_chain.vocab import EventType

from .conftest import fresh

T0 = "2026-11-01T00:00:00.000000Z"


def at(day: int, hour: int = 12) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:00:00.000000Z"


def register(node: Node, tmp_path: Path, name: str, ae: str) -> None:
    path = tmp_path / f"{name}.pem"
    path.write_text(NodeKey.generate().public_pem())
    Registry(node.ledger, node.key).add(
        name, ae_title=ae, host="127.0.0.1", port=11112, public_key_file=path, actor="admin", now=T0
    )


@pytest.fixture
def hospital(tmp_path, db_url, small_study):
    node = Node.open(Settings(home=tmp_path / "a", db=db_url, institution="HOSPITAL_A"))
    for ds in small_study:
        node.ingest(item_from_dataset(fresh(ds)), actor="CT1")
    register(node, tmp_path, "HOSPITAL_B", "HB_GW")
    yield node
    node.close()


def test_a_decision_is_recorded_with_its_reasons_and_what_it_was_made_under(hospital, small_study):
    study, patient = small_study[0].StudyInstanceUID, small_study[0].PatientID
    denied = service.decide_release(
        hospital,
        study_uid=study,
        to="HOSPITAL_B",
        purpose="treatment",
        actor="HB_WS",
        via="c-move",
        now=at(2),
    )
    assert denied.denied and denied.reasons == (f"no consent of patient {patient} for HOSPITAL_B",)
    consent = service.grant_consent(
        hospital, patient_id=patient, to="HOSPITAL_B", until=at(20), actor="clerk", now=at(3)
    )
    granted = service.decide_release(
        hospital,
        study_uid=study,
        to="HOSPITAL_B",
        purpose="treatment",
        actor="HB_WS",
        via="c-move",
        now=at(4),
    )
    assert granted.allowed and granted.consent_id == consent.consent_id
    events = [e for e in hospital.ledger.iter_events() if e.type.startswith(("release.", "policy."))]
    assert [e.type for e in events] == ["policy.changed", "release.denied", "release.granted"]
    assert events[0].details["hash"] == hospital.policy.hash == denied.policy_hash  # recorded before use
    record = events[2]
    assert (record.patient_id, record.study_uid, record.actor) == (patient, study, "HB_WS")
    assert record.reason == "; ".join(granted.reasons)
    assert record.details["consent_id"] == consent.consent_id
    assert record.details["reasons"] == list(granted.reasons)
    assert (record.details["to"], record.details["via"], record.details["instances"]) == (
        "HOSPITAL_B",
        "c-move",
        len(small_study),
    )
    assert events[1].details["grounds"] == ["consent"] and events[1].details["consent_id"] is None
    assert all(r.agrees for r in replay(hospital.ledger.iter_events()))


def test_consents_are_checked_revoked_and_listed(hospital, small_study):
    patient = small_study[0].PatientID
    with pytest.raises(SharingError, match="no registered institution HOSPITAL_Z"):
        service.grant_consent(
            hospital, patient_id=patient, to="HOSPITAL_Z", until=at(20), actor="c", now=at(1)
        )
    with pytest.raises(SharingError, match="does not come after its start"):
        service.grant_consent(
            hospital, patient_id=patient, to="HOSPITAL_B", until=at(1), actor="c", now=at(2)
        )
    consent = service.grant_consent(
        hospital,
        patient_id=patient,
        to="HOSPITAL_B",
        until=at(20),
        actor="c",
        now=at(1),
        studies=["1.2.3"],
        issuer="MRN",
    )
    revoked = service.revoke_consent(hospital, consent.consent_id, actor="patient", reason="changed my mind")
    assert revoked.revoked_at is not None and revoked.revoke_reason == "changed my mind"
    with pytest.raises(SharingError, match="already revoked"):
        service.revoke_consent(hospital, consent.consent_id, actor="patient")
    [listed] = service.all_consents(hospital, patient)
    assert listed.consent_id == consent.consent_id and listed.revoked_at == revoked.revoked_at
    assert service.all_consents(hospital, "SOMEONE ELSE") == []


def test_fhir_import_records_consents_once(hospital, small_study):
    patient = small_study[0].PatientID
    consent = service.grant_consent(
        hospital, patient_id=patient, to="HOSPITAL_B", until=at(20), actor="c", now=at(1)
    )
    exported = json.dumps(fhirconsent.bundle(service.all_consents(hospital)))
    assert service.import_consents(hospital, exported, actor="c", now=at(2)) == []  # already recorded
    resource = fhirconsent.to_fhir(consent)
    resource["id"] = "4d7b2c1e-8a5f-4e2b-9c3d-1f2e3a4b5c6d"
    [imported] = service.import_consents(hospital, json.dumps(resource), actor="c", now=at(2))
    assert (imported.consent_id, imported.source, imported.until) == (resource["id"], "fhir", consent.until)
    assert len(service.all_consents(hospital, patient)) == 2


def test_opening_with_another_policy_records_it_and_none_keeps_the_one_in_force(tmp_path, db_url):
    home = Settings(home=tmp_path / "a", db=db_url)
    stricter = tmp_path / "strict.toml"
    stricter.write_text(
        policyfile.default_text().replace("min_institution_score = 40", "min_institution_score = 90")
    )

    def changes() -> list[str]:
        node = Node.open(home)
        node.close()
        return [e.details["hash"] for e in node.ledger.iter_events() if e.type == EventType.POLICY_CHANGED]

    assert changes() == []  # the shipped default needs no record until a decision is made under it
    node = Node.open(Settings(home=tmp_path / "a", db=db_url, policy=stricter))
    assert node.policy.hash == policyfile.load(stricter).hash
    node.close()
    assert changes() == [policyfile.load(stricter).hash]  # and opened without --policy, it stays
    node = Node.open(home)
    assert node.policy.hash == policyfile.load(stricter).hash
    node.close()
    node = Node.open(Settings(home=tmp_path / "a", db=db_url, policy=stricter))
    node.close()
    assert len(changes()) == 1  # the same file again: nothing new


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["release", "grant", "revoke", "refused", "policy"]),
        st.integers(min_value=1, max_value=28),
        st.sampled_from(["treatment", "research"]),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS)
def test_replaying_the_ledger_gives_every_recorded_decision_again(tmp_path_factory, small_study, operations):
    tmp = tmp_path_factory.mktemp("replay")
    strict = tmp / "strict.toml"
    strict.write_text(
        policyfile.default_text().replace("min_institution_score = 40", "min_institution_score = 45")
    )
    node = Node.open(Settings(home=tmp / "a"))
    try:
        for ds in small_study[:1]:
            node.ingest(item_from_dataset(fresh(ds)))
        register(node, tmp, "HOSPITAL_B", "HB_GW")
        study, patient = small_study[0].StudyInstanceUID, small_study[0].PatientID
        consents: list[str] = []
        for op, day, purpose in operations:
            if op == "release":
                service.decide_release(
                    node, study_uid=study, to="HOSPITAL_B", purpose=purpose, actor="x", via="cli", now=at(day)
                )
            elif op == "grant":
                c = service.grant_consent(
                    node,
                    patient_id=patient,
                    to="HOSPITAL_B",
                    until=at(day, 23),
                    purpose=purpose,
                    actor="c",
                    now=at(1),
                )
                consents.append(c.consent_id)
            elif op == "revoke" and consents:
                service.revoke_consent(node, consents.pop(), actor="p")
            elif op == "refused":
                node.record(EventDraft(type=EventType.RELEASE_REFUSED, details={"from": "HOSPITAL_B"}))
            elif op == "policy":
                node.policy = service.adopt_policy(node.ledger, node.key, strict, "admin")
        replayed = replay(node.ledger.iter_events())
        assert len(replayed) == sum(op == "release" for op, _, _ in operations)
        assert all(r.agrees for r in replayed), [(r.event.details, r.recomputed) for r in replayed]
    finally:
        node.close()


def test_a_decision_that_moves_a_score_leaves_a_notice_the_scores_never_read(hospital, small_study):
    study, patient = small_study[0].StudyInstanceUID, small_study[0].PatientID
    denied = service.decide_release(
        hospital,
        study_uid=study,
        to="HOSPITAL_B",
        purpose="treatment",
        actor="HB_WS",
        via="c-move",
        now=at(2),
    )
    assert denied.denied
    events = list(hospital.ledger.iter_events())
    cause = next(e for e in events if e.type == EventType.RELEASE_DENIED)
    notices = {
        (e.details["party"], e.details["name"]): e for e in events if e.type == EventType.SCORE_CHANGED
    }
    assert set(notices) == {("institution", "HOSPITAL_B"), ("patient", patient)}  # both lost points
    for (party, name), notice in notices.items():
        assert notice.details["cause_seq"] == cause.seq and notice.seq > cause.seq
        assert notice.details["from"] > notice.details["to"]
        recomputed = service.score(hospital, party, name, cause.time).value
        assert round(recomputed, 3) == notice.details["to"]  # the notice says what recomputing says
    assert (
        next(e for e in events if e.details.get("party") == "patient").patient_id == patient
    )  # a patient's export and access log find it
    # the notices change nothing: scores are the same with or without them
    without = [e for e in events if e.type != EventType.SCORE_CHANGED]
    from dicom_chain.sharing import scores

    for party, name in notices:
        assert (
            scores.compute(hospital.policy, without, party, name, at(2)).value
            == scores.compute(hospital.policy, events, party, name, at(2)).value
        )
    assert all(r.agrees for r in replay(hospital.ledger.iter_events()))
