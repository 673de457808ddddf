"""Query/Retrieve with DCMTK's own clients: findscu, movescu into a storescp, getscu.

The answers are checked against a brute-force filter over the stored files (tests/test_index.py),
the retrieved files with ``verify``: what arrives at a workstation is still chained.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.verify import verify_files

from .conftest import SAMPLE_STUDY
from .gateways import start_server
from .peers import free_port, require_tool, wait_listening
from .test_index import brute_force, fill, stored_entities

DCMTK_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def workstation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp as the radiologist's workstation, the C-MOVE destination."""
    storescp = require_tool("storescp", "dcmtk")
    out = tmp_path_factory.mktemp("workstation")
    port = free_port()
    proc = subprocess.Popen([storescp, "-aet", "WORKSTATION", "-od", str(out), str(port)])
    wait_listening(port, proc)
    yield port, out
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, workstation) -> Iterator[tuple[Node, int]]:
    ws_port, _ = workstation
    home = tmp_path_factory.mktemp("gw")
    node = Node.open(Settings(home=home, move_destinations=(f"WORKSTATION@127.0.0.1:{ws_port}",)))
    fill(node)
    port = free_port()
    ae = start_server(node, ae_title="DICOMCHAIN", host="127.0.0.1", port=port)
    yield node, port
    ae.shutdown()
    node.close()


def findscu(port: int, out: Path, *keys: str, model: str = "-S") -> list[Dataset]:
    tool = require_tool("findscu", "dcmtk")
    out.mkdir(parents=True, exist_ok=True)
    args = [tool, model, "-aec", "DICOMCHAIN", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = subprocess.run(
        [*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=DCMTK_TIMEOUT_S
    )
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def as_identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        ("STUDY", {"PatientName": "doe*"}),
        ("STUDY", {"StudyDate": "20250101-20260101"}),
        ("STUDY", {"ModalitiesInStudy": "MR"}),
        ("STUDY", {"PatientID": "P-1\\P-3"}),
        ("STUDY", {"PatientName": "*"}),
        ("STUDY", {"StudyTime": "14"}),  # the hour (stored 143000.5), not 14:00:00 only
    ],
)
def test_findscu_study_level_matches_the_stored_files(gateway, tmp_path, level, keys):
    node, port = gateway
    expected = brute_force(stored_entities(node), as_identifier(level, **keys), "STUDY")
    answers = findscu(
        port,
        tmp_path,
        f"QueryRetrieveLevel={level}",
        "StudyInstanceUID",
        "NumberOfStudyRelatedInstances",
        *(f"{k}={v}" for k, v in keys.items()),
    )
    assert {a.StudyInstanceUID for a in answers} == expected and expected
    entities = stored_entities(node)["IMAGE"].values()
    for answer in answers:
        assert answer.NumberOfStudyRelatedInstances == sum(
            1 for e in entities if e["StudyInstanceUID"] == answer.StudyInstanceUID
        )


def test_findscu_every_level_of_patient_root(gateway, tmp_path):
    node, port = gateway
    entities = stored_entities(node)
    patients = findscu(
        port,
        tmp_path / "p",
        "QueryRetrieveLevel=PATIENT",
        "PatientID",
        "NumberOfPatientRelatedStudies",
        model="-P",
    )
    assert {p.PatientID for p in patients} == set(entities["PATIENT"])
    studies = findscu(
        port, tmp_path / "st", "QueryRetrieveLevel=STUDY", "PatientID=P-1", "StudyInstanceUID", model="-P"
    )
    assert (
        len(studies) == 2 == next(p for p in patients if p.PatientID == "P-1").NumberOfPatientRelatedStudies
    )
    study = studies[0].StudyInstanceUID
    series = findscu(
        port,
        tmp_path / "se",
        "QueryRetrieveLevel=SERIES",
        "PatientID=P-1",
        f"StudyInstanceUID={study}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
        model="-P",
    )
    assert {s.SeriesInstanceUID for s in series} == {
        e["SeriesInstanceUID"] for e in entities["SERIES"].values() if e["StudyInstanceUID"] == study
    }
    first = series[0]
    images = findscu(
        port,
        tmp_path / "im",
        "QueryRetrieveLevel=IMAGE",
        "PatientID=P-1",
        f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={first.SeriesInstanceUID}",
        "SOPInstanceUID",
        model="-P",
    )
    assert len(images) == first.NumberOfSeriesRelatedInstances == 2
    assert all(i[0x0071, 0x0010].value.strip() == "DICOM_CHAIN" for i in images)


def test_findscu_refused_identifier_gets_a_failure_status(gateway, tmp_path):
    _, port = gateway
    tool = require_tool("findscu", "dcmtk")
    result = subprocess.run(
        [
            tool,
            "-P",
            "-v",
            "-aec",
            "DICOMCHAIN",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientName=*",
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=DCMTK_TIMEOUT_S,
    )
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr


def test_movescu_delivers_the_study_to_storescp_still_chained(gateway, workstation):
    node, port = gateway
    _, out = workstation
    study = pydicom.dcmread(next(SAMPLE_STUDY.glob("*.dcm"))).StudyInstanceUID
    tool = require_tool("movescu", "dcmtk")
    result = subprocess.run(
        [
            tool,
            "-S",
            "-aec",
            "DICOMCHAIN",
            "-aem",
            "WORKSTATION",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=DCMTK_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    files = sorted(out.iterdir())
    assert len(files) == 8
    report = verify_files(files)
    assert report.ok and report.blocks_checked == 8
    event = [e for e in node.ledger.iter_events() if e.type == "retrieve.move"][-1]
    assert (event.actor, event.details["completed"], event.details["failed"]) == ("MOVESCU", 8, 0)


def test_getscu_retrieves_a_series_on_its_own_association(gateway, tmp_path):
    node, port = gateway
    entities = stored_entities(node)
    series = next(e for e in entities["SERIES"].values() if e["PatientID"] == "P-3")
    tool = require_tool("getscu", "dcmtk")
    result = subprocess.run(
        [
            tool,
            "-S",
            "-aec",
            "DICOMCHAIN",
            "-od",
            str(tmp_path),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={series['StudyInstanceUID']}",
            "-k",
            f"SeriesInstanceUID={series['SeriesInstanceUID']}",
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=DCMTK_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.iterdir())
    assert {pydicom.dcmread(f).SOPInstanceUID for f in files} == {
        e["SOPInstanceUID"]
        for e in entities["IMAGE"].values()
        if e["SeriesInstanceUID"] == series["SeriesInstanceUID"]
    }
    assert verify_files(files).ok
    event = [e for e in node.ledger.iter_events() if e.type == "retrieve.get"][-1]
    assert event.actor == "GETSCU" and event.details["completed"] == len(files) == 2


def test_findscu_answers_each_study_with_its_own_patient_name(make_gateway, node: Node, tmp_path):
    """Two studies under one Patient ID, one anonymised and stored last: findscu sees each study's
    own name (it used to see the last one received for both), and a name search finds only its own."""
    from dicom_chain.carriers.dicom.carrier import item_from_dataset

    from .test_index import identity_study

    real, anonymised = identity_study(61, "Test^S R"), identity_study(62, "Anonymized")
    for ds in real + anonymised:
        node.ingest(item_from_dataset(ds))
    port = make_gateway(ae_title="DICOMCHAIN").settings.port
    answers = findscu(
        port, tmp_path / "all", "QueryRetrieveLevel=STUDY", "PatientID=P-9", "StudyInstanceUID", "PatientName"
    )
    assert {(a.StudyInstanceUID, str(a.PatientName)) for a in answers} == {
        (real[0].StudyInstanceUID, "Test^S R"),
        (anonymised[0].StudyInstanceUID, "Anonymized"),
    }
    named = findscu(
        port, tmp_path / "named", "QueryRetrieveLevel=STUDY", "PatientName=test*", "StudyInstanceUID"
    )
    assert [a.StudyInstanceUID for a in named] == [real[0].StudyInstanceUID]
