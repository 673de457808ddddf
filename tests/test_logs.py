"""Log lines of serve and forward: what a peer sends cannot forge a line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from tests.peers import free_port, wait_until

FORGED = "1.2.3\n2026-01-01 00:00:00,000 ERROR scp.handlers forged line\x1b[2J\u2028x"
SCRIPT = """
import logging, sys
from scp.logs import configure_logging
configure_logging()
log = logging.getLogger("scp.handlers")
log.info("c-store calling_ae=%s sop=%s", "MOD\\r\\nX", sys.argv[1])
try:
    raise ValueError(sys.argv[1])
except ValueError:
    log.exception("failed sop=%s", sys.argv[1])
"""


def test_control_characters_in_any_field_stay_on_their_line():
    """A UID with a newline (and an escape sequence) logged as serve logs it: two records, two
    record lines; the traceback's lines are marked, the forged text is escaped everywhere."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, FORGED], capture_output=True, text=True, check=True, timeout=60
    )
    lines = result.stderr.splitlines()
    records = [line for line in lines if not line.startswith("  | ")]
    assert len(records) == 2, lines
    assert records[0].endswith("c-store calling_ae=MOD\\r\\nX sop=1.2.3\\n2026-01-01 00:00:00,000 ERROR "
                               "scp.handlers forged line\\x1b[2J\\u2028x")  # fmt: skip
    assert all("\x1b" not in line and "\u2028" not in line for line in lines)
    assert "  | ValueError: 1.2.3" in lines  # a traceback's line breaks are its own, each marked
    assert "  | 2026-01-01 00:00:00,000 ERROR scp.handlers forged line\\x1b[2J\\u2028x" in lines


JSON_SCRIPT = """
import logging, sys
from dicom_chain.config import Settings
from scp.logs import configure_logging
configure_logging(Settings(log_format="json"))
log = logging.getLogger("scp.handlers")
log.info("c-store calling_ae=%s sop=%s study=%s outcome=%s height=%d", "CT 1", sys.argv[1], "1.2", "done", 7)
log.warning("%s calling_ae=%s status=0x%04X error=%r", "c-store", "CT1", 0x110, "no = value")
log.info("association accepted", extra={"peer": "10.0.0.7", "ae": "CT1"})
logging.getLogger("alembic.runtime.migration").info("Running upgrade 0001 -> 0002")
try:
    raise ValueError(sys.argv[1])
except ValueError:
    log.exception("failed sop=%s", sys.argv[1])
"""


def test_json_format_is_one_object_per_line_with_the_records_fields():
    """--log-format json: every line parses on its own and carries ts, level, logger, message and
    the record's fields, from its ``key=%s`` pairs (exact even when a value holds spaces or ``=``)
    and from ``extra``; a forged newline and a traceback stay inside their object."""
    result = subprocess.run(
        [sys.executable, "-c", JSON_SCRIPT, FORGED], capture_output=True, text=True, check=True, timeout=60
    )
    lines = result.stderr.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4, lines  # Alembic's INFO is not among them at the default level
    store, refused, accepted, failed = records
    assert {"ts", "level", "logger", "message"} <= store.keys()
    assert datetime.fromisoformat(store["ts"]).tzinfo is not None
    assert (store["level"], store["logger"]) == ("info", "scp.handlers")
    assert store["calling_ae"] == "CT 1" and store["sop"] == FORGED and store["height"] == 7
    assert store["outcome"] == "done" and store["study"] == "1.2"
    assert (
        refused["level"] == "warning" and refused["status"] == "0x0110" and refused["error"] == "no = value"
    )
    assert accepted["peer"] == "10.0.0.7" and accepted["ae"] == "CT1"
    assert failed["sop"] == FORGED and "ValueError" in failed["exc"] and failed["level"] == "error"
    assert all("\x1b" not in line and "\u2028" not in line for line in lines)


def _serve(home: Path, *args: str, ready: str, log: Path | None = None) -> str:
    """``dicom-chain serve`` started fresh on a new home, stopped with SIGTERM once ``ready`` shows
    in its log (``log``, else its stderr): its stderr."""
    stderr_file = home.parent / f"{home.name}.stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_CHAIN_")}
    env["PYTHONWARNINGS"] = "default"  # a DeprecationWarning would show, not be filtered away
    with stderr_file.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_chain.cli", "serve", "--home", str(home),
             "--host", "127.0.0.1", "--port", str(free_port()), *args],
            stderr=stderr, env=env,
        )  # fmt: skip
    watched = log or stderr_file
    try:
        shown = wait_until(lambda: ready in (watched.read_text() if watched.exists() else ""), 60)
        assert shown, stderr_file.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, stderr_file.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return stderr_file.read_text()


def test_a_fresh_start_says_where_it_listens_and_little_else(tmp_path: Path):
    """A first start creates and migrates the ledger: none of Alembic's INFO lines and no
    DeprecationWarning; the start-up line names where it listens and what it forwards to."""
    stderr = _serve(
        tmp_path / "var", "--allow", "CT1", "--forward", "PACS@127.0.0.1:1", ready="forwarding to"
    )
    assert "alembic" not in stderr and "Warning" not in stderr, stderr
    lines = stderr.splitlines()
    [listening] = [line for line in lines if " listening " in line]
    assert "host=127.0.0.1" in listening and "forward=PACS@127.0.0.1:1" in listening
    assert len(lines) <= 3, stderr  # listening, the forward process started, stopped


def test_log_file_takes_the_lines_in_json_and_the_forward_process_logs_there_too(tmp_path: Path):
    """--log-file appends there, nothing on stderr; the forward process, started with serve's
    settings, writes to the same file in the same format; debug brings the libraries back."""
    log_file = tmp_path / "logs" / "gateway.log"
    log_file.parent.mkdir()
    log_file.write_text('{"earlier": "line"}\n')
    args = ("--log-file", str(log_file), "--log-format", "json", "--log-level", "debug")
    stderr = _serve(
        tmp_path / "var", *args, "--forward", "PACS@127.0.0.1:1", ready="forwarding to", log=log_file
    )
    assert stderr == ""
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert records[0] == {"earlier": "line"}  # appended, not truncated
    loggers = {r.get("logger") for r in records}
    assert "alembic.runtime.migration" in loggers  # shown at debug only
    [listening] = [r for r in records if r.get("message", "").startswith("listening ")]
    assert listening["port"] > 0 and listening["forward"] == "PACS@127.0.0.1:1"
    assert any(
        r.get("logger") == "dicom_chain.forward" and "forwarding to PACS@" in r["message"] for r in records
    )


def test_log_settings_are_checked_wherever_they_come_from(tmp_path: Path):
    """A level or format that is not one of the choices stops the command (exit 2), from the
    command line and from a config file alike, naming the key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_CHAIN_")}
    bad_cli = subprocess.run(
        [sys.executable, "-m", "dicom_chain.cli", "serve", "--log-level", "loud", "--home", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert bad_cli.returncode == 2 and "--log-level" in bad_cli.stderr
    config = tmp_path / "gw.toml"
    config.write_text('log_format = "xml"\n')
    bad_file = subprocess.run(
        [sys.executable, "-m", "dicom_chain.cli", "--config", str(config), "serve", "--home", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert bad_file.returncode == 2 and "log_format" in bad_file.stderr and str(config) in bad_file.stderr
