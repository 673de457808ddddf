"""The patient's access log, from a gateway that really ran: a study received from the sample
data and forwarded, wildcard C-FINDs that disclosed the patient among others (queries count as
access), a C-MOVE to a registered institution's workstation, and consent, release and research
events recorded as the sharing commands record them. Every format tells the patient's whole
story and nobody else's; the proof beside it verifies, and an edited record is caught."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_chain.audit import AuditFilter, accesslog, export, jsonl, verify_export
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.events import EventDraft
from dicom_chain.node import Node
from dicom_chain.qr.runs import disclosed, start_find
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.vocab import EventType, Outcome, RunStatus

from .conftest import SAMPLE_STUDY
from .gateways import InProcessGateway
from .peers import free_port
from .test_audit_export import StoreSCP, _scu, wait_for

PATIENT = pydicom.dcmread(next(SAMPLE_STUDY.glob("*.dcm"))).PatientID
STUDY_UID = pydicom.dcmread(next(SAMPLE_STUDY.glob("*.dcm"))).StudyInstanceUID
OTHER, THIRD = "OTHER-7", "THIRD-3"
CONSENT_ID = str(uuid.UUID(int=1))
FOREIGN_CONSENT_ID = str(uuid.UUID(int=2))
NOW = "2026-11-29T12:00:00.000000Z"


def _find(assoc, model, level: str, **keys: str) -> list[Dataset]:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientID = ""
    for k, v in keys.items():
        setattr(ds, k, v)
    return [answer for status, answer in assoc.send_c_find(ds, model) if status.Status in (0xFF00, 0xFF01)]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A gateway that received the sample study and two others, answered wildcard queries,
    moved the study to Hospital B's workstation; then sharing events about the patient."""
    pacs, workstation = StoreSCP("PACS"), StoreSCP("RAD1")
    home = tmp_path_factory.mktemp("accesslog")
    port = free_port()
    settings = Settings(
        home=home,
        institution="Hospital A",
        forward=(f"PACS@127.0.0.1:{pacs.port}",),
        move_destinations=(f"RAD1@127.0.0.1:{workstation.port}",),
        host="127.0.0.1",
        port=port,
        allow=("CT1",),  # store only
        peers=("RADIOLOGIST=find,move,get",),
    )
    node = Node.open(settings)
    node.record(
        EventDraft(
            EventType.INSTITUTION_ADDED,
            actor="admin@host",
            details={
                "name": "Hospital B",
                "ae_title": "RAD1",
                "host": "127.0.0.1",
                "port": workstation.port,
                "key_id": "b" * 16,
                "public_key": "00" * 32,
                "tls_cert": "",
            },
        )
    )
    node.record(
        EventDraft(
            EventType.CONSENT_GRANTED,
            actor="clerk@host",
            patient_id=PATIENT,
            details={
                "consent_id": CONSENT_ID,
                "patient_id": PATIENT,
                "issuer": "",
                "institution": "Hospital B",
                "from": "2026-11-01T00:00:00Z",
                "until": "2099-12-01T00:00:00Z",
                "studies": [],
                "purpose": "treatment",
                "source": "cli",
            },
        )
    )
    node.record(  # someone else's consent: not in this patient's log
        EventDraft(
            EventType.CONSENT_GRANTED,
            actor="clerk@host",
            patient_id=OTHER,
            details={
                "consent_id": FOREIGN_CONSENT_ID,
                "patient_id": OTHER,
                "issuer": "",
                "institution": "Hospital B",
                "from": "2026-11-01T00:00:00Z",
                "until": "2099-12-01T00:00:00Z",
                "studies": [],
                "purpose": "research",
                "source": "cli",
            },
        )
    )
    gateway = InProcessGateway(node)
    gateway.start()
    try:
        studies = [
            [pydicom.dcmread(p) for p in sorted(SAMPLE_STUDY.glob("*.dcm"))],
            list(ct_study(StudySpec(seed=77, instances=2, rows=8, columns=8, patient_id=OTHER))),
            list(ct_study(StudySpec(seed=78, instances=1, rows=8, columns=8, patient_id=THIRD))),
        ]
        assoc = _scu("CT1", port)
        assert all(assoc.send_c_store(ds).Status == 0 for study in studies for ds in study)
        assoc.release()
        assoc = _scu("RADIOLOGIST", port)
        assert len(_find(assoc, StudyRootQueryRetrieveInformationModelFind, "STUDY")) == 3  # everyone
        assert len(_find(assoc, StudyRootQueryRetrieveInformationModelFind, "STUDY", PatientID="*T*")) == 2
        query = Dataset()
        query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", STUDY_UID
        moved = list(assoc.send_c_move(query, "RAD1", StudyRootQueryRetrieveInformationModelMove))
        assert moved[-1][0].Status == 0
        assoc.release()
        wait_for(lambda: node.outbox.pending_count() == 0, timeout=60)
        assert workstation.count == len(studies[0])
    finally:
        gateway.stop()
        pacs.ae.shutdown()
        workstation.ae.shutdown()
    for draft in (
        EventDraft(
            EventType.RELEASE_GRANTED,
            actor="RAD1",
            patient_id=PATIENT,
            study_uid=STUDY_UID,
            reason="consent for Hospital B until 2099-12-01",
            details={
                "to": "Hospital B",
                "purpose": "treatment",
                "consent_id": CONSENT_ID,
                "reasons": ["consent for Hospital B until 2099-12-01"],
                "policy_hash": "ab" * 32,
                "via": "c-move",
                "instances": 8,
            },
        ),
        EventDraft(
            EventType.RELEASE_DENIED,
            outcome=Outcome.MINOR_FAILURE,
            actor="HOSPC",
            patient_id=PATIENT,
            study_uid=STUDY_UID,
            reason="no consent for Hospital C",
            details={
                "to": "Hospital C",
                "purpose": "second-opinion",
                "consent_id": None,
                "reasons": ["no consent for Hospital C"],
                "policy_hash": "ab" * 32,
                "via": "c-move",
                "instances": 0,
            },
        ),
        EventDraft(
            EventType.CONSENT_REVOKED,
            actor="clerk@host",
            patient_id=PATIENT,
            details={"consent_id": CONSENT_ID, "institution": "Hospital B", "reason": "treatment finished"},
        ),
        EventDraft(
            EventType.PATIENT_RESEARCH_OPT_IN,
            actor="clerk@host",
            patient_id=PATIENT,
            details={"patient_id": PATIENT, "issuer": ""},
        ),
        EventDraft(
            EventType.RESEARCH_EXPORT,
            actor="researcher@host",
            patient_id=PATIENT,
            study_uid=STUDY_UID,
            details={
                "output": "/tmp/deid",
                "profile": "basic",
                "instances": 8,
                "source_study_uid": STUDY_UID,
                "deidentified_study_uid": "2.25.1",
                "blocks": [],
            },
        ),
        EventDraft(
            EventType.PATIENT_RESEARCH_OPT_OUT,
            actor="clerk@host",
            patient_id=PATIENT,
            details={"patient_id": PATIENT, "issuer": ""},
        ),
    ):
        node.record(draft)
    yield node
    node.close()


def _about(node: Node, patient: str) -> list[int]:
    """Sequence numbers of the events about ``patient``, read straight from the ledger."""
    seqs = []
    for event, _ in node.ledger.iter_events_with_hash():
        if event.patient_id == patient or patient in (event.details.get("patients") or []):
            seqs.append(event.seq)
    return seqs


# -- queries count as access --------------------------------------------------------------------


def test_a_wildcard_find_records_every_patient_it_disclosed(ran: Node):
    finds = [e for e, _ in ran.ledger.iter_events_with_hash() if e.type == EventType.QUERY_FIND]
    everyone, some = finds[0], finds[1]
    assert everyone.details["patients"] == sorted([PATIENT, OTHER, THIRD]) and everyone.patient_id == ""
    assert some.details["patients"] == sorted([OTHER, THIRD]) and "patients_beyond" not in some.details


def test_a_find_of_one_patient_keeps_the_patient_column(ran: Node, tmp_path: Path):
    gateway = InProcessGateway(ran)
    gateway.start()
    try:
        assoc = _scu("RADIOLOGIST", ran.settings.port)
        answers = _find(assoc, StudyRootQueryRetrieveInformationModelFind, "STUDY", PatientID=OTHER)
        assoc.release()
    finally:
        gateway.stop()
    assert len(answers) == 1
    last = [e for e, _ in ran.ledger.iter_events_with_hash() if e.type == EventType.QUERY_FIND][-1]
    assert last.patient_id == OTHER and last.details["patients"] == [OTHER]


MANY_PATIENTS = 230  # more than the 200 an earlier version named before it only counted the rest


def test_a_sweep_of_many_patients_names_every_one_and_each_finds_it(tmp_path: Path):
    """A wildcard C-FIND over an index of 230 patients: every one is named in the query's event,
    so ``audit export --patient`` finds the disclosure for the last of them too (it was counted,
    not named, when the list stopped at 200)."""
    node = Node.open(Settings(home=tmp_path / "home"))
    try:
        patients = [f"P{i:04d}" for i in range(MANY_PATIENTS)]
        for i, patient in enumerate(patients):
            [ds] = ct_study(StudySpec(seed=1000 + i, instances=1, rows=4, columns=4, patient_id=patient))
            node.ingest(item_from_dataset(ds))
        query = Dataset()
        query.QueryRetrieveLevel, query.PatientID = "STUDY", ""
        run = start_find(node, query, "STUDY", "RADIOLOGIST", "GW", peer="10.1.2.3")
        assert sum(1 for _ in run.answers()) == MANY_PATIENTS
        run.finish(RunStatus.COMPLETED)
        [find] = [e for e, _ in node.ledger.iter_events_with_hash() if e.type == EventType.QUERY_FIND]
        assert find.details["patients"] == patients and "patients_beyond" not in find.details
        assert find.details["peer"] == "10.1.2.3"
        out = tmp_path / "last.jsonl"
        export(
            node.ledger, node.key, "json", out, AuditFilter(patient=patients[-1]), actor="o", source_id="GW"
        )
        assert [r["seq"] for r in jsonl.read(out) if r["type"] == EventType.QUERY_FIND] == [find.seq]
    finally:
        node.close()
    assert disclosed(set()) == {"patients": []}


def test_audit_export_for_a_patient_selects_the_queries_that_disclosed_them(ran: Node, tmp_path: Path):
    about = _about(ran, THIRD)  # before the export, which is itself an event about the patient
    out = tmp_path / "p.jsonl"
    signed = export(ran.ledger, ran.key, "json", out, AuditFilter(patient=THIRD), actor="o", source_id="GW")
    records = list(jsonl.read(out))
    assert [r["seq"] for r in records] == about
    assert sum(r["type"] == EventType.QUERY_FIND for r in records) == 2  # both wildcards named THIRD
    # every other event between the first and the last of the patient's is accounted for (how many
    # there are depends on when the forwarder's events landed between the queries)
    assert signed["statement"]["skipped_count"] == about[-1] - about[0] + 1 - len(about)
    assert verify_export(out, frozenset({ran.key.public_key}))[0].ok


# -- the access log -----------------------------------------------------------------------------


def _write(node: Node, tmp_path: Path, fmt: str) -> tuple[Path, dict]:
    out = tmp_path / f"log.{fmt}"
    signed = accesslog.write(
        node.ledger, node.key, PATIENT, out, fmt, actor="patient-desk@host", source_id="GW", now=NOW
    )
    return out, signed


def test_the_text_log_tells_the_whole_story_in_plain_words(ran: Node, tmp_path: Path):
    about = _about(ran, PATIENT)
    out, signed = _write(ran, tmp_path, "text")
    text = out.read_text(encoding="utf-8")
    expected = [
        "Your CT scan of 2026-01-01 was received from the device CT1 and stored on ",
        "(8 images)",
        "was copied to the hospital's image archive PACS",
        "Hospital B's workstation RAD1 retrieved your CT scan of 2026-01-01 on ",
        "at the request of RADIOLOGIST (8 images), under your consent of 2026-11-01 until 2099-12-01",
        "The workstation RADIOLOGIST searched the records on ",
        "was shown your details, together with 2 other patients",
        "You allowed Hospital B to see all your studies for treatment from 2026-11-01 until 2099-12-01",
        "was released to Hospital B for treatment",
        "Hospital C asked for your CT scan of 2026-01-01 for second-opinion on ",
        "it was refused: no consent for Hospital C",
        "Your consent of 2026-11-01 for Hospital B was withdrawn on ",
        "You agreed on ",
        "You withdrew on ",
        "A copy of your CT scan of 2026-01-01 with your name, identifiers and dates removed",
        f"dicom-chain audit verify log.text{accesslog.EVENTS_SUFFIX}",
    ]
    for phrase in expected:
        assert phrase in text, (phrase, text)
    assert OTHER not in text and THIRD not in text and "research from" not in text
    assert signed["statement"]["count"] == len(about)


def test_json_entries_cover_every_event_about_the_patient_exactly_once(ran: Node, tmp_path: Path):
    about = _about(ran, PATIENT)
    out, _ = _write(ran, tmp_path, "json")
    doc = json.loads(out.read_text(encoding="utf-8"))
    seqs = [ref["seq"] for entry in doc["entries"] for ref in entry["events"]]
    assert sorted(seqs) == about and len(seqs) == len(set(seqs))
    received = [e for e in doc["entries"] if e["type"] == EventType.INSTANCE_RECEIVED]
    assert len(received) == 1 and len(received[0]["events"]) == 8  # one sentence for the study
    source = tmp_path / doc["export"]["export_file"]
    assert [r["seq"] for r in jsonl.read(source)] == about
    assert doc["export"]["count"] == len(about)
    assert OTHER not in out.read_text(encoding="utf-8")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.lang = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag == "html":
            self.lang = dict(attrs).get("lang") or ""

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_html_log_is_one_self_contained_accessible_page(ran: Node, tmp_path: Path):
    out, _ = _write(ran, tmp_path, "html")
    raw = out.read_text(encoding="utf-8")
    page = _Page()
    page.feed(raw)
    page.close()
    assert page.lang == "en" and {"h1", "h2", "table", "caption", "th", "style", "main"} <= set(page.tags)
    assert "<script" not in raw.lower() and "http" not in raw.lower() and "<link" not in raw.lower()
    assert not [v for k, v in page.attrs if k in {"src", "href"}]
    rows = page.tags.count("tr") - 1  # the header row
    records = list(jsonl.read(accesslog.events_path(out)))
    assert rows == len(accesslog.entries(records, PATIENT, {})) > 10  # a row per entry of its own export
    text = "".join(page.text)
    assert "Hospital B's workstation RAD1 retrieved your CT scan" in text and OTHER not in text


def test_the_fhir_log_is_the_verified_audit_export_of_the_patients_events(ran: Node, tmp_path: Path):
    from fhir.resources.R4B.bundle import Bundle

    about = _about(ran, PATIENT)
    out, signed = _write(ran, tmp_path, "fhir")
    bundle = Bundle.model_validate(json.loads(out.read_text(encoding="utf-8")))
    assert all(entry.resource.get_resource_type() == "AuditEvent" for entry in bundle.entry)
    assert len(bundle.entry) == len(about) == signed["statement"]["count"]
    assert accesslog.events_path(out).exists() is False  # the bundle is the export itself
    assert verify_export(out, frozenset({ran.key.public_key}))[0].ok
    assert OTHER not in out.read_text(encoding="utf-8")


@pytest.mark.parametrize("fmt", ["text", "fhir"])
def test_the_proof_verifies_with_audit_verify_and_an_edited_record_is_caught(
    ran: Node, tmp_path: Path, fmt: str
):
    out, _ = _write(ran, tmp_path, fmt)
    checked = out if fmt == "fhir" else accesslog.events_path(out)
    env_cmd = [sys.executable, "-m", "dicom_chain.cli", "audit", "verify", str(checked)]
    ok = subprocess.run(env_cmd, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = checked.read_bytes().splitlines(keepends=True)
    target = next(i for i, line in enumerate(lines) if b"clerk@host" in line or b"Y2xlcmtAaG9zd" in line)
    edited = lines[target].replace(b"clerk@host", b"clerk@hosx", 1)
    if edited == lines[target]:  # FHIR keeps the record in base64 too
        edited = lines[target].replace(b"Y2xlcmtAaG9zd", b"Y2xlcmtAaG9ze", 1)
    checked.write_bytes(b"".join([*lines[:target], edited, *lines[target + 1 :]]))
    broken = subprocess.run(env_cmd, capture_output=True, text=True, check=False)
    assert broken.returncode == 1 and "BROKEN" in broken.stdout


def test_the_command_writes_the_log_and_its_proof(ran: Node, tmp_path: Path):
    cli = [sys.executable, "-m", "dicom_chain.cli"]
    home = ["--home", str(ran.settings.home)]
    result = subprocess.run(
        [*cli, "patient", "access-log", PATIENT, "--format", "html", "--output", "out/log.html", *home],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "out" / "log.html").read_text(encoding="utf-8")
    assert "retrieved your CT scan of 2026-01-01" in page and "log.html.events.jsonl" in page
    assert "audit verify out/log.html.events.jsonl" in result.stdout
    public = tmp_path / "node.pub"
    public.write_text(subprocess.run([*cli, "keys", "export", *home], capture_output=True, text=True).stdout)
    verified = subprocess.run(
        [*cli, "audit", "verify", "out/log.html.events.jsonl", "--public-key", str(public)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0 and "OK:" in verified.stdout, verified.stdout
    default = subprocess.run(
        [*cli, "patient", "access-log", PATIENT, *home], cwd=tmp_path, capture_output=True, text=True
    )
    assert default.returncode == 0 and (tmp_path / f"access-log-{PATIENT}.txt").is_file()


def test_the_log_renders_events_of_every_sharing_kind_without_a_network():
    """Pure rendering: records in, sentences out, with the consent they were made under."""
    base = {"outcome": "success", "actor": "x", "study_uid": "", "reason": "", "hash": "h", "patient_id": "P"}
    recs = [
        {**base, "seq": 1, "time": "2026-11-01T09:00:00.000000Z", "type": "consent.granted",
         "details": {"consent_id": "c1", "institution": "Hospital B", "from": "2026-11-01T00:00:00Z",
                     "until": "2026-12-01T00:00:00Z", "studies": ["1.2"], "purpose": "treatment"}},
        {**base, "seq": 2, "time": "2026-11-20T09:00:00.000000Z", "type": "retrieve.move", "actor": "RAD1",
         "study_uid": "1.2", "details": {"destination": "RAD1", "completed": 3}},
        {**base, "seq": 3, "time": "2026-12-01T00:00:00.500000Z", "type": "retrieve.move", "actor": "RAD1",
         "study_uid": "1.2", "details": {"destination": "RAD1", "completed": 3}},
        {**base, "seq": 4, "time": "2026-11-21T09:00:00.000000Z", "type": "consent.revoked",
         "details": {"consent_id": "c1", "institution": "Hospital B", "reason": ""}},
        {**base, "seq": 5, "time": "2026-11-22T09:00:00.000000Z", "type": "retrieve.move", "actor": "RAD1",
         "study_uid": "1.2", "details": {"destination": "RAD1", "completed": 3}},
    ]  # fmt: skip
    studies = {"1.2": accesslog.StudyFacts(modalities=("CT",), date="2026-11-02")}
    parties = {"RAD1": accesslog.Party(name="Hospital B", ae_title="RAD1")}
    lines = accesslog.entries(recs, "P", studies, parties)
    assert lines[0].text.startswith("You allowed Hospital B to see your CT scan of 2026-11-02 for treatment")
    assert lines[1].text == (
        "Hospital B's workstation RAD1 retrieved your CT scan of 2026-11-02 on 2026-11-20 (3 images), "
        "under your consent of 2026-11-01 until 2026-12-01."
    )
    assert "under your consent" not in lines[2].text  # half a second after it ended
    assert lines[3].text == "Your consent of 2026-11-01 for Hospital B was withdrawn on 2026-11-21."
    assert "under your consent" not in lines[4].text and "retrieved your CT scan" in lines[4].text


def test_the_log_and_the_disclosing_query_on_each_database(db_url: str, tmp_path: Path):
    """No network: the sample study and another patient's CT, a wildcard query run through
    ``qr.runs``, then the log, on SQLite and on a real PostgreSQL."""
    from dicom_chain.carriers.dicom.carrier import item_from_dataset
    from dicom_chain.qr.runs import start_find
    from dicom_chain.vocab import RunStatus

    from .conftest import read

    node = Node.open(Settings(home=tmp_path / "n", db=db_url, institution="Hospital A"))
    try:
        for path in sorted(SAMPLE_STUDY.glob("*.dcm")):
            node.ingest_file(path, actor="CT1")
        node.ingest(item_from_dataset(read("CT_small.dcm")), actor="CT2")
        ds = Dataset()
        ds.QueryRetrieveLevel, ds.PatientID = "STUDY", "*"
        run = start_find(node, ds, "STUDY", "WS1", "GW")
        assert len(list(run.answers())) == 2
        run.finish(RunStatus.COMPLETED)
        out = tmp_path / "log.json"
        signed = accesslog.write(
            node.ledger, node.key, PATIENT, out, "json", actor="desk", source_id="GW", now=NOW
        )
        doc = json.loads(out.read_text(encoding="utf-8"))
        texts = [e["text"] for e in doc["entries"]]
        assert (
            texts[0].startswith("Your CT scan of 2026-01-01 was received from the device CT1")
            and "(8 images)" in texts[0]
        )
        assert (
            texts[1].startswith("The workstation WS1 searched the records") and "1 other patient." in texts[1]
        )
        assert len(texts) == 2 and signed["statement"]["count"] == 9
        assert verify_export(accesslog.events_path(out), frozenset({node.key.public_key}))[0].ok
    finally:
        node.close()


def test_a_patient_identity_conflict_is_told_without_the_other_identity(node: Node):
    """The patient reads that their ID was given another name, never the name itself: it may be
    another person's."""
    from dicom_chain.carriers.dicom.carrier import item_from_dataset
    from dicom_chain.qr import index

    from .test_index import identity_study

    for ds in identity_study(71, "Test^S R") + identity_study(72, "Anonymized"):
        node.ingest(item_from_dataset(ds))
    index.before_read(node.db)  # the conflict is recorded with the index rows, after the response
    records = [
        {**e.stored(), "details": e.details} for e in node.ledger.iter_events() if e.patient_id == "P-9"
    ]
    lines = [entry.text for entry in accesslog.entries(records, "P-9", {})]
    (line,) = [t for t in lines if "flagged for review" in t]
    assert "another name" in line and "Anonymized" not in line and "Test^S R" not in line
