"""Releasing studies across institutions: the receiving check and link (in process), then the two
gateways of the issue's "Must show", each its own ``dicom-chain serve`` process, database and key."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]
from sqlalchemy import update

from dicom_chain.block import ITEM_FORMAT_VERSION, Block
from dicom_chain.carriers.dicom.carrier import DICOM
from dicom_chain.config import Settings
from dicom_chain.db.models import OriginBlockRow
from dicom_chain.errors import ContentHashError, SignatureError
from dicom_chain.keys import NodeKey
from dicom_chain.node import Node
from dicom_chain.sharing.registry import Registry
from dicom_chain.verify import verify_node
from dicom_chain.vocab import EventType, FindingKind
from scp.statuses import NOT_AUTHORIZED

from .conftest import SAMPLE_STUDY
from .peers import GatewayProcess, free_port

CLI = [sys.executable, "-m", "dicom_chain.cli"]
NOW = "2026-11-29T12:00:00.000000Z"


def _open(home: Path, name: str) -> Node:
    return Node.open(Settings(home=home, institution=name))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """HOSPITAL_A and HOSPITAL_B, B knowing A (its AE, address and exported public key)."""
    a, b = _open(tmp_path / "a", "HOSPITAL_A"), _open(tmp_path / "b", "HOSPITAL_B")
    pem = tmp_path / "a.pem"
    pem.write_text(a.key.public_pem())
    Registry(b.ledger, b.key).add(
        "HOSPITAL_A", ae_title="HA_GW", host="127.0.0.1", port=1, public_key_file=pem, actor="t", now=NOW
    )
    yield a, b
    a.close()
    b.close()


def _first_sample() -> Path:
    return sorted(SAMPLE_STUDY.glob("*.dcm"))[0]


def _events(node: Node, kind: EventType) -> list:
    return [e for e in node.ledger.iter_events() if e.type == kind]


def _altered(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = bytearray(ds.PixelData)
    pixels[0] ^= 0xFF
    ds.PixelData = bytes(pixels)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_a_registered_institutions_block_is_checked_and_linked(pair):
    a, b = pair
    sent = a.ingest_file(_first_sample())
    received = b.ingest(DICOM.open(sent.path.read_bytes()).item(), actor="HA_GW")
    h = received.block.header
    assert h.version == ITEM_FORMAT_VERSION and h.carrier == "dicom"
    assert h.origin is not None
    assert (h.origin.institution, h.origin.block_hash) == ("HOSPITAL_A", sent.block.hash)
    assert h.origin.key_id == a.key.key_id and h.key_id == b.key.key_id
    assert h.content_hash == sent.block.header.content_hash
    # the file keeps one block, ours; the sender's is in our ledger beside the event
    assert DICOM.open(received.path.read_bytes()).read_block() == received.block
    [event] = _events(b, EventType.RELEASE_RECEIVED)
    assert event.details == {
        "from": "HOSPITAL_A", "sender_block": sent.block.hash, "sop_instance_uid": h.item_id,
        "height": h.height,
    }  # fmt: skip
    report = verify_node(b.ledger, b.storage)
    assert report.ok, report.findings


def test_verify_finds_a_broken_origin(pair):
    a, b = pair
    sent = a.ingest_file(_first_sample())
    received = b.ingest(DICOM.open(sent.path.read_bytes()).item(), actor="HA_GW")
    other = dataclasses.replace(sent.block, signature=bytes(64))  # same hash, signature no longer holds
    with b.db.writing() as session:
        session.execute(
            update(OriginBlockRow)
            .where(OriginBlockRow.block_hash == received.block.hash)
            .values(block=other.to_bytes().decode())
        )
    report = verify_node(b.ledger, b.storage)
    assert [f.kind for f in report.errors] == [FindingKind.BROKEN_ORIGIN]
    assert "signature" in report.errors[0].message


def test_an_altered_instance_is_refused_and_recorded(pair):
    a, b = pair
    sent = a.ingest_file(_first_sample())
    with pytest.raises(ContentHashError, match="HOSPITAL_A"):
        b.ingest(DICOM.open(_altered(sent.path.read_bytes())).item(), actor="HA_GW")
    [event] = _events(b, EventType.RELEASE_REFUSED)
    assert event.details["from"] == "HOSPITAL_A" and event.details["block_hash"] == sent.block.hash
    assert b.ledger.block_count() == 0 and not list(b.storage.iter_files())


def test_a_block_naming_a_registered_key_but_signed_by_another_is_refused(pair):
    a, b = pair
    sent = a.ingest_file(_first_sample())
    forger = NodeKey.generate()
    forged = Block(sent.block.header, a.key.public_key, forger.sign(b"anything"))
    carried = DICOM.open(sent.path.read_bytes())
    item = DICOM.open(b"".join(bytes(p) for p in carried.with_block(forged))).item()
    with pytest.raises(SignatureError):
        b.ingest(item, actor="HA_GW")
    assert len(_events(b, EventType.RELEASE_REFUSED)) == 1
    assert b.ledger.block_count() == 0


def test_a_block_of_an_unregistered_key_is_replaced_as_ever(tmp_path, pair):
    _a, b = pair
    c = _open(tmp_path / "c", "HOSPITAL_C")
    try:
        sent = c.ingest_file(_first_sample())
        received = b.ingest(DICOM.open(sent.path.read_bytes()).item(), actor="HC_GW")
    finally:
        c.close()
    assert received.block.header.version == 1 and received.block.header.origin is None
    assert not _events(b, EventType.RELEASE_RECEIVED)


# -- two gateways, real processes --------------------------------------------------------------


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=180
    )


def _ok(*args: str, cwd: Path) -> str:
    result = _cli(*args, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _move(port: int, study_uid: str, destination: str) -> tuple[int, str, int]:
    """B's workstation asks A to move the study to B's gateway: final status, comment, completed."""
    ae = AE(ae_title="HB_WS")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="HA_GW")
    assert assoc.is_established
    identifier = pydicom.Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    final = None
    for status, _ in assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove):
        final = status
    assoc.release()
    assert final is not None
    return (
        int(final.Status),
        str(final.get("ErrorComment", "")),
        int(final.get("NumberOfCompletedSuboperations", 0)),
    )


def _store(port: int, calling: str, called: str, datasets: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts[:100]
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _score(name: str, at: str, cwd: Path, home: tuple[str, ...]) -> float:
    line = _ok("institution", "score", name, "--at", at, *home, cwd=cwd).strip().splitlines()[-1]
    return float(line.split()[-1])


def _gateway(tmp_path: Path, home: tuple[str, ...], port: int, *args: str) -> GatewayProcess:
    return GatewayProcess(tmp_path / home[1], port, args=(*home[2:], *args))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def homes(request: pytest.FixtureRequest) -> dict[str, tuple[str, ...]]:
    """Each gateway's node options: its home, and on PostgreSQL its own database on the server."""
    if request.param == "sqlite":
        return {"a": ("--home", "a"), "b": ("--home", "b")}
    server = request.getfixturevalue("postgres")
    return {name: ("--home", name, "--db", server.create_database()) for name in ("a", "b")}


def _db_url(tmp_path: Path, home: tuple[str, ...]) -> str:
    return home[3] if len(home) > 2 else f"sqlite:///{tmp_path}/{home[1]}/ledger.db"


def test_two_gateways_release_by_consent_and_refuse_altered_data(tmp_path, homes):
    files = sorted(SAMPLE_STUDY.glob("*.dcm"))
    study = pydicom.dcmread(files[0])
    study_uid, patient = study.StudyInstanceUID, study.PatientID
    port_a, port_b = free_port(), free_port()
    home_a, home_b = homes["a"], homes["b"]
    # keys export reads no ledger: the key is in the home, whatever the database
    _ok("keys", "export", *home_a[:2], "--output", "a.pem", cwd=tmp_path)
    _ok("keys", "export", *home_b[:2], "--output", "b.pem", cwd=tmp_path)
    for home, name, ae, port, pem in (
        (home_a, "HOSPITAL_B", "HB_GW", port_b, "b.pem"),
        (home_b, "HOSPITAL_A", "HA_GW", port_a, "a.pem"),
    ):
        _ok("institution", "add", name, "--ae", ae, "--host", "127.0.0.1", "--port", str(port),
            "--public-key", pem, *home, cwd=tmp_path)  # fmt: skip
    today = datetime.now(UTC)
    before, until, after = (
        _iso(today + timedelta(days=1)),
        today + timedelta(days=2),
        today + timedelta(days=3),
    )
    a_args = ("--ae-title", "HA_GW", "--institution", "HOSPITAL_A")
    b = _gateway(tmp_path, home_b, port_b, "--ae-title", "HB_GW", "--institution", "HOSPITAL_B").start()
    a = _gateway(tmp_path, home_a, port_a, *a_args, "--policy-now", before).start()
    try:
        # a modality sends the study to A
        assert set(_store(port_a, "MODALITY", "HA_GW", [pydicom.dcmread(f) for f in files])) == {0}

        # no consent: refused, 0124, the reason on A's record, nothing sent to B
        status, comment, _ = _move(port_a, study_uid, "HB_GW")
        assert status == NOT_AUTHORIZED
        assert "not authorized" in comment and "no consent" in comment
        assert not list((tmp_path / "b" / "storage").rglob("*.dcm"))  # nothing sent

        # the patient consents until T: the same C-MOVE delivers the study
        _ok(
            "consent",
            "grant",
            patient,
            "--to",
            "HOSPITAL_B",
            "--until",
            _iso(until),
            *home_a,
            cwd=tmp_path,
        )
        status, comment, completed = _move(port_a, study_uid, "HB_GW")
        assert (status, completed) == (0, len(files)), comment
        verified = _cli("verify", "--db", _db_url(tmp_path, home_b), "--storage", "b/storage", cwd=tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr

        # a file altered on A since it was stored is checked just before it would go: kept back
        kept = sorted((tmp_path / "a" / "storage").rglob("*.dcm"))[-1]
        original = kept.read_bytes()
        kept.write_bytes(_altered(original))
        status, comment, completed = _move(port_a, study_uid, "HB_GW")
        assert (status, completed) == (0xB000, len(files) - 1), comment
        kept.write_bytes(original)

        # after T: refused again, and B's score on A drops
        score_before = _score("HOSPITAL_B", _iso(after), tmp_path, home_a)
        a.terminate()
        a = _gateway(tmp_path, home_a, port_a, *a_args, "--policy-now", _iso(after)).start()
        status, comment, _ = _move(port_a, study_uid, "HB_GW")
        assert status == NOT_AUTHORIZED and "ended" in comment
        assert _score("HOSPITAL_B", _iso(after), tmp_path, home_a) < score_before

        # an instance altered on its way to B, carrying A's block and calling as A: refused there
        stored_a = sorted((tmp_path / "a" / "storage").rglob("*.dcm"))[0]
        score_a_on_b = _score("HOSPITAL_A", _iso(after), tmp_path, home_b)
        altered = pydicom.dcmread(io.BytesIO(_altered(stored_a.read_bytes())))
        assert _store(port_b, "HA_GW", "HB_GW", [altered]) == [0xC000]
        assert _score("HOSPITAL_A", _iso(after), tmp_path, home_b) < score_a_on_b - 20
    finally:
        a.stop()
        b.stop()

    # A's access log tells the story: the denial, the consent, the release, the second denial
    _ok("patient", "access-log", patient, *home_a, "--output", "log.txt", cwd=tmp_path)
    story = (tmp_path / "log.txt").read_text()
    denial = story.index("HOSPITAL_B asked for")
    consent = story.index("You allowed HOSPITAL_B")
    release = story.index("was released to HOSPITAL_B")
    second = story.index("HOSPITAL_B asked for", release)
    assert denial < consent < release < second
    assert "no consent" in story[denial:consent] and "ended" in story[second:]

    # consent, release, denial and score events in every audit export format, each verifying
    from dicom_chain.audit.export import FORMATS

    for fmt in ("json", "csv", "fhir", "atna"):
        out = tmp_path / f"a-audit.{fmt}"
        _ok("audit", "export", *home_a, "--format", fmt, "--output", str(out), cwd=tmp_path)
        checked = _cli("audit", "verify", str(out), "--public-key", "a.pem", cwd=tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        kinds = {record["type"] for record in FORMATS[fmt].read(out)}
        assert {"consent.granted", "release.granted", "release.denied", "score.changed"} <= kinds, fmt
    received_b = tmp_path / "b-audit.json"
    _ok("audit", "export", *home_b, "--format", "json", "--output", str(received_b), cwd=tmp_path)
    assert received_b.read_text().count('"release.received"') == len(files)
    # only the altered store sent on purpose: the file altered on A never reached B
    refused = [r for r in FORMATS["json"].read(received_b) if r["type"] == "release.refused"]
    assert len(refused) == 1, refused
    assert '"score.changed"' in received_b.read_text()  # A's score on B moved with the refusal


def test_release_command_sends_the_study_as_stored_when_allowed(tmp_path):
    files = sorted(SAMPLE_STUDY.glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    study_uid, patient = first.StudyInstanceUID, first.PatientID
    port_b = free_port()
    _ok("keys", "export", "--home", "a", "--output", "a.pem", cwd=tmp_path)
    _ok("keys", "export", "--home", "b", "--output", "b.pem", cwd=tmp_path)
    _ok("institution", "add", "HOSPITAL_B", "--ae", "HB_GW", "--host", "127.0.0.1", "--port", str(port_b),
        "--public-key", "b.pem", "--home", "a", cwd=tmp_path)  # fmt: skip
    _ok("institution", "add", "HOSPITAL_A", "--ae", "HA_GW", "--host", "127.0.0.1", "--port", "1",
        "--public-key", "a.pem", "--home", "b", cwd=tmp_path)  # fmt: skip
    _ok("ingest", "--home", "a", "--institution", "HOSPITAL_A", *map(str, files), cwd=tmp_path)
    release = ("release", study_uid, "--to", "HOSPITAL_B", "--home", "a", "--ae-title", "HA_GW")
    b = _gateway(tmp_path, ("--home", "b"), port_b, "--ae-title", "HB_GW").start()
    try:
        denied = _cli(*release, cwd=tmp_path)
        assert denied.returncode == 1 and "denied" in denied.stderr
        assert f"no consent of patient {patient} for HOSPITAL_B" in denied.stderr
        assert not list((tmp_path / "b" / "storage").rglob("*.dcm"))
        _ok(
            "consent",
            "grant",
            patient,
            "--to",
            "HOSPITAL_B",
            "--until",
            "2099-01-01",
            "--home",
            "a",
            cwd=tmp_path,
        )
        sent = _cli(*release, cwd=tmp_path)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert f"{len(files)}/{len(files)} instance(s) stored by HOSPITAL_B" in sent.stdout
        assert sent.stdout.count("  success  0x0000") == len(files)
        # A file altered on A since: checked just before it would go, and kept back (B would
        # refuse it and count it against A); the others go again (B answers them as duplicates).
        stored_a = sorted((tmp_path / "a" / "storage").rglob("*.dcm"))
        victim = stored_a[0]
        victim.write_bytes(_altered(victim.read_bytes()))
        again = _cli(*release, cwd=tmp_path)
        assert again.returncode == 1, again.stdout + again.stderr
        assert f"{len(files) - 1}/{len(files)} instance(s) stored by HOSPITAL_B" in again.stdout
        refused = [line for line in again.stdout.splitlines() if "not released" in line]
        assert len(refused) == 1 and "altered" in refused[0], again.stdout
        assert pydicom.dcmread(victim, stop_before_pixels=True).SOPInstanceUID in refused[0]
    finally:
        b.stop()
    b_db = _db_url(tmp_path, ("--home", "b"))
    verified = _cli("verify", "--db", b_db, "--storage", "b/storage", cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # each stored file on B links to A's block for it, which B keeps
    for path in (tmp_path / "b" / "storage").rglob("*.dcm"):
        origin = DICOM.open(path.read_bytes()).read_block().header.origin
        assert origin is not None and origin.institution == "HOSPITAL_A"


@pytest.mark.parametrize("how", ["release", "move"])
def test_a_release_carries_the_senders_checkpoint_and_a_rewritten_history_is_caught(tmp_path, how):
    """The receiver judges the checkpoint a release carries as a witness would: the first is
    taken as what it knows of the sender's log, the next must extend it; the sender's history
    rewritten (and re-signed) in between is a split view on the receiver's record. By
    ``release``, and by a C-MOVE whose destination is the institution's gateway."""
    from dicom_chain.block import utc_now
    from dicom_chain.db.models import WitnessedLogRow
    from dicom_chain.sharing.service import grant_consent, score
    from dicom_chain.tlog.checkpoint import open_signed
    from scp.release import release_study

    from .gateways import InProcessGateway
    from .history import rewrite_history

    a_gateway = InProcessGateway(_open(tmp_path / "a", "HOSPITAL_A"))
    a_gateway.settings = dataclasses.replace(a_gateway.settings, host="127.0.0.1", port=free_port())
    a_gateway.start()
    a = a_gateway.node
    b = InProcessGateway(_open(tmp_path / "b", "HOSPITAL_B"))
    b.settings = dataclasses.replace(b.settings, ae_title="HB_GW", host="127.0.0.1", port=free_port())
    b.start()
    try:
        for me, other, ae, port in ((a, b.node, "HB_GW", b.settings.port), (b.node, a, "HA_GW", 1)):
            pem = tmp_path / f"{other.settings.institution}.pem"
            pem.write_text(other.key.public_pem())
            Registry(me.ledger, me.key).add(
                other.settings.institution, ae_title=ae, host="127.0.0.1", port=port, public_key_file=pem,
                actor="t", now=utc_now(),
            )  # fmt: skip
        files = sorted(SAMPLE_STUDY.glob("*.dcm"))
        first = a.ingest_file(files[0])
        study = first.block.header.study_instance_uid
        patient = pydicom.dcmread(files[0]).PatientID
        grant_consent(a, patient_id=patient, to="HOSPITAL_B", until="2099-01-01", actor="t", now=utc_now())

        def send() -> None:
            if how == "release":
                done = release_study(a, study, "HOSPITAL_B", purpose="treatment", actor="t")
                assert done.decision.allowed and all(s.status == 0 for s in done.sent), done.sent
                return
            scu = AE(ae_title="WS")
            scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = scu.associate("127.0.0.1", a_gateway.settings.port, ae_title="DICOMCHAIN")
            query = pydicom.Dataset()
            query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study
            statuses = [
                s.Status
                for s, _ in assoc.send_c_move(query, "HB_GW", StudyRootQueryRetrieveInformationModelMove)
            ]
            assoc.release()
            assert statuses[-1] == 0x0000, statuses

        send()
        with b.node.db.reading() as session:
            [seen] = session.query(WitnessedLogRow).all()
        assert open_signed(seen.signed, a.key.public_key).size == seen.size > 0
        assert seen.institution == "HOSPITAL_A"

        rewrite_history(a, 3, "nothing to see")  # an insider rewrites A's log and re-signs it
        a.ingest_file(files[1])
        before = score(b.node, "institution", "HOSPITAL_A", utc_now()).value
        send()
        [fault] = _events(b.node, EventType.LOG_SPLIT_VIEW)
        assert fault.details["institution"] == "HOSPITAL_A"
        assert fault.details["evidence"]["old"] == seen.signed
        assert score(b.node, "institution", "HOSPITAL_A", utc_now()).value <= before - 30
    finally:
        b.stop()
        b.node.close()
        a_gateway.stop()
        a.close()
