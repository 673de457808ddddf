"""Scores recomputed from events, each with the events that made it."""

from __future__ import annotations

from dicom_chain.sharing import scores
from dicom_chain.vocab import EventType

from .test_sharing_policy import POLICY, Log


def test_a_score_is_the_initial_value_moved_by_each_event_with_an_explanation():
    log = Log()
    log.institution("HOSPITAL_B")
    log.add(EventType.RELEASE_GRANTED, "2026-06-01T00:00:00Z", patient_id="P1", to="HOSPITAL_B")
    log.add(
        EventType.RELEASE_DENIED,
        "2026-06-01T00:00:00Z",
        patient_id="P1",
        to="HOSPITAL_B",
        grounds=["consent"],
    )
    log.add(
        EventType.RELEASE_DENIED, "2026-06-01T00:00:00Z", patient_id="P1", to="HOSPITAL_B", grounds=["score"]
    )
    log.add(EventType.RELEASE_REFUSED, "2026-06-01T00:00:00Z", **{"from": "HOSPITAL_B"})
    log.add(EventType.RELEASE_GRANTED, "2026-06-01T00:00:00Z", patient_id="P1", to="HOSPITAL_C")  # not B's
    score = scores.compute(POLICY, log.events, scores.INSTITUTION, "HOSPITAL_B", "2026-06-01T00:00:00Z")
    assert score.value == 50 + 2 - 5 + 0 - 30
    assert [(s.seq, s.what, s.effect) for s in score.steps[1:]] == [
        (2, "release.granted", 2.0),
        (3, "release.denied.consent", -5.0),
        (4, "release.denied", 0.0),
        (5, "release.refused", -30.0),
    ]
    assert score.explain()[0] == "institution HOSPITAL_B: starts at 50"
    assert score.explain()[-1] == "score 17"
    assert "event 5 release.refused: -30.0 -> 17" in score.explain()[-2]


def test_scores_recover_towards_their_start_and_stay_in_bounds():
    log = Log()
    for _ in range(3):
        log.add(EventType.RELEASE_REFUSED, "2026-06-01T00:00:00Z", **{"from": "HOSPITAL_B"})
    at_once = scores.compute(POLICY, log.events, scores.INSTITUTION, "HOSPITAL_B", "2026-06-01T00:00:00Z")
    assert at_once.value == 0  # 50 - 90, held at the minimum
    ten_days = scores.compute(POLICY, log.events, scores.INSTITUTION, "HOSPITAL_B", "2026-06-11T00:00:00Z")
    assert ten_days.value == 10  # one point a day
    assert ten_days.steps[-1].what == "recovery over 10.0 days"
    years = scores.compute(POLICY, log.events, scores.INSTITUTION, "HOSPITAL_B", "2030-01-01T00:00:00Z")
    assert years.value == 50  # recovery stops at the start, never beyond it


def test_an_event_after_now_does_not_count():
    log = Log()
    log.add(EventType.RELEASE_REFUSED, "2026-06-01T00:00:00Z", **{"from": "HOSPITAL_B"})
    assert (
        scores.compute(POLICY, log.events, scores.INSTITUTION, "HOSPITAL_B", "2026-05-01T00:00:00Z").value
        == 50
    )


def test_the_patients_score_falls_when_their_studies_are_asked_for_without_consent():
    log = Log()
    log.add(EventType.RELEASE_DENIED, "2026-06-01T00:00:00Z", patient_id="P1", to="X", grounds=["consent"])
    log.grant("P1", "HOSPITAL_B", "2026-06-01T00:00:00Z", "2026-07-01T00:00:00Z")
    score = scores.compute(POLICY, log.events, scores.PATIENT, "P1", "2026-06-01T00:00:00Z")
    assert score.value == 100 - 15 + 5
    assert scores.compute(POLICY, log.events, scores.PATIENT, "P2", "2026-06-01T00:00:00Z").value == 100
