"""The command line as a person uses it: exit codes, readable lists, JSON, env and config file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

import scp.forwarder
import scp.server
from dicom_chain.carriers.dicom.embedding import read_block
from dicom_chain.cli import main
from dicom_chain.config import Settings, setting_fields
from dicom_chain.errors import ConfigError, LedgerUnavailable
from dicom_chain.node import Node
from scp.server import Gateway

from .conftest import pydicom_file
from .peers import free_port

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


def test_status_of_a_mistyped_home_is_a_usage_error_and_creates_nothing(tmp_path):
    result = run("status", "--home", "vra", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0 and "no ledger at vra/ledger.db" in result.stderr
    assert result.stdout == "" and not (tmp_path / "vra").exists()
    mistyped_db = run("status", "--db", f"sqlite:///{tmp_path}/ledgr.db", cwd=tmp_path)
    assert mistyped_db.returncode == 2 and "ledgr.db" in mistyped_db.stderr
    assert not (tmp_path / "ledgr.db").exists()


def test_status_says_empty_and_whether_a_gateway_runs(tmp_path):
    """An empty chain reads "empty", not height -1; a gateway serving from this home is named by
    pid and host (its spool lock), and once stopped it is not running as far as this host knows."""
    settings = Settings(home=tmp_path / "var", host="127.0.0.1", port=free_port())
    node = Node.open(settings)
    try:
        gateway = Gateway(node, settings)
        gateway.start()
        try:
            running = run("status", cwd=tmp_path)
            as_json = json.loads(run("status", "--json", cwd=tmp_path).stdout)
        finally:
            gateway.stop()
    finally:
        node.close()
    assert running.returncode == 0, running.stderr
    assert "  empty  " in running.stdout and "height -1" not in running.stdout
    assert f"gateway running (pid {os.getpid()} on host {socket.gethostname()})" in running.stdout
    assert as_json["gateways"] == [{"pid": os.getpid(), "host": socket.gethostname()}]
    assert as_json["chains"][0]["blocks"] == 0
    stopped = run("status", cwd=tmp_path)
    assert "gateway not running as far as this host can tell" in stopped.stdout
    assert "gateway running" not in stopped.stdout


@pytest.mark.parametrize(
    ("command", "absent"),
    [
        (["status"], ["--institution", "--storage", "--policy", "--key-file"]),
        (["keys", "export"], ["--db", "--storage", "--institution"]),
    ],
    ids=["status", "keys export"],
)
def test_commands_list_only_options_that_apply(command, absent):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    listed = {word.rstrip(",") for word in result.output.split() if word.startswith("--")}
    assert not listed & set(absent), listed & set(absent)
    refused = CliRunner().invoke(main, [*command, absent[0], "x"])
    assert refused.exit_code == 2 and "No such option" in refused.output


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


@pytest.fixture
def served(monkeypatch) -> list[Settings]:
    """What serve and forward would run with, instead of running them."""
    seen: list[Settings] = []
    monkeypatch.setattr(scp.server, "run_server", lambda settings, companions=(): seen.append(settings))
    monkeypatch.setattr(scp.forwarder, "run_forwarder", seen.append)
    return seen


def test_every_setting_is_an_option_of_serve_with_its_environment_variable():
    result = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for field in setting_fields():
        assert f"{field.option} " in result.output
    forward = CliRunner().invoke(main, ["forward", "--help"]).output
    assert "--forward-workers" in forward and "--allow" not in forward


def test_serve_settings_come_from_file_environment_and_command_line(tmp_path: Path, served):
    config = tmp_path / "gw.toml"
    config.write_text(
        'ae_title = "FROM_FILE"\nport = 1111\n'
        '[serve]\nmove_destination = ["WS1@10.0.0.21:104"]\nforward_workers = 3\n'
    )
    env = {
        "DICOM_CHAIN_CONFIG": str(config),
        "DICOM_CHAIN_PORT": "2222",
        "DICOM_CHAIN_ALLOW": "CT1 MR1@10.0.0.7",
    }
    args = ["serve", "--home", str(tmp_path / "h"), "--forward", "P1@h:104", "--forward", "P2@h:104"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    [settings] = served
    assert settings == Settings(
        home=tmp_path / "h",
        ae_title="FROM_FILE",
        port=2222,  # the environment wins over the file
        allow=("CT1", "MR1@10.0.0.7"),
        move_destinations=("WS1@10.0.0.21:104",),
        forward=("P1@h:104", "P2@h:104"),
        forward_workers=3,
    )
    result = CliRunner().invoke(main, [*args, "--port", "3333"], env=env)  # the command line wins over both
    assert result.exit_code == 0 and served[-1].port == 3333
    config.write_text('move_destinations = ["WS2@10.0.0.22:104"]\n')  # the field's own name works too
    assert CliRunner().invoke(main, args, env=env).exit_code == 0
    assert served[-1].move_destinations == ("WS2@10.0.0.22:104",)


def test_peers_and_certificates_come_from_toml_tables(tmp_path: Path, served):
    """What a hospital IT team writes: a table per AE and per certificate, read as --peer entries."""
    config = tmp_path / "gw.toml"
    config.write_text(
        'allow = ["US1"]\n'
        '[peers.CT1]\npermissions = ["store"]\nhost = "10.0.0.7"\n'
        '[peers.WORKSTATION1]\npermissions = ["find", "move", "get"]\n'
        '[certs."CN=reading-room-1,O=Hospital"]\npermissions = ["find", "get"]\n'
        '[serve.peers.QA]\npermissions = ["store", "correct"]\n'
    )
    args = ["serve", "--config", str(config), "--home", str(tmp_path / "h")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    [settings] = served
    assert settings.allow == ("US1",)
    assert set(settings.peers) == {"CT1@10.0.0.7=store", "WORKSTATION1=find,move,get", "QA=store,correct"}
    assert settings.certs == ("CN=reading-room-1,O=Hospital=find,get",)
    flags = ["--peer", "WS2=find", "--peer-cert", "CN=rr2,O=Hospital=get"]
    assert CliRunner().invoke(main, [*args, *flags]).exit_code == 0
    assert (served[-1].peers, served[-1].certs) == (("WS2=find",), ("CN=rr2,O=Hospital=get",))
    config.write_text('[peers.CT1]\npermissions = ["store", "delete"]\n')
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "unknown permission 'delete'" in refused.output


def test_forward_runs_with_the_forwarding_settings(tmp_path: Path, served):
    args = ["forward", "--home", str(tmp_path), "--ae-title", "GW", "--forward", "P@h:1"]
    args += ["--forward-workers", "2"]
    assert CliRunner().invoke(main, args).exit_code == 0
    [settings] = served
    assert (settings.ae_title, settings.forward, settings.forward_workers) == ("GW", ("P@h:1",), 2)


@pytest.mark.parametrize(
    ("error", "code"), [(ConfigError("bad\nsetting"), 2), (LedgerUnavailable("down"), 1)]
)
def test_a_library_error_is_one_line_and_an_exit_code(monkeypatch, tmp_path: Path, error, code):
    def fail(_settings: Settings, _companions: object = ()) -> None:
        raise error

    monkeypatch.setattr(scp.server, "run_server", fail)
    result = CliRunner().invoke(main, ["serve", "--home", str(tmp_path)])
    assert result.exit_code == code
    assert result.stderr == f"Error: {' '.join(str(error).split())}\n"


def test_a_configuration_error_exits_2_without_a_traceback(tmp_path):
    result = run("serve", "--forward", "not-a-destination", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr  # serve's log lines come first, then the one error line
    last = result.stderr.strip().splitlines()[-1]
    assert last == "Error: destination 'not-a-destination' is not AET@HOST:PORT"
    missing = run("audit", "export", "--home", "nokey", "--format", "json", "--output", "x", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("Error: no ledger at")  # none made
    assert not (tmp_path / "nokey").exists()


def test_the_library_does_not_import_its_application():
    """dicom_chain (all but its cli package) never loads click, rich or the scp package."""
    check = (
        "import importlib, sys\n"
        "from pathlib import Path\n"
        "for p in sorted(Path('dicom_chain').rglob('*.py')):\n"
        "    parts = p.with_suffix('').parts\n"
        "    if parts[1] == 'cli' or parts[1:3] == ('db', 'migrations'):\n"
        "        continue\n"
        "    importlib.import_module('.'.join(parts[:-1] if parts[-1] == '__init__' else parts))\n"
        "print(sorted(m for m in ('click', 'rich', 'scp') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_groups_config_option_applies_to_the_command(tmp_path: Path, served):
    """``dicom-chain --config f.toml serve`` was ignored: the gateway started on its defaults."""
    config = tmp_path / "gw.toml"
    config.write_text('port = 12007\nallow = ["CT1"]\n[serve]\nae_title = "FROM_GROUP"\n')
    result = CliRunner().invoke(main, ["--config", str(config), "serve", "--home", str(tmp_path / "h")])
    assert result.exit_code == 0, result.output
    [settings] = served
    assert (settings.port, settings.allow, settings.ae_title) == (12007, ("CT1",), "FROM_GROUP")
    other = tmp_path / "other.toml"
    other.write_text("port = 13000\n")
    args = ["--config", str(config), "serve", "--config", str(other), "--home", str(tmp_path / "h")]
    assert CliRunner().invoke(main, args).exit_code == 0  # the command's own file replaces the group's
    assert served[-1].port == 13000
    env = {"DICOM_CHAIN_CONFIG": str(other)}  # the environment's file does not beat one on the command line
    assert CliRunner().invoke(main, args[:3] + args[5:], env=env).exit_code == 0
    assert served[-1].port == 12007


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        ("prot = 12007\n", "unknown setting 'prot'"),
        ("[serve]\nprot = 12007\n", "unknown setting 'serve.prot'"),
        ("[serv]\nport = 12007\n", "unknown setting 'serv'"),
        ('port = "12007"\n', "port: expected an integer, got '12007'"),
        ("port = 70000\n", "port = 70000: must be 1 to 65535"),
        ("allow = 3\n", "allow: expected a list"),
    ],
)
@pytest.mark.parametrize("where", ["group", "command"])
def test_an_unknown_or_mistyped_config_key_is_an_error_naming_key_and_file(tmp_path, toml, says, where):
    config = tmp_path / "gw.toml"
    config.write_text(toml)
    args = ["--config", "gw.toml", "serve"] if where == "group" else ["serve", "--config", "gw.toml"]
    result = run(*args, "--home", "h", cwd=tmp_path)  # would listen on 11112 for good if not refused
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"gw.toml: {says}" in result.stderr
    assert not (tmp_path / "h").exists()


def test_a_taken_port_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--home", "h", "--host", "127.0.0.1", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: port {port} is already in use") and "--port" in last


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--home", "afile/h"], 1, "Error: cannot create or write afile/h"),
        (
            ["--tls-cert", "bad.pem", "--tls-key", "bad.pem"],
            2,
            "Error: --tls-cert bad.pem / --tls-key bad.pem",
        ),
        (["--tls-cert", "bad.pem", "--tls-ca", "afile"], 2, "Error: --tls-cert bad.pem"),
        (["--host", "192.0.2.1"], 2, "Error: --host 192.0.2.1 is not an address of this machine"),
        (["--db", "postgresql+psycopg://x@127.0.0.1:1/x"], 1, "Error: cannot open ledger"),
    ],
    ids=["unwritable-home", "bad-tls-files", "bad-tls-cert-before-ca", "foreign-host", "database-down"],
)
def test_every_start_up_failure_of_serve_is_one_line_and_an_exit_code(tmp_path, args, code, says):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "bad.pem").write_text("not a certificate")
    with socket.socket() as probe:  # a free port, so that only the failure under test can stop the start
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run("serve", "--home", "h", "--port", str(port), *args, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(says)
