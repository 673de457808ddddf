"""Query and retrieve runs: what they answer and what they put on the record, without a network."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.errors import IdentifierError
from dicom_chain.node import Node
from dicom_chain.qr.runs import record_refused, start_find, start_retrieve
from dicom_chain.vocab import Outcome, SubOperation

from .conftest import SAMPLE_STUDY, read


@pytest.fixture
def stocked(node: Node) -> Node:
    for path in sorted(SAMPLE_STUDY.glob("*.dcm")):
        node.ingest_file(path)
    node.ingest(item_from_dataset(read("CT_small.dcm")))
    return node


def read_sample() -> Dataset:
    return pydicom.dcmread(next(SAMPLE_STUDY.glob("*.dcm")))


def study_identifier(**keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def last_event(node: Node):
    return list(node.ledger.iter_events())[-1]


def test_find_answers_and_records_who_asked_what_and_how_many(stocked: Node):
    run = start_find(
        stocked, study_identifier(PatientID="DC-0001", StudyInstanceUID=""), "STUDY", "WS1", "GW"
    )
    answers = list(run.answers())
    run.finish("completed")
    assert len(answers) == 1 and answers[0].PatientID == "DC-0001"
    event = last_event(stocked)
    assert (event.type, event.actor, event.outcome, event.patient_id) == (
        "query.find",
        "WS1",
        Outcome.SUCCESS,
        "DC-0001",
    )
    assert event.details["matches"] == 1 and event.details["keys"]["PatientID"] == "DC-0001"
    assert event.details["level"] == "STUDY" and event.details["model"] == "STUDY"
    run.finish("failed")  # a second finish does not record twice
    assert last_event(stocked).seq == event.seq


def test_a_cancelled_find_is_recorded_as_cancelled(stocked: Node):
    run = start_find(stocked, study_identifier(PatientName="*"), "STUDY", "WS1", "GW")
    next(iter(run.answers()))
    run.finish("cancelled")
    event = last_event(stocked)
    assert event.details["status"] == "cancelled" and event.details["matches"] == 1


def test_bad_identifiers_raise_before_anything_runs(stocked: Node):
    with pytest.raises(IdentifierError):
        start_find(stocked, study_identifier(), "PATIENT", "WS1", "GW")  # Patient Root needs PatientID
    record_refused(stocked, "query.find", "WS1", "no PatientID")
    event = last_event(stocked)
    assert event.outcome == Outcome.MINOR_FAILURE and event.details["status"] == "refused"


def test_retrieve_plans_every_instance_and_counts_sub_operations(stocked: Node):
    study = read("CT_small.dcm").StudyInstanceUID
    run = start_retrieve(stocked, study_identifier(StudyInstanceUID=study), "STUDY", "move", "WS1", "ARCHIVE")
    (item,) = run.plan()
    assert stocked.storage.path(item.path).is_file() and item.study_instance_uid == study
    run.sent(item, SubOperation.SUCCESS)
    run.finish("completed")
    event = last_event(stocked)
    assert event.type == "retrieve.move" and event.outcome == Outcome.SUCCESS
    assert (event.details["completed"], event.details["failed"], event.details["destination"]) == (
        1,
        0,
        "ARCHIVE",
    )


def test_unanswered_sub_operations_count_as_failures(stocked: Node):
    studies = "\\".join(sorted({read("CT_small.dcm").StudyInstanceUID, read_sample().StudyInstanceUID}))
    run = start_retrieve(stocked, study_identifier(StudyInstanceUID=studies), "STUDY", "get", "WS1", "WS1")
    items = run.plan()
    assert len(items) == 9  # a list of UIDs: both studies
    run.sent(items[0], SubOperation.SUCCESS)
    run.finish("completed")
    event = last_event(stocked)
    assert event.details["completed"] == 1 and event.details["failed"] == len(items) - 1
    assert event.outcome == Outcome.MINOR_FAILURE and event.details["status"] == "partial"


def test_a_retrieve_where_everything_failed_is_a_serious_failure(stocked: Node):
    identifier = study_identifier(StudyInstanceUID=read("CT_small.dcm").StudyInstanceUID)
    run = start_retrieve(stocked, identifier, "STUDY", "get", "WS1", "WS1")
    (item,) = run.plan()
    run.sent(item, SubOperation.FAILURE)
    run.finish("completed")
    assert last_event(stocked).outcome == Outcome.SERIOUS_FAILURE


def test_a_retrieve_of_everything_is_refused(stocked: Node):
    for value in ("*", "1.2.*", ""):
        with pytest.raises(IdentifierError, match="StudyInstanceUID"):
            start_retrieve(
                stocked, study_identifier(StudyInstanceUID=value), "STUDY", "move", "WS1", "ARCHIVE"
            )
