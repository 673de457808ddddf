"""Consents folded from events: grants, revocations at once, expiry, study restriction, no rewriting."""

from __future__ import annotations

from dicom_chain.sharing import consent

from .test_sharing_policy import OTHER_STUDY, STUDY, Log

START, UNTIL = "2026-05-01T00:00:00Z", "2026-10-01T00:00:00Z"


def cover(log: Log, now: str, study: str = STUDY, purpose: str = "treatment") -> consent.Cover:
    folded = consent.fold(log.events)
    return consent.covering(
        folded, patient_id="P1", study_uid=study, institution="HOSPITAL_B", purpose=purpose, now=now
    )


def test_a_consent_covers_its_period_only():
    log = Log()
    cid = log.grant("P1", "HOSPITAL_B", START, UNTIL)
    assert cover(log, START).consent.consent_id == cid  # from its first instant
    assert cover(log, "2026-09-30T23:59:59Z").consent is not None
    assert cover(log, UNTIL).consent is None  # up to, not including, its end
    assert cover(log, UNTIL).reason == "consent for HOSPITAL_B ended 2026-10-01"


def test_a_study_restricted_consent_covers_those_studies_only():
    log = Log()
    log.grant("P1", "HOSPITAL_B", START, UNTIL, studies=(STUDY,))
    assert cover(log, "2026-06-01T00:00:00Z").consent is not None
    assert cover(log, "2026-06-01T00:00:00Z", study=OTHER_STUDY).consent is None


def test_revocation_ends_one_consent_and_keeps_its_grant():
    log = Log()
    first = log.grant("P1", "HOSPITAL_B", START, UNTIL)
    second = log.grant("P1", "HOSPITAL_B", START, UNTIL, purpose="research")
    log.revoke(first, "HOSPITAL_B", "2026-06-01T00:00:00Z")
    log.revoke(first, "HOSPITAL_B", "2026-07-01T00:00:00Z")  # a second revocation changes nothing
    folded = consent.fold(log.events)
    assert folded[first].revoked_at == "2026-06-01T00:00:00Z" and folded[first].start == START
    assert folded[second].revoked_at is None
    assert cover(log, "2026-05-15T00:00:00Z").consent is None  # at once, even asked about before it
    assert cover(log, "2026-05-15T00:00:00Z", purpose="research").consent.consent_id == second
    assert [c.consent_id for c in consent.of_patient(folded, "P1")] == [first, second]


def test_folding_does_not_depend_on_the_order_events_are_handed_in():
    log = Log()
    cid = log.grant("P1", "HOSPITAL_B", START, UNTIL)
    log.revoke(cid, "HOSPITAL_B", "2026-06-01T00:00:00Z")
    assert consent.fold(reversed(log.events)) == consent.fold(log.events)
