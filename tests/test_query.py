"""Identifiers parsed per PS3.4 C.4.1, and answers built from index values; no database."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_chain.errors import IdentifierError
from dicom_chain.qr.query import parse_query, response


def identifier(level: str | None, **keys: str) -> Dataset:
    ds = Dataset()
    if level is not None:
        ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("model", "ds", "needle"),
    [
        ("STUDY", identifier(None, PatientID="1"), "missing"),
        ("STUDY", identifier("WARD", PatientID="1"), "WARD"),
        ("STUDY", identifier("PATIENT", PatientID="1"), "Study Root"),  # no PATIENT level there
        ("PATIENT", identifier("STUDY", PatientName="X*"), "PatientID"),  # unique key above is required
        ("PATIENT", identifier("STUDY", PatientID="A*"), "PatientID"),  # ... with a single value
        ("STUDY", identifier("SERIES", Modality="CT"), "StudyInstanceUID"),
        ("STUDY", identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.3\\1.4"), "Series"),
    ],
)
def test_identifiers_the_model_does_not_allow_are_refused(model, ds, needle):
    with pytest.raises(IdentifierError, match=needle):
        parse_query(ds, model)


def test_keys_parse_into_matches_and_universal_keys_only_ask_for_values():
    q = parse_query(
        identifier(
            "STUDY", PatientName="DOE*", StudyDate="20260101-", AccessionNumber="", StudyInstanceUID=""
        ),
        "STUDY",
    )
    assert q.level == "STUDY" and set(q.keys) == {"PatientName", "StudyDate"}
    assert [e.keyword for e in q.requested] == [
        "StudyDate",
        "AccessionNumber",
        "QueryRetrieveLevel",
        "PatientName",
        "StudyInstanceUID",
    ]
    assert not q.unsupported


def test_keys_below_the_level_or_unknown_are_reported_unsupported_not_refused():
    ds = identifier("STUDY", Modality="CT", PatientComments="x", StudyDescription="")
    q = parse_query(ds, "STUDY")
    assert set(q.unsupported) == {"Modality", "PatientComments"} and not q.keys


def test_retrieve_identifiers_need_the_unique_key_and_use_only_unique_keys():
    with pytest.raises(IdentifierError, match="StudyInstanceUID"):
        parse_query(identifier("STUDY", PatientName="X"), "STUDY", retrieve=True)
    q = parse_query(
        identifier("STUDY", StudyInstanceUID="1.2\\1.3", StudyDate="2026"), "STUDY", retrieve=True
    )
    assert set(q.keys) == {"StudyInstanceUID"} and len(q.keys["StudyInstanceUID"].terms) == 2


def test_answer_has_every_requested_element_filled_or_empty():
    ds = identifier(
        "STUDY", PatientName="", StudyDate="", NumberOfStudyRelatedInstances="", PatientComments=""
    )
    q = parse_query(ds, "STUDY")
    answer = response(
        q, {"PatientName": "Doe^John", "StudyDate": "20260102", "NumberOfStudyRelatedInstances": 3}, "GW"
    )
    assert str(answer.PatientName) == "Doe^John" and answer.StudyDate == "20260102"
    assert answer.NumberOfStudyRelatedInstances == 3
    assert answer.PatientComments in (None, "") and answer.QueryRetrieveLevel == "STUDY"
    assert answer.RetrieveAETitle == "GW" and "SpecificCharacterSet" not in answer
    assert Tag(0x0071, 0x0010) not in answer  # our private block only at IMAGE level


def test_image_answers_carry_our_private_block_in_the_slot_asked_for():
    ds = identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.3", SOPInstanceUID="")
    ds.add_new(Tag(0x0071, 0x0011), "LO", "DICOM_CHAIN")
    q = parse_query(ds, "STUDY")
    assert q.private_slot == 0x11
    values = {
        "SOPInstanceUID": "1.4",
        "ChainHeight": 7,
        "ChainVerificationState": "verified",
        "ChainVerifiedAt": "2026-11-24T13:34:04.123456Z",
        "ChainBlockHash": "ab" * 32,
    }
    answer = response(q, values, "GW")
    assert answer[0x0071, 0x0011].value == "DICOM_CHAIN"
    assert answer[0x0071, 0x1103].value == 7
    assert answer[0x0071, 0x1120].value == "VERIFIED"
    assert answer[0x0071, 0x1121].value == "20261124133404.123456+0000"


def test_non_ascii_answers_declare_utf8():
    q = parse_query(identifier("STUDY", PatientName=""), "STUDY")
    answer = response(q, {"PatientName": "Müller^Jürgen"}, "GW")
    assert answer.SpecificCharacterSet == "ISO_IR 192"
