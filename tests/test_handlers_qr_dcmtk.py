"""Query/Retrieve with DCMTK's own clients: findscu, movescu into a storescp, getscu.

The answers are checked against a brute-force filter over the stored files (tests/test_index.py),
the retrieved files with ``verify``: what arrives at a workstation is still chained.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from dicom_chain.cli import main
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.qr import index
from dicom_chain.qr.index import INSTANCES
from dicom_chain.verify import verify_files

from .conftest import SAMPLE_STUDY, read
from .gateways import start_server
from .peers import free_port, require_tool, wait_listening
from .test_index import brute_force, fill, stored_entities
from .test_privatetags import dcmtk_env

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


def _findscu_dump(port: int, *options: str, env: dict[str, str] | None = None) -> str:
    """findscu's own print of an IMAGE-level answer (what a PACS administrator sees)."""
    first = pydicom.dcmread(sorted(SAMPLE_STUDY.glob("*.dcm"))[0])
    tool = require_tool("findscu", "dcmtk")
    keys = [
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={first.StudyInstanceUID}",
        f"SeriesInstanceUID={first.SeriesInstanceUID}",
        f"SOPInstanceUID={first.SOPInstanceUID}",
    ]
    args = [tool, "-S", *options, "-aec", "DICOMCHAIN", *(a for k in keys for a in ("-k", k))]
    result = subprocess.run(
        [*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=DCMTK_TIMEOUT_S, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "-X" in options or "Find Response: 1 (Pending)" in result.stdout + result.stderr
    return result.stdout + result.stderr


def test_findscu_image_answers_carry_our_private_vrs(gateway):
    """findscu proposes Explicit VR first by default: the answer comes in it, so our private
    elements show their VR and value (a CS, a UL), not ``??`` and hex. (Its live print names no
    private element whatever the dictionary: it resolves no private creator in network data.)"""
    _, port = gateway
    shown = _findscu_dump(port)
    assert "Used TransferSyntax: Little Endian Explicit" in shown
    assert re.search(r"\(0071,1020\) CS \[VERIFIED\]", shown), shown
    assert re.search(r"\(0071,1022\) UL 1 ", shown), shown
    assert "??" not in shown


def test_findscu_offering_only_implicit_vr_still_gets_answers(gateway, tmp_path):
    """A peer that proposes Implicit VR alone gets it (findscu's live print then shows ``??``);
    the saved answer, dumped with our dictionary, reads every field by name and VR."""
    _, port = gateway
    plain = _findscu_dump(port, "-xi")
    assert "Used TransferSyntax: Little Endian Implicit" in plain
    _findscu_dump(port, "-xi", "-X", "-od", str(tmp_path))
    dcmdump = require_tool("dcmdump", "dcmtk")
    [answer] = tmp_path.glob("rsp*.dcm")
    named = subprocess.run(
        [dcmdump, str(answer)], capture_output=True, text=True, env=dcmtk_env(), timeout=60
    )
    assert re.search(r"\(0071,1020\) CS \[VERIFIED\] .* ChainVerificationState", named.stdout), named.stdout
    assert re.search(r"\(0071,1022\) UL 1 .* ChainNumberOfVersions", named.stdout), named.stdout


# -- compressed instances: getscu and movescu asking for each stored syntax, or uncompressed only --

EXPLICIT = "1.2.840.10008.1.2.1"
# pydicom's files that pydicom + pylibjpeg decode: (file, getscu's option preferring its syntax)
COMPRESSED = {
    "MR_small_jpeg_ls_lossless.dcm": "+xt",  # JPEG-LS lossless
    "MR_small_jp2klossless.dcm": "+xv",  # JPEG 2000 lossless
    "MR_small_RLE.dcm": "+xr",  # RLE lossless
    "SC_rgb_jpeg_gdcm.dcm": "+xs",  # JPEG lossless, SV1
    "SC_rgb_jpeg_dcmtk.dcm": "+xy",  # JPEG baseline: lossy
}


@pytest.fixture(scope="module")
def destinations(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[int, Path]]]:
    """Two storescp: PLAIN takes uncompressed only (its default), ANYTS every syntax it knows."""
    storescp = require_tool("storescp", "dcmtk")
    found, procs = {}, []
    for aet, options in (("PLAIN", []), ("ANYTS", ["+xa"])):
        out = tmp_path_factory.mktemp(aet.lower())
        port = free_port()
        proc = subprocess.Popen([storescp, *options, "-aet", aet, "-od", str(out), str(port)])
        wait_listening(port, proc)
        found[aet] = (port, out)
        procs.append(proc)
    yield found
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module", params=list(COMPRESSED))
def compressed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, destinations
) -> Iterator[tuple[Node, int, str, Dataset]]:
    """A gateway holding one of COMPRESSED (a new SOP Instance UID: the MR files share theirs).
    One each: a C-GET peer's context for a SOP class takes one syntax for all the node holds of
    that class, so mixed holdings go uncompressed (test_contexts.py)."""
    name = request.param
    home = tmp_path_factory.mktemp("compressed")
    moves = tuple(f"{aet}@127.0.0.1:{port}" for aet, (port, _) in destinations.items())
    node = Node.open(Settings(home=home, move_destinations=moves))
    ds = read(name)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(home / name, enforce_file_format=True)
    node.ingest_file(home / name)
    port = free_port()
    ae = start_server(node, ae_title="DICOMCHAIN", host="127.0.0.1", port=port)
    yield node, port, name, ds
    ae.shutdown()
    node.close()


def image_keys(ds: Dataset) -> list[str]:
    keys = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={ds.StudyInstanceUID}"]
    keys += [f"SeriesInstanceUID={ds.SeriesInstanceUID}", f"SOPInstanceUID={ds.SOPInstanceUID}"]
    return [arg for key in keys for arg in ("-k", key)]


def verify_cli(home: Path, path: Path) -> tuple[int, str]:
    """``dicom-chain verify --home HOME FILE``: the node's key pinned."""
    result = CliRunner().invoke(main, ["verify", "--home", str(home), str(path)])
    return result.exit_code, result.output


def expect_verified(home: Path, path: Path, name: str) -> None:
    """Lossless (as stored or decompressed): verify exits 0. Lossy pixels decompressed: exit 1,
    named lossy-reencoded, every other attribute intact (docs/design.md 1.6), never altered."""
    code, output = verify_cli(home, path)
    if (
        UID(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_compressed
        or name != "SC_rgb_jpeg_dcmtk.dcm"
    ):
        assert code == 0, output
    else:
        assert code == 1 and "lossy-reencoded" in output and "altered" not in output.replace("lossy", ""), (
            output
        )


@pytest.mark.parametrize("prefer", ["stored", "uncompressed"])
def test_getscu_gets_each_compressed_syntax_as_stored_or_decompressed(compressed, tmp_path, prefer):
    node, port, name, ds = compressed
    options = [COMPRESSED[name]] if prefer == "stored" else []  # getscu's default: uncompressed only
    tool = require_tool("getscu", "dcmtk")
    result = subprocess.run(
        [
            tool,
            "-S",
            *options,
            "-aec",
            "DICOMCHAIN",
            "-od",
            str(tmp_path),
            *image_keys(ds),
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=DCMTK_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    [path] = tmp_path.iterdir()
    got = pydicom.dcmread(path)
    expected = ds.file_meta.TransferSyntaxUID if prefer == "stored" else EXPLICIT
    assert (got.SOPInstanceUID, got.file_meta.TransferSyntaxUID) == (ds.SOPInstanceUID, expected)
    expect_verified(node.settings.home, path, name)
    event = [e for e in node.ledger.iter_events() if e.type == "retrieve.get"][-1]
    assert (event.details["completed"], event.details["failed"]) == (1, 0)


@pytest.mark.parametrize("destination", ["PLAIN", "ANYTS"])
def test_movescu_moves_each_compressed_syntax_as_the_destination_takes_it(
    compressed, destinations, destination
):
    """PLAIN takes uncompressed only: decompressed; ANYTS takes the stored syntax: as stored."""
    node, port, name, ds = compressed
    _, out = destinations[destination]
    tool = require_tool("movescu", "dcmtk")
    result = subprocess.run(
        [tool, "-S", "-aec", "DICOMCHAIN", "-aem", destination, *image_keys(ds), "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=DCMTK_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    [path] = [p for p in out.iterdir() if pydicom.dcmread(p).SOPInstanceUID == ds.SOPInstanceUID]
    expected = EXPLICIT if destination == "PLAIN" else ds.file_meta.TransferSyntaxUID
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == expected
    expect_verified(node.settings.home, path, name)
    event = [e for e in node.ledger.iter_events() if e.type == "retrieve.move"][-1]
    assert (event.details["completed"], event.details["failed"]) == (1, 0)


def test_getscu_of_a_study_with_an_altered_instance_gets_the_rest_and_a_warning_status(gateway, tmp_path):
    """PS3.4 C.4.3.1.4: B000, sub-operations complete with one or more failures; the reason is on
    the record, the altered file is not among those received."""
    node, port = gateway
    entities = stored_entities(node)
    series = next(e for e in entities["SERIES"].values() if e["PatientID"] == "P-3")
    uids = sorted(
        e["SOPInstanceUID"]
        for e in entities["IMAGE"].values()
        if e["SeriesInstanceUID"] == series["SeriesInstanceUID"]
    )
    altered = uids[0]
    mark = INSTANCES.update().where(INSTANCES.c.sop_instance_uid == altered)
    index.before_read(node.db)  # the row to mark is written after the response
    with node.db.writing() as session:
        session.execute(mark.values(verification="altered"))
    try:
        tool = require_tool("getscu", "dcmtk")
        keys = ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={series['StudyInstanceUID']}"]
        keys.append(f"SeriesInstanceUID={series['SeriesInstanceUID']}")
        result = subprocess.run(
            [tool, "-S", "-v", "-aec", "DICOMCHAIN", "-od", str(tmp_path)]
            + [arg for key in keys for arg in ("-k", key)]
            + ["127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=DCMTK_TIMEOUT_S,
        )
    finally:
        with node.db.writing() as session:
            session.execute(mark.values(verification="verified"))
    output = result.stdout + result.stderr
    # getscu leaves the final response's identifier (Failed SOP Instance UID List) unread, so its
    # release then fails with "DUL P-Data PDU arrived": DCMTK's, whenever a sub-operation failed
    assert "DIMSE status is: Warning: SubOperationsCompleteOneOrMoreFailures" in output, output
    assert sorted(pydicom.dcmread(p).SOPInstanceUID for p in tmp_path.iterdir()) == uids[1:]
    event = [e for e in node.ledger.iter_events() if e.type == "retrieve.get"][-1]
    assert [f["sop_instance_uid"] for f in event.details["failures"]] == [altered]
    assert event.details["failures"][0]["reason"].startswith("altered since receipt: content hash mismatch")


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
