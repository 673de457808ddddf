"""Readable copies in the data set's character set: non-Latin institution names verify everywhere.

The matrix of issue 12: institution names in Polish, Japanese, Greek and Arabic against files whose
Specific Character Set is absent, ISO_IR 100, ISO_IR 192 and ISO 2022 IR 87, each ingested through
``Node.ingest`` both from its bytes (spliced) and as a dataset (pydicom writes it), then verified,
also after DCMTK re-encodes it.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_chain.carriers.dicom.carrier import DICOM
from dicom_chain.carriers.dicom.embedding import character_set, readable_text
from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_files

from .peers import require_tool

INSTITUTIONS = {
    "polish": "Szpital Łódź",
    "japanese": "東京病院",
    "greek": "Νοσοκομείο Αθηνών",
    "arabic": "مستشفى القاهرة",
    "backslash": "Clinique Ré\\Nord",
}
CHARSETS: dict[str, list[str] | None] = {
    "none": None,
    "latin1": ["ISO_IR 100"],
    "utf8": ["ISO_IR 192"],
    "jis": ["", "ISO 2022 IR 87"],
}
INSTITUTION_COPY = 0x1007  # (0071,xx07) in the first slot


def instance(seed: int, charset: list[str] | None) -> Dataset:
    ds = next(ct_study(StudySpec(seed=seed, instances=1, rows=8, columns=8)))
    if charset is None:
        ds.pop("SpecificCharacterSet", None)
    else:
        ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    return ds


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module", params=sorted(INSTITUTIONS))
def chained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """One node per institution; every character set, spliced and written by pydicom."""
    institution = INSTITUTIONS[request.param]
    node = Node.open(Settings(home=tmp_path_factory.mktemp(request.param), institution=institution))
    paths = []
    try:
        for seed, (_, charset) in enumerate(sorted(CHARSETS.items()), start=100):
            spliced = DICOM.open(part10(instance(seed, charset))).item()
            by_pydicom = DICOM.dataset(instance(seed + 50, charset)).item()
            paths += [node.ingest(spliced).path, node.ingest(by_pydicom).path]
    finally:
        node.close()
    yield paths


def assert_verifies(paths: list[Path]) -> None:
    for path in paths:
        report = verify_files([path])
        assert report.ok, (path, [f.message for f in report.errors])
        assert report.blocks_checked == 1


def test_every_character_set_verifies_freshly_ingested(chained: list[Path]):
    assert len(chained) == 2 * len(CHARSETS)
    assert_verifies(chained)


def test_the_copy_holds_what_the_character_set_encodes(chained: list[Path]):
    for path in chained:
        ds = pydicom.dcmread(path)
        block = DICOM.open(path.read_bytes()).read_block()
        copy = ds[(CHAIN_GROUP << 16) | INSTITUTION_COPY].value
        want = readable_text(block.header.institution.replace("\\", "/"), character_set(ds))
        assert copy == want
        if ds.get("SpecificCharacterSet") == "ISO_IR 192":
            assert "?" not in copy  # UTF-8 encodes every name in full


@pytest.mark.dcmtk
@pytest.mark.parametrize("option", ["+te", "+ti"])
def test_verifies_after_a_dcmtk_hop(chained: list[Path], option: str, tmp_path: Path):
    dcmconv = require_tool("dcmconv", "dcmtk")
    hopped = []
    for i, path in enumerate(chained):
        out = tmp_path / f"{i}.dcm"
        subprocess.run([dcmconv, option, str(path), str(out)], check=True, capture_output=True)
        hopped.append(out)
    assert_verifies(hopped)


def test_a_hand_edited_copy_is_still_caught(chained: list[Path], tmp_path: Path):
    ds = pydicom.dcmread(chained[0])
    ds[(CHAIN_GROUP << 16) | INSTITUTION_COPY].value = "Somewhere Else"
    ds.save_as(tmp_path / "edited.dcm")
    report = verify_files([tmp_path / "edited.dcm"])
    assert not report.ok
    assert any("ChainInstitution" in f.message for f in report.errors)
