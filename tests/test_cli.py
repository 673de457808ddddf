"""The command line as a person uses it: exit codes, readable lists, JSON, env and config file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicom_chain.carriers.dicom.embedding import read_block

from .conftest import pydicom_file

CLI = [sys.executable, "-m", "dicom_chain.cli"]


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*CLI, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A node in tmp_path/var with three instances chained through the CLI."""
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        shutil.copy(pydicom_file(name), tmp_path / name)
    result = run("ingest", "CT_small.dcm", "MR_small.dcm", "rtplan.dcm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("stored") == 3
    return tmp_path / "var" / "storage"


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["forward"],
        ["verify"],
        ["ingest"],
        ["keys"],
        ["keys", "export"],
        ["status"],
        ["demo"],
        ["reindex"],
    ],
    ids=" ".join,
)
def test_every_command_has_help(command, tmp_path):
    result = run(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_intact_files_exit_0(store, tmp_path):
    result = run("verify", str(store), cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("OK: 3 file(s)")
    node = run("verify", "--db", "sqlite:///var/ledger.db", "--storage", "var/storage", cwd=tmp_path)
    assert node.returncode == 0 and "3 event(s)" in node.stdout


def test_broken_files_exit_1_with_a_readable_list_and_no_traceback(store, tmp_path):
    (store / "readme.txt").write_text("hello")
    victim = next(p for p in store.rglob("*.dcm") if pydicom.dcmread(p).Modality == "CT")
    offset = pydicom.dcmread(victim).get_item(0x7FE00010).value_tell  # flip one bit inside the pixels
    data = bytearray(victim.read_bytes())
    data[offset + 1000] ^= 0x01
    victim.write_bytes(bytes(data))
    result = run("verify", str(store), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "not-dicom" in result.stdout and "readme.txt" in result.stdout
    assert "altered" in result.stdout and str(victim) in result.stdout
    as_json = json.loads(run("verify", "--json", str(store), cwd=tmp_path).stdout)
    assert as_json["ok"] is False and as_json["errors"] == 2


def test_usage_errors_exit_2(tmp_path):
    assert run("verify", cwd=tmp_path).returncode == 2
    assert run("verify", "--db", "sqlite:///x.db", cwd=tmp_path).returncode == 2
    assert run("verify", "does-not-exist", cwd=tmp_path).returncode == 2


def test_public_key_export_and_trust(store, tmp_path):
    exported = run("keys", "export", "--output", "node.pub", cwd=tmp_path)
    assert exported.returncode == 0
    assert (tmp_path / "node.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert run("verify", "--public-key", "node.pub", str(store), cwd=tmp_path).returncode == 0
    other = run("keys", "export", "--home", "elsewhere", "--output", "other.pub", cwd=tmp_path)
    assert other.returncode == 0
    distrusted = run("verify", "--public-key", "other.pub", str(store), cwd=tmp_path)
    assert distrusted.returncode == 1 and "untrusted key" in distrusted.stdout


def test_environment_and_config_file_set_options(tmp_path):
    shutil.copy(pydicom_file("CT_small.dcm"), tmp_path / "ct.dcm")
    (tmp_path / "node.toml").write_text('home = "from-config"\ninstitution = "Config General"\n')
    result = run("ingest", "ct.dcm", cwd=tmp_path, env={"DICOM_CHAIN_CONFIG": "node.toml"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-config" / "ledger.db").exists()
    # the environment wins over the file, the command line over both
    result = run(
        "ingest",
        "ct.dcm",
        cwd=tmp_path,
        env={"DICOM_CHAIN_CONFIG": "node.toml", "DICOM_CHAIN_HOME": "from-env"},
    )
    assert (tmp_path / "from-env" / "ledger.db").exists()
    result = run(
        "ingest",
        "--home",
        "from-cli",
        "ct.dcm",
        cwd=tmp_path,
        env={"DICOM_CHAIN_CONFIG": "node.toml", "DICOM_CHAIN_HOME": "from-env"},
    )
    assert (tmp_path / "from-cli" / "ledger.db").exists()
    stored = next((tmp_path / "from-config" / "storage").rglob("*.dcm"))
    report = json.loads(run("verify", "--json", str(stored), cwd=tmp_path).stdout)
    assert report["ok"]
    assert read_block(pydicom.dcmread(stored)).header.institution == "Config General"


def test_ingest_of_non_dicom_exits_1_and_names_it(tmp_path):
    (tmp_path / "x.txt").write_text("nope")
    result = run("ingest", "x.txt", cwd=tmp_path)
    assert result.returncode == 1 and "x.txt" in result.stderr and "Traceback" not in result.stderr


def test_progress_bar_on_request_goes_to_stderr(tmp_path):
    from dicom_chain.synthetic import StudySpec, ct_study

    for i, ds in enumerate(ct_study(StudySpec(seed=4, instances=25, rows=8, columns=8))):
        ds.save_as(tmp_path / f"{i}.dcm", enforce_file_format=True)
    assert run("ingest", ".", cwd=tmp_path).returncode == 0
    shown = run("verify", "--progress", "var/storage", cwd=tmp_path)
    assert shown.returncode == 0 and "verifying files" in shown.stderr
    assert "verifying" not in shown.stdout  # stdout stays clean for pipes
    quiet = run("verify", "var/storage", cwd=tmp_path)  # not a terminal: no bar
    assert quiet.stderr == ""


def test_demo_runs_on_the_embedded_defaults(tmp_path):
    result = run("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    said = " ".join(result.stdout.split())  # the console wraps long lines
    assert "8 acknowledged with Success" in said and "verify: intact" in said
    assert (tmp_path / "var" / "ledger.db").exists()
    assert len(list((tmp_path / "var" / "storage").rglob("*.dcm"))) == 8
    again = run("verify", "var/storage", cwd=tmp_path)
    assert again.returncode == 0 and "8 block(s)" in again.stdout


def test_status_of_a_node_that_has_nothing_creates_nothing(tmp_path):
    result = run("status", "--home", "empty", cwd=tmp_path)
    assert result.returncode == 0 and "received nothing yet" in result.stdout
    assert not (tmp_path / "empty").exists()


def test_audit_export_and_verify_commands(store: Path, tmp_path: Path):
    result = run(
        "audit", "export", "--format", "atna", "--patient", "4MR1", "--output", "out/mr.xml", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "mr.xml").is_file() and (tmp_path / "out" / "mr.xml.proof").is_file()
    key = tmp_path / "node.pub"
    key.write_text(run("keys", "export", cwd=tmp_path).stdout)
    result = run("audit", "verify", "out/mr.xml", "--public-key", str(key), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: 1 events" in result.stdout
    result = run("audit", "export", "--format", "json", "--output", "all.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    (tmp_path / "all.jsonl").write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    result = run("audit", "verify", "all.jsonl", "--json", cwd=tmp_path)
    assert result.returncode == 1
    assert "missing-event" in {f["kind"] for f in json.loads(result.stdout)["findings"]}
    events = [json.loads(line) for line in lines]
    assert [e["type"] for e in events].count("audit.export") == 1  # the first export is on the record
