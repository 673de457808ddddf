"""The sharing commands as a hospital runs them: the real ``python -m dicom_chain.cli``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
from fhir.resources.R4B.bundle import Bundle

from dicom_chain.sharing import policyfile

from .conftest import SAMPLE_STUDY

CLI = [sys.executable, "-m", "dicom_chain.cli"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=120
    )


def ok(*args: str, cwd: Path) -> str:
    result = run(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_register_consent_check_and_explain(tmp_path):
    first = sorted(SAMPLE_STUDY.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    study, patient = ds.StudyInstanceUID, ds.PatientID
    ok("ingest", str(first), cwd=tmp_path)
    ok("keys", "export", "--home", "b", "--output", "b.pem", cwd=tmp_path)
    out = ok(
        "institution",
        "add",
        "HOSPITAL_B",
        "--ae",
        "HB_GW",
        "--host",
        "127.0.0.1",
        "--port",
        "11113",
        "--public-key",
        "b.pem",
        cwd=tmp_path,
    )
    assert out.startswith("registered HOSPITAL_B: HB_GW@127.0.0.1:11113")
    assert "HOSPITAL_B" in ok("institution", "list", cwd=tmp_path)
    assert "address     HB_GW@127.0.0.1:11113" in ok("institution", "show", "HOSPITAL_B", cwd=tmp_path)

    check = ("policy", "check", "--patient", patient, "--study", study, "--to", "HOSPITAL_B")
    denied = ok(*check, "--at", "2026-11-15", cwd=tmp_path)
    assert denied.splitlines()[1] == f"  no consent of patient {patient} for HOSPITAL_B"
    granted = ok(
        "consent",
        "grant",
        patient,
        "--to",
        "HOSPITAL_B",
        "--from",
        "2026-11-01",
        "--until",
        "2026-12-01",
        "--study",
        study,
        cwd=tmp_path,
    )
    consent_id = granted.splitlines()[0].removeprefix("consent ")
    allowed = json.loads(ok(*check, "--at", "2026-11-15", "--json", cwd=tmp_path))
    assert allowed["allowed"] and allowed["consent_id"] == consent_id
    assert allowed["policy_hash"] == policyfile.load(None).hash
    ended = ok(*check, "--at", "2026-12-02", cwd=tmp_path)
    assert ended.startswith("denied") and "consent for HOSPITAL_B ended 2026-12-01" in ended
    assert ok("consent", "list", patient, cwd=tmp_path).count("in force") == 1

    exported = ok("consent", "export", "--format", "fhir", cwd=tmp_path)
    assert Bundle.model_validate_json(exported).entry[0].resource.id == consent_id
    (tmp_path / "consents.json").write_text(exported)
    assert ok("consent", "import", "consents.json", cwd=tmp_path).startswith("imported 0 consents")

    assert "revoked" in ok("consent", "revoke", consent_id, "--reason", "moved away", cwd=tmp_path)
    assert "was revoked" in ok(*check, "--at", "2026-11-15", cwd=tmp_path)
    explained = ok("institution", "score", "HOSPITAL_B", "--explain", cwd=tmp_path)
    assert explained.splitlines()[0] == "institution HOSPITAL_B: starts at 50"
    assert explained.splitlines()[-1] == "score 50"  # checks are not requests: nothing moved it

    ok("institution", "remove", "HOSPITAL_B", cwd=tmp_path)
    assert "removed" in ok("institution", "list", "--all", cwd=tmp_path)
    assert ok("institution", "list", cwd=tmp_path).strip() == "no institution registered"


def test_mistakes_are_one_line_and_a_nonzero_exit(tmp_path):
    result = run("consent", "grant", "P1", "--to", "NOBODY", "--until", "2027-01-01", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.strip() == "Error: no registered institution NOBODY"
    result = run("consent", "revoke", "no-such-consent", cwd=tmp_path)
    assert result.returncode == 1 and "no consent no-such-consent" in result.stderr


def test_policy_show_names_the_policy_in_force_and_its_history(tmp_path):
    strict = tmp_path / "strict.toml"
    strict.write_text(
        policyfile.default_text().replace("min_institution_score = 40", "min_institution_score = 80")
    )
    first = ok("policy", "show", cwd=tmp_path)
    assert first.splitlines()[0] == f"policy in force {policyfile.load(None).hash}"
    shown = ok("policy", "show", "--policy", str(strict), "--text", cwd=tmp_path)
    assert shown.splitlines()[0] == f"policy in force {policyfile.load(strict).hash}"
    assert f"from {strict}" in shown.splitlines()[1] and "min_institution_score = 80" in shown
    again = ok("policy", "show", cwd=tmp_path)  # without --policy: the one in force stays
    assert again.splitlines()[0] == f"policy in force {policyfile.load(strict).hash}"
    assert len(again.splitlines()) == 2
