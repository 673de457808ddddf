"""The release engine: decisions with their reasons in words, and answers that depend only on inputs."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_chain.block import GENESIS_HASH
from dicom_chain.events import Event, EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.sharing import policyfile
from dicom_chain.sharing.policy import Facts, ReleaseRequest, decide
from dicom_chain.vocab import EventType

KEY = NodeKey.generate()
POLICY = policyfile.load(None)
STUDY = "1.2.826.0.1.3680043.8.498.1"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.2"


class Log:
    """Sealed events, made by hand: the engine's inputs without a database."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(
        self, type_: EventType, time: str, patient_id: str = "", study_uid: str = "",
        details: dict[str, Any] | None = None, **more: Any,
    ) -> Event:  # fmt: skip
        details = {**(details or {}), **more}
        prev = self.events[-1].hash if self.events else GENESIS_HASH
        draft = EventDraft(type=type_, patient_id=patient_id, study_uid=study_uid, details=details)
        event = Event.seal(draft, len(self.events) + 1, prev, KEY, time=time)
        self.events.append(event)
        return event

    def institution(self, name: str, time: str = "2026-01-01T00:00:00Z") -> None:
        self.add(EventType.INSTITUTION_ADDED, time, name=name, ae_title=name[:16], host="h", port=104)

    def grant(
        self, patient: str, to: str, start: str, until: str, *, studies: tuple[str, ...] = (),
        purpose: str = "treatment", time: str | None = None,
    ) -> str:  # fmt: skip
        cid = str(uuid.uuid4())
        details = {"consent_id": cid, "patient_id": patient, "issuer": "", "institution": to, "from": start,
                   "until": until, "studies": list(studies), "purpose": purpose, "source": "cli"}  # fmt: skip
        self.add(EventType.CONSENT_GRANTED, time or start, patient_id=patient, details=details)
        return cid

    def revoke(self, cid: str, to: str, time: str) -> None:
        self.add(EventType.CONSENT_REVOKED, time, consent_id=cid, institution=to, reason="patient asked")

    def facts(self) -> Facts:
        return Facts.of(self.events)


def request(
    patient: str = "P1", to: str = "HOSPITAL_B", modalities: tuple[str, ...] = ("CT",), **kw: Any
) -> ReleaseRequest:
    return ReleaseRequest(patient, kw.get("study", STUDY), to, kw.get("purpose", "treatment"), modalities)


def test_without_consent_a_release_is_denied_and_says_whose_consent_is_missing():
    log = Log()
    log.institution("HOSPITAL_B")
    decision = decide(POLICY, log.facts(), request(), "2026-06-01T00:00:00Z")
    assert decision.denied and decision.consent_id is None
    assert decision.reasons == ("no consent of patient P1 for HOSPITAL_B",)
    assert decision.grounds == ("consent",) and decision.policy_hash == POLICY.hash


def test_within_consent_it_is_allowed_naming_the_consent_and_the_score_met():
    log = Log()
    log.institution("HOSPITAL_B")
    cid = log.grant("P1", "HOSPITAL_B", "2026-05-01T00:00:00Z", "2026-10-01T00:00:00Z")
    decision = decide(POLICY, log.facts(), request(), "2026-06-01T00:00:00Z")
    assert decision.allowed and decision.consent_id == cid
    assert decision.reasons == (
        f"consent {cid} for HOSPITAL_B (treatment) until 2026-10-01",
        "score 50 meets 40 required for standard",
    )
    assert dict(decision.scores) == {"institution": 50.0, "patient": 100.0}


def test_after_the_consent_ended_the_reason_names_the_day():
    log = Log()
    log.institution("HOSPITAL_B")
    log.grant("P1", "HOSPITAL_B", "2026-05-01T00:00:00Z", "2026-10-01T00:00:00Z")
    decision = decide(POLICY, log.facts(), request(), "2026-10-02T00:00:00Z")
    assert decision.reasons == ("consent for HOSPITAL_B ended 2026-10-01",)
    early = decide(POLICY, log.facts(), request(), "2026-04-02T00:00:00Z")
    assert early.reasons == ("consent for HOSPITAL_B starts 2026-05-01",)


def test_revocation_study_restriction_and_purpose_each_have_their_reason():
    log = Log()
    log.institution("HOSPITAL_B")
    cid = log.grant(
        "P1", "HOSPITAL_B", "2026-05-01T00:00:00Z", "2026-10-01T00:00:00Z", studies=(OTHER_STUDY,)
    )
    assert decide(POLICY, log.facts(), request(), "2026-06-01T00:00:00Z").reasons == (
        f"consent for HOSPITAL_B does not include study {STUDY}",
    )
    assert decide(POLICY, log.facts(), request(study=OTHER_STUDY), "2026-06-01T00:00:00Z").allowed
    assert decide(
        POLICY, log.facts(), request(study=OTHER_STUDY, purpose="research"), "2026-06-01T00:00:00Z"
    ).reasons == (
        "consent for HOSPITAL_B is for treatment, not research",
        "patient P1 has not opted in to research",
    )
    log.revoke(cid, "HOSPITAL_B", "2026-06-15T00:00:00Z")
    assert decide(POLICY, log.facts(), request(study=OTHER_STUDY), "2026-06-01T00:00:00Z").reasons == (
        "consent for HOSPITAL_B was revoked 2026-06-15",
    )  # a revocation takes effect once recorded, whatever time is asked about


def test_an_unregistered_or_removed_institution_is_refused():
    log = Log()
    decision = decide(POLICY, log.facts(), request(to="NOBODY"), "2026-06-01T00:00:00Z")
    assert "NOBODY is not a registered institution" in decision.reasons
    log.institution("HOSPITAL_B")
    log.add(EventType.INSTITUTION_REMOVED, "2026-02-01T00:00:00Z", name="HOSPITAL_B")
    assert (
        "HOSPITAL_B is no longer a registered institution"
        in decide(POLICY, log.facts(), request(), "2026-06-01T00:00:00Z").reasons
    )


def test_a_low_score_denies_with_the_number_and_the_modality():
    log = Log()
    log.institution("HOSPITAL_B")
    log.add(EventType.RELEASE_REFUSED, "2026-05-31T00:00:00Z", **{"from": "HOSPITAL_B"})  # 50 - 30 = 20
    log.grant("P1", "HOSPITAL_B", "2026-05-01T00:00:00Z", "2026-10-01T00:00:00Z", time="2026-05-31T12:00:00Z")
    decision = decide(POLICY, log.facts(), request(modalities=("MR", "CT")), "2026-06-01T00:00:00Z")
    assert decision.denied and decision.grounds == ("score",)
    assert decision.reasons == ("score 21 below 50 required for MR",)  # a day's recovery: +1


def test_a_probed_patient_raises_the_bar():
    log = Log()
    log.institution("HOSPITAL_B")
    log.institution("HOSPITAL_C")
    for hour in range(4):  # four requests without consent: the patient's score falls to 40
        log.add(EventType.RELEASE_DENIED, f"2026-06-01T0{hour}:00:00Z", patient_id="P1", to="HOSPITAL_C",
                grounds=["consent"])  # fmt: skip
    log.grant("P1", "HOSPITAL_B", "2026-05-01T00:00:00Z", "2026-10-01T00:00:00Z", time="2026-06-01T05:00:00Z")
    decision = decide(POLICY, log.facts(), request(), "2026-06-01T06:00:00Z")
    assert decision.denied
    assert decision.reasons == ("score 50 below 70 required for standard (patient score 45.5 below 50)",)


def test_research_needs_the_patients_opt_in():
    log = Log()
    log.institution("HOSPITAL_B")
    log.grant("P1", "HOSPITAL_B", "2026-05-01T00:00:00Z", "2026-10-01T00:00:00Z", purpose="research")
    assert decide(POLICY, log.facts(), request(purpose="research"), "2026-06-01T00:00:00Z").reasons == (
        "patient P1 has not opted in to research",
    )
    log.add(EventType.PATIENT_RESEARCH_OPT_IN, "2026-05-02T00:00:00Z", patient_id="P1", issuer="")
    assert decide(POLICY, log.facts(), request(purpose="research"), "2026-06-01T00:00:00Z").allowed


IRRELEVANT = (
    EventType.INSTANCE_RECEIVED,
    EventType.QUERY_FIND,
    EventType.SERVICE_START,
    EventType.VERIFY_NODE,
)


@settings(max_examples=60, deadline=None)
@given(
    order=st.randoms(use_true_random=False),
    noise=st.lists(st.sampled_from(IRRELEVANT), max_size=12),
    hour=st.integers(min_value=0, max_value=23),
    month=st.integers(min_value=5, max_value=11),
)
def test_the_answer_depends_only_on_the_inputs(order, noise, hour, month):
    log = Log()
    log.institution("HOSPITAL_B")
    log.grant("P1", "HOSPITAL_B", "2026-05-01T00:00:00Z", "2026-10-01T00:00:00Z")
    log.add(
        EventType.RELEASE_DENIED,
        "2026-05-03T00:00:00Z",
        patient_id="P1",
        to="HOSPITAL_B",
        grounds=["consent"],
    )
    log.grant("P2", "HOSPITAL_B", "2026-05-01T00:00:00Z", "2026-07-01T00:00:00Z")  # another patient's
    now = f"2026-{month:02d}-15T{hour:02d}:00:00Z"
    reference = decide(POLICY, log.facts(), request(), now)
    for kind in noise:
        log.add(kind, "2026-05-04T00:00:00Z", patient_id="P1", study_uid=STUDY)
    shuffled = list(log.events)
    order.shuffle(shuffled)
    again = decide(POLICY, Facts.of(shuffled), request(), now)
    assert again == reference
    assert decide(POLICY, Facts.of(shuffled), request(), now) == again  # asked twice: the same
    assert reference.allowed == (month < 10)
