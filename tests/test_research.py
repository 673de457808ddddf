"""Research opt-in (a pure fold over events) and the de-identified, re-chained research export."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

from dicom_chain.carriers.dicom.deidentify import StudyDeidentifier
from dicom_chain.carriers.dicom.embedding import read_block
from dicom_chain.config import Settings
from dicom_chain.errors import ResearchExportRefused
from dicom_chain.events import Event
from dicom_chain.node import Node
from dicom_chain.outbox import Outbox
from dicom_chain.sharing.research import (
    ExportResult,
    export_study,
    opt_in_draft,
    patient_research_events,
    research_opt_in,
    research_settings,
)
from dicom_chain.verify import verify_files, verify_node
from dicom_chain.vocab import EventType

from .conftest import SAMPLE_STUDY, pydicom_file

NOW = "2026-11-29T12:00:00.000000Z"
LATER = "2099-01-01T00:00:00.000000Z"  # after every event a test records
PYDICOM_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm")
CLI = [sys.executable, "-m", "dicom_chain.cli"]

# What names a person, a place or a record: the values the export must not carry (PS3.15 E.1).
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientAddress",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
    "AccessionNumber",
    "DeviceSerialNumber",
)
# Kept by the profile, and saying nothing of the patient: MR_small's institution "TOSHIBA" is part
# of its manufacturer "TOSHIBA_MEC".
RETAINED_KEYWORDS = ("Manufacturer", "ManufacturerModelName", "SoftwareVersions")
SHORTEST_SEARCHED = 4  # shorter values ("O", "12") occur by chance in pixels and in any header


# -- the opt-in fold, pure


def _event(seq: int, kind: EventType, patient: str = "P-1", issuer: str = "", time: str = NOW) -> Event:
    return Event(
        seq=seq,
        prev_hash="0" * 64,
        time=time,
        type=str(kind),
        outcome="success",
        actor="test",
        patient_id=patient,
        study_uid="",
        sop_uid="",
        chain_id="",
        reason="",
        details={"patient_id": patient, "issuer": issuer},
        key_id="",
    )


IN, OUT = EventType.PATIENT_RESEARCH_OPT_IN, EventType.PATIENT_RESEARCH_OPT_OUT


def test_nobody_is_opted_in_without_an_event():
    decision = research_opt_in([], "P-1", "", NOW)
    assert not decision.opted_in and "has not opted in" in decision.reason


def test_the_latest_decision_wins():
    assert research_opt_in([_event(1, IN)], "P-1", "", NOW).opted_in
    out = research_opt_in([_event(1, IN), _event(2, OUT)], "P-1", "", NOW)
    assert not out.opted_in and "opted out" in out.reason and out.event_seq == 2
    assert research_opt_in([_event(2, IN), _event(1, OUT)], "P-1", "", NOW).opted_in  # by sequence


def test_events_after_now_and_of_other_patients_do_not_count():
    assert not research_opt_in([_event(1, IN, time=LATER)], "P-1", "", NOW).opted_in
    assert not research_opt_in([_event(1, IN, patient="P-2")], "P-1", "", NOW).opted_in


def test_an_issuer_limits_the_decision_to_that_issuer():
    assert research_opt_in([_event(1, IN, issuer="")], "P-1", "HOSP", NOW).opted_in
    assert not research_opt_in([_event(1, IN, issuer="OTHER")], "P-1", "HOSP", NOW).opted_in
    assert research_opt_in([_event(1, IN, issuer="HOSP")], "P-1", "HOSP", NOW).opted_in


@given(st.lists(st.booleans(), max_size=12))
def test_the_fold_equals_the_last_decision(decisions):
    events = [_event(i + 1, IN if d else OUT) for i, d in enumerate(decisions)]
    assert research_opt_in(events, "P-1", "", NOW).opted_in == (decisions[-1] if decisions else False)


# -- the export, on SQLite and PostgreSQL


@pytest.fixture
def research_node(tmp_path: Path, db_url: str) -> Iterator[Node]:
    pacs = ("PACS@127.0.0.1:1",)  # a forward destination: research copies must not be queued for it
    n = Node.open(Settings(home=tmp_path / "node", db=db_url, institution="Test Hospital", forward=pacs))
    for path in sorted(SAMPLE_STUDY.glob("*.dcm")):
        n.ingest_file(path, actor="test")
    for name in PYDICOM_FILES:
        n.ingest_file(pydicom_file(name), actor="test")
    yield n
    n.close()


@pytest.fixture
def research_chain(research_node: Node) -> Iterator[Node]:
    """The node's research chain, as the command line opens it."""
    n = Node.open(research_settings(research_node.settings))
    yield n
    n.close()


def _study(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.PatientID)


def _opt(node: Node, patient_id: str, opt_in: bool) -> None:
    node.record(opt_in_draft(patient_id, "", opt_in=opt_in, actor="clerk@ward"))


def _export(node: Node, research: Node, study_uid: str, output: Path) -> ExportResult:
    deidentifier = StudyDeidentifier(seed="test")
    return export_study(node, research, deidentifier, study_uid, output, now=LATER, actor="researcher@lab")


def test_refused_without_opt_in_and_after_opt_out(research_node: Node, research_chain: Node, tmp_path: Path):
    study_uid, patient_id = _study(next(SAMPLE_STUDY.glob("*.dcm")))
    out = tmp_path / "out"
    with pytest.raises(ResearchExportRefused, match="has not opted in"):
        _export(research_node, research_chain, study_uid, out)
    _opt(research_node, patient_id, True)
    _opt(research_node, patient_id, False)
    with pytest.raises(ResearchExportRefused, match="opted out"):
        _export(research_node, research_chain, study_uid, out)
    with pytest.raises(ResearchExportRefused, match="not on this node"):
        _export(research_node, research_chain, "1.2.3.4", out)
    assert not out.exists()  # nothing written
    assert [e.type for e in patient_research_events(research_node.db, patient_id)] == [IN, OUT]
    assert not any(e.type == EventType.RESEARCH_EXPORT for e in research_node.ledger.iter_events())


def _values(ds: Dataset) -> Iterator[tuple[str, str, object]]:
    """(keyword, VR, value) of every element, file meta and sequences included."""
    for elem in [*ds.file_meta, *ds] if hasattr(ds, "file_meta") else ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _values(item)
        else:
            yield elem.keyword, elem.VR, elem.value


def _identifying(sources: list[Path]) -> set[str]:
    """Every identifying value of the source files, as text."""
    found: set[str] = set()
    harmless: set[str] = set()  # the same text as a value that says nothing of the patient
    for path in sources:
        ds = pydicom.dcmread(path)
        for keyword, vr, value in _values(ds):
            values = value if isinstance(value, pydicom.multival.MultiValue) else [value]
            texts = [str(v) for v in values if v not in (None, "")]
            if vr == "UI":  # every instance, series, study, frame of reference UID; not the standard's
                found.update(t for t in texts if t not in UID_dictionary)
            elif vr in ("DA", "DT") or keyword in IDENTIFYING_KEYWORDS:
                found.update(texts)
            elif keyword in RETAINED_KEYWORDS:
                harmless.update(texts)
        found.add(read_block(ds).hash)  # the source block: the link lives only in the ledger
    return {
        t
        for t in found
        if len(t.strip()) >= SHORTEST_SEARCHED
        and len(set(t)) > 1  # "000000000" (MR_small's station) is in every new UID: "2.1000..."
        and not any(t in h for h in harmless)
    }


def _encodings(text: str) -> set[bytes]:
    forms = {text.encode("utf-8"), text.encode("latin-1", "ignore"), text.encode("ascii", "ignore")}
    forms.add(text.replace("^", " ").encode("utf-8"))  # a name as a viewer writes it
    return {f for f in forms if len(f) >= SHORTEST_SEARCHED}


@pytest.mark.parametrize("source", ["ct-demo", *PYDICOM_FILES])
def test_export_carries_no_identifying_value_and_verifies(
    research_node: Node, research_chain: Node, tmp_path: Path, source: str
):
    sources = sorted(SAMPLE_STUDY.glob("*.dcm")) if source == "ct-demo" else [pydicom_file(source)]
    study_uid, patient_id = _study(sources[0])
    stored = sorted((research_node.storage.path("") / "").rglob("*.dcm"))
    stored_sources = [p for p in stored if _study(p)[0] == study_uid]  # the chained files: with blocks
    assert len(stored_sources) == len(sources)
    _opt(research_node, patient_id, True)
    out = tmp_path / "out"

    result = _export(research_node, research_chain, study_uid, out)

    files = sorted(out.glob("*.dcm"))
    assert len(files) == len(sources) == len(result.files)
    data = b"".join(f.read_bytes() for f in files)
    secrets = _identifying(stored_sources)
    assert patient_id in secrets and study_uid in secrets
    leaked = sorted(s for s in secrets for form in _encodings(s) if form in data)
    assert leaked == []
    # the copies open, carry a block of their own, and verify on their own with the node's key
    copies = [pydicom.dcmread(f) for f in files]
    assert all(c.PatientIdentityRemoved == "YES" for c in copies)
    assert all(not any(e.tag.is_private and e.tag.group != 0x0071 for e in c) for c in copies)
    report = verify_files(files, trusted_keys=frozenset({research_chain.key.public_key}))
    assert report.ok, report.to_dict()
    assert verify_node(research_node.ledger, research_node.storage).ok
    # the study's shape survives: one study, series as in the source, references consistent
    originals = [pydicom.dcmread(p, stop_before_pixels=True) for p in stored_sources]
    assert {c.StudyInstanceUID for c in copies} == {result.deidentified_study_uid}
    assert len({c.SeriesInstanceUID for c in copies}) == len({o.SeriesInstanceUID for o in originals})
    if "FrameOfReferenceUID" in originals[0]:
        assert len({c.FrameOfReferenceUID for c in copies}) == len({o.FrameOfReferenceUID for o in originals})
    assert all(c.file_meta.MediaStorageSOPInstanceUID == c.SOPInstanceUID for c in copies)
    # the event holds the links, source block -> copy block; the files do not
    (event,) = [e for e in research_node.ledger.iter_events() if e.type == EventType.RESEARCH_EXPORT]
    assert (event.patient_id, event.study_uid, event.actor) == (patient_id, study_uid, "researcher@lab")
    details = event.details
    assert details["deidentified_study_uid"] == result.deidentified_study_uid
    assert details["source_study_uid"] == study_uid and details["instances"] == len(files)
    assert details["profile"] == "basic" and details["output"] == str(out)
    source_hashes = {read_block(pydicom.dcmread(p)).hash for p in stored_sources}
    copy_hashes = {read_block(c).hash for c in copies}
    assert {b["source"] for b in details["blocks"]} == source_hashes
    assert {b["copy"] for b in details["blocks"]} == copy_hashes
    # research copies are not clinical images: nothing of them is queued for the PACS
    assert Outbox(research_node.ledger, None).stats()[0].pending == len(list(stored))


def test_an_existing_output_with_files_is_refused(research_node: Node, research_chain: Node, tmp_path: Path):
    study_uid, patient_id = _study(pydicom_file("CT_small.dcm"))
    _opt(research_node, patient_id, True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ResearchExportRefused, match="not an empty directory"):
        _export(research_node, research_chain, study_uid, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# -- the command line


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=120
    )


def test_command_line_refuses_then_exports_a_verifiable_copy(tmp_path: Path):
    assert _run("ingest", str(SAMPLE_STUDY), cwd=tmp_path).returncode == 0
    study_uid, patient_id = _study(next(SAMPLE_STUDY.glob("*.dcm")))
    out = tmp_path / "research"

    refused = _run("research-export", "--study", study_uid, "--output", str(out), cwd=tmp_path)
    assert refused.returncode == 1 and "has not opted in" in refused.stderr
    assert not out.exists()

    opted = _run("patient", "research", patient_id, "--opt-in", cwd=tmp_path)
    assert opted.returncode == 0, opted.stderr
    exported = _run("research-export", "--study", study_uid, "--output", str(out), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert len(list(out.glob("*.dcm"))) == len(list(SAMPLE_STUDY.glob("*.dcm")))
    key = _run("keys", "export", "--key-file", "var/research.key", cwd=tmp_path)  # the research chain's
    assert key.returncode == 0, key.stderr
    (tmp_path / "research.pub").write_text(key.stdout)
    verified = _run("verify", "--public-key", "research.pub", str(out), cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout
    node = _run("verify", "--db", "sqlite:///var/ledger.db", "--storage", "var/storage", cwd=tmp_path)
    assert node.returncode == 0, node.stdout  # both chains, and the event log with the export

    _run("patient", "research", patient_id, "--opt-out", cwd=tmp_path)
    again = _run("research-export", "--study", study_uid, "--output", str(tmp_path / "again"), cwd=tmp_path)
    assert again.returncode == 1 and "opted out" in again.stderr
