"""Carriers: the registry picks one by magic bytes; DICOM is one of them; a new format is a
sibling that node, store and verify take without a line changed (a toy carrier proves it)."""

from __future__ import annotations

import ast
import copy
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import dicom_chain
from dicom_chain.block import ITEM_FORMAT_VERSION, Block
from dicom_chain.carriers import registry
from dicom_chain.carriers.base import Carried, Carrier, Identity
from dicom_chain.carriers.dicom.carrier import DICOM, DicomCarried, item_from_dataset
from dicom_chain.errors import (
    MalformedBlockError,
    MalformedDatasetError,
    NoBlockError,
    NotDicomError,
    UnknownFormatError,
)
from dicom_chain.node import Node
from dicom_chain.verify import verify_files, verify_node
from dicom_chain.vocab import FindingKind, IngestOutcome

from .conftest import pydicom_file, read

PACKAGE = Path(dicom_chain.__file__).parent


# A toy format, defined here only: magic, one JSON line naming the item (and holding its block
# once chained), then the content. What a PNG carrier would do with a tEXt chunk.
TOY_MAGIC = b"TOY\n"


class ToyCarrier(Carrier):
    name = "toy"
    suffix = ".toy"
    block_format = ITEM_FORMAT_VERSION
    magic_length = len(TOY_MAGIC)

    def recognises(self, head: bytes) -> bool:
        return head == TOY_MAGIC

    def open(self, data: bytes) -> ToyCarried:
        head, _, content = data[len(TOY_MAGIC) :].partition(b"\n")
        try:
            names = json.loads(head)
        except ValueError as exc:
            raise NotDicomError(f"not a toy file: {exc}") from exc
        return ToyCarried(names, content)


TOY = ToyCarrier()


class ToyCarried(Carried):
    carrier = TOY

    def __init__(self, names: dict, content: bytes) -> None:
        self.names = names
        self.content = content

    @property
    def item_id_hint(self) -> str:
        return str(self.names.get("item", ""))

    def content_hash(self, version: int | None = None) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def read_block(self) -> Block:
        if "block" not in self.names:
            raise NoBlockError("toy file without a block")
        return Block.from_bytes(self.names["block"].encode())

    def identity(self) -> Identity:
        if not self.names.get("item"):
            raise MalformedDatasetError("toy file names no item")
        n = self.names
        return Identity(n["item"], n["group"], n["series"], "toy/picture", n.get("patient", ""), "raw")

    def check(self) -> None:
        pass

    def with_block(self, block: Block) -> Iterable[bytes]:
        names = {**self.names, "block": block.to_bytes().decode()}
        return [TOY_MAGIC, json.dumps(names).encode(), b"\n", self.content]


def toy_file(folder: Path, item: str, content: bytes, group: str = "visit-1") -> Path:
    path = folder / f"{item}.toy"
    names = {"item": item, "group": group, "series": "photos", "patient": "P-1"}
    path.write_bytes(TOY_MAGIC + json.dumps(names).encode() + b"\n" + content)
    return path


@pytest.fixture
def toy() -> Iterator[ToyCarrier]:
    registry.register(TOY)
    yield TOY
    registry.unregister(TOY)


def test_the_registry_chooses_by_magic_bytes(tmp_path: Path, toy: ToyCarrier):
    assert registry.carrier_for(pydicom_file("CT_small.dcm")) is DICOM
    assert registry.carrier_for(pydicom_file("CT_small.dcm").read_bytes()) is DICOM
    assert registry.carrier_for(toy_file(tmp_path, "a", b"pixels")) is TOY
    for data in (b"", b"TOY", b"\x89PNG\r\n\x1a\n", b"\x00" * 128 + b"DICX"):
        with pytest.raises(UnknownFormatError):
            registry.carrier_for(data)


def test_unknown_files_name_their_path_and_stay_not_dicom(tmp_path: Path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(NotDicomError, match=r"notes\.txt"):
        registry.open_file(text)
    with pytest.raises(NotDicomError, match="is a directory"):
        registry.open_file(tmp_path)


def test_a_new_format_is_chained_stored_and_verified_by_its_carrier_alone(
    node: Node, tmp_path: Path, toy: ToyCarrier
):
    """node.py, storage.py and verify.py know nothing of this format, yet take it whole."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    results = [node.ingest_file(toy_file(incoming, f"photo-{i}", bytes([i]) * 64)) for i in range(3)]
    assert [r.outcome for r in results] == [IngestOutcome.STORED] * 3
    header = results[0].block.header
    assert (header.version, header.carrier, header.item_id, header.group_id) == (
        2,
        "toy",
        "photo-0",
        "visit-1",
    )
    assert [r.block.header.study_index for r in results] == [0, 1, 2]  # the group's links
    assert results[0].path.name == "photo-0.toy" and results[0].path.is_relative_to(node.storage.root)
    assert node.ingest_file(toy_file(incoming, "photo-1", bytes([1]) * 64)).outcome == IngestOutcome.DUPLICATE
    stored = [r.path for r in results]
    report = verify_files(stored)
    assert report.ok and report.blocks_checked == 3, report.findings
    assert verify_node(node.ledger, node.storage).ok

    altered = stored[1].read_bytes()[:-1] + b"\xff"
    stored[1].write_bytes(altered)
    assert [(f.kind, f.sop_instance_uid) for f in verify_files(stored).errors] == [
        (FindingKind.ALTERED, "photo-1")
    ]
    missing = verify_files([stored[0], stored[2]], complete=True).errors
    assert {f.kind for f in missing} == {FindingKind.MISSING_INSTANCE}


def test_a_format_dicom_peers_cannot_take_is_not_queued_for_them(tmp_path: Path, toy: ToyCarrier):
    from dicom_chain.config import Settings

    node = Node.open(Settings(home=tmp_path / "node", forward=("PACS@127.0.0.1:104",)))
    try:
        node.ingest_file(toy_file(tmp_path, "photo", b"pixels"))
        assert node.outbox.pending_count() == 0
        node.ingest(item_from_dataset(read("CT_small.dcm")))
        assert node.outbox.pending_count() == 1
    finally:
        node.close()


def test_without_its_carrier_a_format_is_not_read(tmp_path: Path):
    report = verify_files([toy_file(tmp_path, "a", b"x")])
    assert [f.kind for f in report.errors] == [FindingKind.NOT_DICOM]


def test_node_verify_and_storage_import_nothing_of_dicom():
    """The modules above the carriers know no file format: no pydicom, no DICOM carrier."""
    for name in ("node.py", "verify.py", "storage.py", "block.py", "sharing/policy.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        dicom = {m for m in imported if m.startswith(("pydicom", "pynetdicom", "dicom_chain.carriers.dicom"))}
        assert not dicom, (name, dicom)


# The DICOM carrier


def test_dicom_identity_maps_the_four_uids():
    ds = read("CT_small.dcm")
    item = item_from_dataset(ds)
    assert item.identity == Identity(
        item_id=ds.SOPInstanceUID,
        group_id=ds.StudyInstanceUID,
        series_id=ds.SeriesInstanceUID,
        item_class=ds.SOPClassUID,
        patient_id=ds.PatientID,
        encoding=ds.file_meta.TransferSyntaxUID,
    )
    assert item.carrier is DICOM and len(item.content_hash) == 64


@pytest.mark.parametrize(
    "keyword", ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"]
)
def test_a_dataset_without_a_uid_is_no_item(keyword: str):
    ds = read("CT_small.dcm")
    delattr(ds, keyword)
    with pytest.raises(MalformedDatasetError, match=keyword):
        item_from_dataset(ds)


def test_a_file_without_a_block_still_names_its_item():
    carried = registry.open_file(pydicom_file("CT_small.dcm"))
    assert isinstance(carried, DicomCarried)
    assert carried.item_id_hint == read("CT_small.dcm").SOPInstanceUID
    with pytest.raises(NoBlockError):
        carried.read_block()


def test_a_garbled_block_element_is_a_malformed_block(monkeypatch):
    from dicom_chain.carriers.dicom import carrier

    def explode(_ds):
        raise TypeError("pydicom choked on a private element")

    monkeypatch.setattr(carrier, "read_block", explode)
    with pytest.raises(MalformedBlockError, match="block unreadable"):
        DICOM.dataset(read("CT_small.dcm")).read_block()


def test_the_block_goes_into_the_bytes_as_received_or_through_pydicom(node: Node):
    """Spliced when the bytes are at hand, written by pydicom otherwise; the same block either way."""
    ds = read("CT_small.dcm")
    block = node.ingest(item_from_dataset(copy.deepcopy(ds))).block
    by_pydicom = b"".join(DICOM.dataset(copy.deepcopy(ds)).with_block(block))
    spliced = b"".join(DICOM.open(pydicom_file("CT_small.dcm").read_bytes()).with_block(block))
    for data in (by_pydicom, spliced):
        again = DICOM.open(data)
        assert again.read_block() == block
        again.check_content(block)
    assert spliced.startswith(pydicom_file("CT_small.dcm").read_bytes()[:132])
