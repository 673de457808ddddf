from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_chain import timing
from dicom_chain.node import Node
from dicom_chain.verify import verify_files

from .conftest import SAMPLE_STUDY
from .gateways import start_server
from .peers import free_port, require_tool

# Every boundary an instance stored for the first time passes, in the order it passes them.
INGEST_STAGES = [
    "decode", "hash", "checks", "sender", "index.values", "intent", "db.begin", "db.select", "sign",
    "splice", "file.create", "file.write", "confirm", "db.block", "db.enqueue", "db.event", "fsync.file",
    "link", "db.commit", "index.queue", "log",
]  # fmt: skip
# After "link", where a file was not written into a spare (the association's first): its folder's
# sync; a spare's waits for the response (storage.Spares).
FOLDER_SYNC = "fsync.folder"


@pytest.fixture
def timed(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "timing.jsonl"
    timing.configure(path)
    yield path
    timing.configure(None)


def test_off_every_hook_does_nothing(tmp_path: Path):
    assert not timing.ON  # the test run does not set DICOM_CHAIN_TIMING
    timing.begin()
    timing.mark("a")
    with timing.stage("b"):
        pass
    timing.end("c")
    timing.flush()
    assert getattr(timing._local, "rec", None) is None
    assert list(tmp_path.iterdir()) == []


def test_stages_add_up_to_the_total_and_between_is_the_gap(timed: Path):
    for _ in range(2):
        timing.begin()
        timing.mark("decode")
        with timing.stage("hash"):
            pass
        timing.mark("decode")  # a stage met twice is summed
        timing.end("log")
    timing.mark("outside")  # no record open: ignored
    timing.flush()
    first, second = timing.read(timed)
    assert list(first["stages"]) == ["decode", "other", "hash", "log"]
    for record in (first, second):
        assert sum(record["stages"].values()) == record["total"] > 0
    assert first["between"] is None and second["between"] > 0
    assert set(timing.summary([first, second])) == {"decode", "other", "hash", "log", "total", "between"}


def test_records_of_concurrent_threads_do_not_mix(timed: Path):
    barrier = threading.Barrier(2)

    def instance(name: str) -> None:
        timing.begin()
        barrier.wait()
        timing.mark(name)
        barrier.wait()
        timing.end("log")

    threads = [threading.Thread(target=instance, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    timing.flush()
    assert sorted(list(r["stages"]) for r in timing.read(timed)) == [["one", "log"], ["two", "log"]]


def test_a_gateway_records_every_stage_of_each_instance_once_released(node: Node, timed: Path):
    """The hooks are wired at the real stage boundaries: DCMTK sends a study, and each instance's
    record names every stage in order, written when the association is released."""
    storescu = require_tool("storescu", "dcmtk")
    files = sorted(SAMPLE_STUDY.glob("*.dcm"))
    port = free_port()
    ae = start_server(node, ae_title="DICOMCHAIN", host="127.0.0.1", port=port)
    try:
        sent = subprocess.run(
            [storescu, "-aec", "DICOMCHAIN", "127.0.0.1", str(port), *map(str, files)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    finally:
        ae.shutdown()
    records = timing.read(timed)
    assert len(records) == len(files)
    for record in records:
        stages = list(record["stages"])
        assert [s for s in stages if s != FOLDER_SYNC] == INGEST_STAGES
        first = record["between"] is None  # the association's first: no spare made for it yet
        assert (FOLDER_SYNC in stages) == first
        if first:
            assert stages.index(FOLDER_SYNC) == stages.index("link") + 1
        assert sum(record["stages"].values()) == record["total"]
    assert sum(r["between"] is None for r in records) == 1  # the first of the association only
    assert verify_files([node.storage.path(p) for p in node.storage.iter_files()]).ok
