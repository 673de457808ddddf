"""The demo returns what happened; the command line only shows it."""

from __future__ import annotations

from pathlib import Path

from dicom_chain.config import Settings
from scp.demo import NEWEST_BLOCKS, run_demo, study_files


def test_demo_sends_verifies_and_returns_the_newest_blocks(tmp_path: Path):
    files = study_files(tmp_path / "study")[:3]
    advanced: list[int] = []
    run = run_demo(Settings(home=tmp_path / "var"), files, advance=advanced.append)
    assert run.statuses == [0, 0, 0] and run.acknowledged == 3 and advanced == [1, 1, 1]
    assert run.report.ok and run.report.blocks_checked == 3
    assert run.total_blocks == 3 < NEWEST_BLOCKS
    assert [stored.block.header.height for stored in run.newest] == [0, 1, 2]
    assert run.host == "127.0.0.1" and run.port > 0
