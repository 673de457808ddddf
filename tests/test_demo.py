"""The demo returns what happened; the command line only shows it."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

from dicom_chain.config import Settings
from scp.demo import DEMO_HOME_PREFIX, NEWEST_BLOCKS, run_demo, study_files


def run_cli(*args: str, cwd: Path, tmp: Path) -> subprocess.CompletedProcess:
    """``dicom-chain ARGS`` in ``cwd``, with ``tmp`` as the system temp folder and no DICOM_CHAIN_* set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_CHAIN_")}
    env["TMPDIR"] = str(tmp)
    env["COLUMNS"] = "500"  # long temp paths on one line
    return subprocess.run(
        [sys.executable, "-m", "dicom_chain.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_demo_sends_verifies_and_returns_the_newest_blocks(tmp_path: Path):
    files = study_files(tmp_path / "study")[:3]
    advanced: list[int] = []
    run = run_demo(Settings(home=tmp_path / "var"), files, advance=advanced.append)
    assert run.statuses == [0, 0, 0] and run.acknowledged == 3 and advanced == [1, 1, 1]
    assert run.report.ok and run.report.blocks_checked == 3
    assert run.total_blocks == 3 < NEWEST_BLOCKS
    assert [stored.block.header.height for stored in run.newest] == [0, 1, 2]
    assert run.host == "127.0.0.1" and run.port > 0


def test_demo_runs_in_a_home_of_its_own_and_leaves_the_real_node_alone(tmp_path: Path):
    """``dicom-chain demo`` from a folder holding a node: the CHAIN^DEMO study goes to a new
    temporary home, named on the first line and kept; ./var is not touched, not even created."""
    cwd, tmp = tmp_path / "site", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    result = run_cli("demo", cwd=cwd, tmp=tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (cwd / "var").exists()
    [home] = list(tmp.glob(DEMO_HOME_PREFIX + "*"))
    said = " ".join(result.stdout.split())  # the console wraps long lines
    assert said.startswith(f"demo node in {home} ")
    assert "8 acknowledged with Success" in said and "verify: intact" in said
    assert re.search(r"chain \w{8}: all 8 blocks", said)  # the real count, not a fixed 12
    assert len(list((home / "storage").rglob("*.dcm"))) == 8  # kept, so that it can be verified
    assert f"dicom-chain verify --home {home} {home / 'storage'}" in said  # what to run next, as is
    again = run_cli("verify", "--home", str(home), str(home / "storage"), cwd=cwd, tmp=tmp)
    assert again.returncode == 0 and "8 block(s)" in again.stdout


def test_demo_with_home_given_uses_it(tmp_path: Path):
    result = run_cli("demo", "--home", "var", cwd=tmp_path, tmp=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo node in" not in result.stdout and not list(tmp_path.glob(DEMO_HOME_PREFIX + "*"))
    assert len(list((tmp_path / "var" / "storage").rglob("*.dcm"))) == 8


def test_the_table_title_counts_what_it_shows(tmp_path: Path):
    run = run_demo(Settings(home=tmp_path / "var"), study_files(tmp_path / "study")[:1])
    assert run.shown_blocks == "all 1 block"
    many = dataclasses.replace(run, newest=run.newest * NEWEST_BLOCKS, total_blocks=20)
    assert many.shown_blocks == f"the newest {NEWEST_BLOCKS} of 20 blocks"
