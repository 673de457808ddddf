"""Every parser against every malformed input: a named error or a finding, never a crash."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pydicom
import pytest

from dicom_chain.block import Block
from dicom_chain.carriers.dicom.canonical import content_hash
from dicom_chain.carriers.dicom.carrier import read_dataset
from dicom_chain.carriers.dicom.embedding import read_block
from dicom_chain.carriers.dicom.indexvalues import index_values
from dicom_chain.carriers.registry import open_file
from dicom_chain.errors import DicomChainError
from dicom_chain.node import Node
from dicom_chain.qr.index import IndexRecord
from dicom_chain.qr.query import parse_query, response
from dicom_chain.verify import verify_files
from dicom_chain.vocab import EventType

from .conftest import MALFORMED

INPUTS = sorted(p for p in MALFORMED.iterdir() if p.suffix in (".dcm", ".bin"))
EXPECTED = tomllib.loads((MALFORMED / "expected.toml").read_text())["ingest"]
PADDED = "pixel-data-length: 8320 bytes, 8192 expected"


def test_the_folder_is_populated():
    assert len(INPUTS) >= 18


def _dataset_or_none(path: Path):
    try:
        return read_dataset(path)
    except DicomChainError:
        return None


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: p.name)
def test_parsers_raise_only_named_errors(path: Path):
    ds = _dataset_or_none(path)
    if ds is not None:
        for parse in (content_hash, read_block):
            with contextlib.suppress(DicomChainError):
                parse(ds)
        IndexRecord.from_values(index_values(ds), "")  # what does not decode indexes as empty
        for level in ("PATIENT", "STUDY", "IMAGE"):  # the file's elements as a C-FIND identifier
            ds.QueryRetrieveLevel = level
            for model, retrieve in (("PATIENT", False), ("STUDY", False), ("STUDY", True)):
                with contextlib.suppress(DicomChainError):
                    response(parse_query(ds, model, retrieve=retrieve), {}, "GW")
    with contextlib.suppress(DicomChainError):
        Block.from_bytes(path.read_bytes())
    with contextlib.suppress(DicomChainError):  # the carrier interface, as verify and ingest use it
        carried = open_file(path)
        for step in (carried.content_hash, carried.read_block, carried.identity, carried.check):
            with contextlib.suppress(DicomChainError):
                step()
        assert isinstance(carried.item_id_hint, str)


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: p.name)
def test_verify_names_every_malformed_file(path: Path):
    report = verify_files([path])
    assert not report.ok
    assert all(f.path == str(path) for f in report.errors)


def test_every_input_has_an_expected_outcome():
    assert sorted(EXPECTED) == sorted(p.name for p in INPUTS)


@pytest.mark.parametrize("path", INPUTS, ids=lambda p: p.name)
def test_ingest_refuses_or_stores_inside_the_store(path: Path, node: Node):
    expected = EXPECTED[path.name]
    try:
        result = node.ingest_file(path)
    except DicomChainError as exc:
        assert "refused" in expected, f"refused: {exc}"
        assert expected["refused"] in str(exc)
        assert node.ledger.block_count() == 0
        assert list(node.storage.iter_files()) == []
        return
    assert "stored" in expected, "stored, though it should be refused"
    # Accepted (e.g. odd UIDs): the file must be inside the store and verify.
    assert result.path.resolve().is_relative_to(node.storage.root.resolve())
    assert verify_files([result.path]).ok
    assert pydicom.dcmread(result.path).SOPInstanceUID == result.block.header.sop_instance_uid
    # what was kept though it does not conform is named, on the result and in the receipt event
    assert list(result.anomalies) == expected["stored"]
    [receipt] = [e for e in node.ledger.iter_events() if e.type == EventType.INSTANCE_RECEIVED]
    assert receipt.details.get("anomalies", []) == expected["stored"]


def test_the_ingest_command_names_each_bad_file_and_goes_on(tmp_path: Path):
    """The whole folder in one run: one line per refused file (its path and reason), every
    good one chained after a bad one, a summary, exit 1, and no traceback."""
    run = subprocess.run(
        [sys.executable, "-m", "dicom_chain.cli", "ingest", "--home", str(tmp_path / "node"), str(MALFORMED)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert "Traceback" not in run.stderr + run.stdout
    refused = sorted(name for name, outcome in EXPECTED.items() if "refused" in outcome)
    lines = run.stderr.splitlines()
    for name in refused:
        [line] = [x for x in lines if x.startswith("refused") and f"{MALFORMED / name}:" in x]
        assert EXPECTED[name]["refused"] in line
    stored = [name for name, outcome in EXPECTED.items() if "stored" in outcome]
    chained = run.stdout.splitlines()
    assert len(chained) == len(stored)
    padded = next(x for x in chained if x.endswith(f"pydicom_MR_small_padded.dcm  (warning: {PADDED})"))
    assert padded.startswith("stored")
    others = [p for p in MALFORMED.iterdir() if p not in INPUTS]  # this folder's script and table
    assert all(any(x.startswith(f"refused     {p}: not a file") for x in lines) for p in others)
    failed = len(refused) + len(others)
    assert lines[-1].startswith(f"{len(stored)} ingested (") and lines[-1].endswith(f", {failed} failed")
