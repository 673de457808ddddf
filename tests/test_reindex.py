"""Rebuilding the index from the stored files: the same answers, and fresh verification states."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset

from dicom_chain.node import Node
from dicom_chain.qr import index
from dicom_chain.qr.query import parse_query
from dicom_chain.qr.reindex import reindex

from .conftest import SAMPLE_STUDY, pydicom_file
from .test_cli import run

VOLATILE = {"_pk", "ChainVerifiedAt"}


def stocked(node: Node) -> Node:
    for path in sorted(SAMPLE_STUDY.glob("*.dcm")):
        node.ingest_file(path)
    node.ingest_file(pydicom_file("MR_small.dcm"))
    return node


def image_rows(node: Node) -> dict[str, dict]:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    query = parse_query(ds, "STUDY")
    return {r["SOPInstanceUID"]: r for r in index.find(node.db, query, level="IMAGE")}


def strip(rows: dict[str, dict]) -> dict[str, dict]:
    return {k: {f: v for f, v in r.items() if f not in VOLATILE} for k, r in rows.items()}


def test_reindex_rebuilds_the_same_index(node: Node):
    stocked(node)
    before = image_rows(node)
    with node.db.writing() as session:
        index.clear(session)
    assert index.count(node.db) == 0
    report = reindex(node)
    assert report.indexed == 9 and not report.altered and not report.missing
    after = image_rows(node)
    assert strip(after) == strip(before)


def test_reindex_marks_altered_files_and_leaves_out_missing_ones(node: Node):
    stocked(node)
    rows = image_rows(node)
    altered, missing = sorted(rows)[:2]
    path = node.storage.path(rows[altered]["_path"])
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one pixel byte
    path.write_bytes(bytes(data))
    node.storage.path(rows[missing]["_path"]).unlink()
    report = reindex(node)
    assert report.indexed == 8
    assert report.altered == [rows[altered]["_path"]] and report.missing == [rows[missing]["_path"]]
    after = image_rows(node)
    assert after[altered]["ChainVerificationState"] == "altered" and missing not in after
    assert {r["ChainVerificationState"] for k, r in after.items() if k != altered} == {"verified"}


def test_reindex_command(tmp_path: Path):
    result = run("ingest", *map(str, sorted(SAMPLE_STUDY.glob("*.dcm"))), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = run("reindex", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "indexed 8 instances" in result.stdout
    victim = next((tmp_path / "var" / "storage").rglob("*.dcm"))
    victim.unlink()
    result = run("reindex", cwd=tmp_path)
    assert result.returncode == 1 and "missing from the store" in result.stdout


def test_verify_update_index_stores_what_verify_found(tmp_path: Path):
    """C-FIND's verification state follows the last whole-node verify, when asked to."""
    result = run("ingest", *map(str, sorted(SAMPLE_STUDY.glob("*.dcm"))), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "var" / "storage").rglob("*.dcm"))
    data = bytearray(files[0].read_bytes())
    data[-3] ^= 0x01
    files[0].write_bytes(bytes(data))
    files[1].unlink()
    db = f"sqlite:///{tmp_path / 'var' / 'ledger.db'}"
    storage = str(tmp_path / "var" / "storage")
    assert run("verify", "--db", db, "--storage", storage, cwd=tmp_path).returncode == 1
    from dicom_chain.config import Settings

    node = Node.open(Settings(home=tmp_path / "var"))
    try:
        assert set(r["ChainVerificationState"] for r in image_rows(node).values()) == {"verified"}
        result = run("verify", "--db", db, "--storage", storage, "--update-index", cwd=tmp_path)
        assert result.returncode == 1
        states = {
            node.storage.path(r["_path"]).resolve(): r["ChainVerificationState"]
            for r in image_rows(node).values()
        }
    finally:
        node.close()
    assert states.pop(files[0].resolve()) == "altered" and states.pop(files[1].resolve()) == "missing"
    assert set(states.values()) == {"verified"} and len(states) == 6
    node = Node.open(Settings(home=tmp_path / "var"))
    try:
        runs = [e for e in node.ledger.iter_events() if e.type == "verify.node"]  # both runs are on record
    finally:
        node.close()
    assert len(runs) == 2 and all(e.outcome == "major-failure" for e in runs)
    assert runs[-1].details["errors"] == 2 and "@" in runs[-1].actor


def test_reindex_restores_each_studys_own_patient_values_and_records_nothing_again(node: Node):
    from dicom_chain.carriers.dicom.carrier import item_from_dataset

    from .test_index import conflicts, ident, identity_study

    for ds in identity_study(51, "Test^S R") + identity_study(52, "Anonymized"):
        node.ingest(item_from_dataset(ds))
    query = parse_query(ident("STUDY", PatientID="P-9", PatientName=""), "STUDY")
    before = sorted((r["StudyInstanceUID"], r["PatientName"]) for r in index.find(node.db, query))
    assert {name for _, name in before} == {"Test^S R", "Anonymized"} and len(conflicts(node)) == 1
    assert reindex(node).conflicts == []
    assert sorted((r["StudyInstanceUID"], r["PatientName"]) for r in index.find(node.db, query)) == before
    assert len(conflicts(node)) == 1  # the ledger has it already: a rebuild is not a new receipt


def test_reindex_records_a_conflict_the_ledger_predates(node: Node, monkeypatch):
    """A node that received both identities before conflicts were recorded: the rebuild records
    the one it meets, once; a second rebuild finds it recorded."""
    from dicom_chain.carriers.dicom.carrier import item_from_dataset

    from .test_index import conflicts, identity_study

    with monkeypatch.context() as m:
        m.setattr(index, "_identities", lambda *_: [])  # as before: no conflict noticed at receipt
        for ds in identity_study(54, "Test^S R") + identity_study(55, "Anonymized"):
            node.ingest(item_from_dataset(ds))
        index.before_read(node.db)  # the index rows follow the responses: written while patched
    assert conflicts(node) == []
    (found,) = reindex(node).conflicts
    (event,) = conflicts(node)
    assert (found.value, event.details["known"], event.patient_id) == ("Anonymized", ["Test^S R"], "P-9")
    assert "@" in event.actor  # the operator who ran the rebuild
    assert reindex(node).conflicts == [] and len(conflicts(node)) == 1


def test_the_migration_gives_existing_studies_their_patients_values(db_url: str, tmp_path: Path):
    """A database indexed before studies kept their own values: 0008 copies the patient's."""
    from alembic import command
    from sqlalchemy import text

    from dicom_chain.carriers.dicom.carrier import item_from_dataset
    from dicom_chain.config import Settings
    from dicom_chain.db.migrate import alembic_config

    from .test_index import identity_study

    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    try:
        for ds in identity_study(53, "Doe^Jane", sex="F"):
            node.ingest(item_from_dataset(ds))
        index.before_read(node.db)  # the index rows, written after the response, before the migration
        cfg = alembic_config()
        with node.db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0007")
            command.upgrade(cfg, "0008")
        with node.db.reading() as session:
            row = session.execute(text("SELECT patient_name, patient_name_key, sex FROM studies")).one()
            seeded = session.execute(
                text("SELECT keyword, value FROM patient_identities ORDER BY keyword")
            ).all()
        assert tuple(row) == ("Doe^Jane", "doe^jane", "F")
        assert [tuple(r) for r in seeded] == [
            ("PatientBirthDate", "19700101"),
            ("PatientName", "Doe^Jane"),
            ("PatientSex", "F"),
        ]
    finally:
        node.close()
