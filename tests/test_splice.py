"""Chained files written from the received bytes: identical to pydicom's result, readable by DCMTK."""

from __future__ import annotations

import copy
import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.charset import python_encoding
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import decode

from dicom_chain.block import FORMAT_VERSION, GENESIS_HASH, Block, BlockHeader, utc_now
from dicom_chain.carriers.dicom import carrier as carrier_module
from dicom_chain.carriers.dicom import splice as splice_module
from dicom_chain.carriers.dicom.canonical import content_hash
from dicom_chain.carriers.dicom.carrier import DICOM
from dicom_chain.carriers.dicom.embedding import embed_block, encode_value, read_block
from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP
from dicom_chain.carriers.dicom.splice import (
    PREAMBLE,
    EncodedInstance,
    Splice,
    _packed_meta,
    file_meta_bytes,
    spliced,
)
from dicom_chain.errors import UnfaithfulFileError
from dicom_chain.keys import NodeKey
from dicom_chain.storage import Storage

from .conftest import TEST_FILES, pydicom_file
from .peers import require_tool

KEY = NodeKey.generate()
SPLICEABLE = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm",
    "rtplan.dcm", "test-SR.dcm", "SC_rgb_small_odd_big_endian.dcm",
    "MR_small_RLE.dcm", "waveform_ecg.dcm", "rtdose.dcm",
]  # fmt: skip


def make_block(ds, institution: str = "Test Hospital") -> Block:
    header = BlockHeader(
        FORMAT_VERSION, "5f1ce000-0000-4000-8000-000000000000", 0, GENESIS_HASH, content_hash(ds),
        utc_now(), institution, KEY.key_id, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), 0, GENESIS_HASH,
    )  # fmt: skip
    return Block.sign(header, KEY)


def splice_file(name: str, institution: str = "Test Hospital"):
    ds, encoded = EncodedInstance.from_part10(pydicom_file(name).read_bytes())
    assert encoded is not None
    block = make_block(ds, institution)
    return ds, block, spliced(ds, encoded, block)


@pytest.mark.parametrize("name", SPLICEABLE)
def test_spliced_file_is_the_original_plus_our_block(name):
    _, block, pieces = splice_file(name)
    assert pieces is not None
    prefix, before, _ours, after = pieces
    assert prefix + before + after == pydicom_file(name).read_bytes()  # every other byte as received
    again = pydicom.dcmread(io.BytesIO(b"".join(pieces)))
    assert read_block(again) == block
    assert content_hash(again) == block.header.content_hash
    assert len([t for t in again.keys() if t >> 16 == CHAIN_GROUP]) == 11


@pytest.mark.parametrize("name", SPLICEABLE)
def test_spliced_equals_what_pydicom_writes(name):
    _, block, pieces = splice_file(name)
    by_pydicom = pydicom.dcmread(pydicom_file(name))
    embed_block(by_pydicom, block)
    buf = io.BytesIO()
    by_pydicom.save_as(buf, enforce_file_format=True)
    a = pydicom.dcmread(io.BytesIO(b"".join(pieces)))
    b = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert list(a.keys()) == list(b.keys())
    for tag in a.keys():
        assert a[tag].value == b[tag].value, tag


def test_non_ascii_institution_is_spliced_in_the_data_sets_character_set():
    _, block, pieces = splice_file("CT_small.dcm", institution="Hôpital Łódź")  # CT_small: ISO_IR 100
    assert pieces is not None
    again = pydicom.dcmread(io.BytesIO(b"".join(pieces)))
    assert read_block(again) == block
    assert b"H\xf4pital ?\xf3d?" in bytes(pieces[2])  # Latin-1; what it cannot encode is ?


def test_fallbacks_return_none():
    ds, encoded = EncodedInstance.from_part10(pydicom_file("image_dfl.dcm").read_bytes())
    assert encoded is None or spliced(ds, encoded, make_block(ds)) is None  # deflate
    ds, encoded = EncodedInstance.from_part10(pydicom_file("CT_small.dcm").read_bytes())
    ds.add_new((CHAIN_GROUP << 16) | 0x0010, "LO", "OTHER_VENDOR")
    assert spliced(ds, encoded, make_block(ds)) is None  # our group is in use


def test_files_without_preamble_or_group_length_are_not_spliced():
    _, encoded = EncodedInstance.from_part10(pydicom_file("no_meta_group_length.dcm").read_bytes())
    assert encoded is None


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm"],
)
def test_dcmtk_reads_spliced_files(name, tmp_path: Path):
    dcmdump = require_tool("dcmdump", "dcmtk")
    _, block, pieces = splice_file(name)
    path = tmp_path / "chained.dcm"
    path.write_bytes(b"".join(pieces))
    result = subprocess.run([dcmdump, "-E", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "E:" not in result.stderr
    assert "[DICOM_CHAIN]" in result.stdout
    assert len([line for line in result.stdout.splitlines() if line.startswith("(0071,")]) == 11
    if "Implicit" not in result.stdout:  # with explicit VR, DCMTK shows our values as text
        assert block.hash in result.stdout


def test_every_bundled_file_either_splices_or_falls_back_cleanly():
    for path in sorted(TEST_FILES.glob("*.dcm")):
        try:
            ds, encoded = EncodedInstance.from_part10(path.read_bytes())
            block = make_block(ds)
        except Exception:
            continue  # not chainable at all: covered by the malformed-input tests
        if encoded is None:
            continue
        pieces = spliced(ds, encoded, block)
        if pieces is not None:
            assert read_block(pydicom.dcmread(io.BytesIO(b"".join(pieces)))) == block, path.name


@pytest.mark.parametrize("name", SPLICEABLE)
def test_received_to_disk_is_spliced_as_received_in_memory(name, tmp_path: Path, monkeypatch):
    """A C-STORE received to a file (large values left there, read 100 bytes at a time here, and
    copied by the kernel when stored) gives the same chained file, byte for byte, as the same data
    set received in memory."""
    from dicom_chain.storage import Ranged, Storage

    monkeypatch.setattr("dicom_chain.storage.COPY_CHUNK_BYTES", 100)
    data = pydicom_file(name).read_bytes()
    ds, encoded = EncodedInstance.from_part10(data)
    assert encoded is not None and isinstance(encoded.body, bytes)
    syntax = ds.file_meta.TransferSyntaxUID
    in_memory = decode(io.BytesIO(encoded.body), syntax.is_implicit_VR, syntax.is_little_endian)
    in_memory.set_original_encoding(syntax.is_implicit_VR, syntax.is_little_endian)
    in_memory.file_meta = copy.deepcopy(ds.file_meta)
    memory_item = DICOM.received(in_memory, encoded.body).item()
    on_disk = tmp_path / "received.dcm"
    on_disk.write_bytes(data)
    disk_item = DICOM.received_file(on_disk, copy.deepcopy(ds.file_meta)).item()
    assert disk_item.content_hash == memory_item.content_hash
    block = make_block(ds)
    expected = b"".join(memory_item.with_block(block))
    assert b"".join(disk_item.with_block(block)) == expected
    pieces = disk_item.with_block(block)
    assert isinstance(pieces, Ranged)  # the store is handed ranges of the received file, not its bytes
    assert Storage(tmp_path / "store").write("a/b.dcm", pieces).read_bytes() == expected


def received_in_memory(name: str):
    """A file as a C-STORE received to memory gives it: parsed, its layout read, an item."""
    data = pydicom_file(name).read_bytes()
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    carried = DICOM.received_bytes(data, meta)
    return carried, carried.item()


def item_block(item, institution: str = "Test Hospital") -> Block:
    header = BlockHeader(
        FORMAT_VERSION, "5f1ce000-0000-4000-8000-000000000000", 0, GENESIS_HASH, item.content_hash,
        utc_now(), institution, KEY.key_id, item.identity.item_id, item.identity.group_id, 0, GENESIS_HASH,
        canonical=item.canonical, attributes_hash=item.attributes_hash,
    )  # fmt: skip
    return Block.sign(header, KEY)


def write_pieces(path: Path, pieces) -> Path:
    path.write_bytes(b"".join(bytes(p) for p in pieces))
    return path


def stored_with_block(name: str, folder: Path):
    """A file received to memory, given its block and written as the store writes it."""
    carried, item = received_in_memory(name)
    block = item_block(item)
    return carried, block, write_pieces(folder / "x.dcm", item.with_block(block))


@pytest.mark.parametrize("name", SPLICEABLE)
def test_a_spliced_file_is_confirmed_by_structure_and_verifies(tmp_path: Path, name: str):
    """What the cheap confirmation accepts, the full re-read and re-hash accepts too."""
    carried, block, path = stored_with_block(name, tmp_path)
    assert carried.as_read is not None
    assert carried._splice is not None  # the structural path, not pydicom's writer
    carried.confirm_written(path, block)
    DICOM.confirm(path, block)


@pytest.mark.parametrize("name", SPLICEABLE)
def test_a_faithful_spliced_file_is_confirmed_by_the_element_walk_alone(
    tmp_path: Path, name: str, monkeypatch
):
    """No pydicom parse of the stored file: the walk's layout, the bytes inserted and the block
    they encode suffice."""
    carried, block, path = stored_with_block(name, tmp_path)

    def parsed(*args, **kwargs):
        raise AssertionError("parsed back with pydicom")

    monkeypatch.setattr(carried, "_confirm_by_parse", parsed)
    carried.confirm_written(path, block)


@pytest.mark.parametrize("head", [200, 1000])
def test_headers_past_the_head_read_are_walked_in_the_whole_file(tmp_path: Path, monkeypatch, head: int):
    """A head that ends inside the file meta or before the block: the walk reads the rest and still
    confirms alone; through the store's descriptor, as the node confirms a write not yet named."""
    carried, item = received_in_memory("CT_small.dcm")
    block = item_block(item)
    pending = Storage(tmp_path).start_write("a/b.dcm", item.with_block(block))

    def parsed(*args, **kwargs):
        raise AssertionError("parsed back with pydicom")

    monkeypatch.setattr(carrier_module, "WALK_HEAD_BYTES", head)
    monkeypatch.setattr(carried, "_confirm_by_parse", parsed)
    carried.confirm_written(pending.written_at, block)
    pending.wait()


def test_what_the_walk_does_not_confirm_is_left_to_the_parse(tmp_path: Path, monkeypatch):
    """A wrong size, a changed VR byte, a block two bytes off, another block: each is handed to
    pydicom's parse (which refuses them, test below), none accepted by the walk."""
    carried, item = received_in_memory("CT_small.dcm")
    block = item_block(item)
    pieces = [bytes(p) for p in item.with_block(block)]
    good = b"".join(pieces)
    header = bytearray(good)
    header[len(pieces[0]) + 4] ^= 0x01
    splice = carried._splice
    assert splice is not None
    parsed: list[str] = []
    monkeypatch.setattr(carried, "_confirm_by_parse", lambda path, *args: parsed.append(path.name))
    carried.confirm_written(write_pieces(tmp_path / "b.dcm", [good, b"\0\0"]), block)
    carried.confirm_written(write_pieces(tmp_path / "a.dcm", [header]), block)
    carried._splice = Splice(splice.at + 2, splice.ours)
    carried.confirm_written(
        write_pieces(tmp_path / "c.dcm", carried.encoded.pieces(splice.at + 2, splice.ours)), block
    )
    carried._splice = splice
    carried.confirm_written(write_pieces(tmp_path / "d.dcm", pieces), item_block(item, institution="Another"))
    # our group's bytes changed in place (same size, same layout): not the bytes inserted
    tampered = bytearray(good)
    tampered[len(pieces[0]) + splice.at + len(splice.ours) - 1] ^= 0x20
    carried.confirm_written(write_pieces(tmp_path / "e.dcm", [tampered]), block)
    assert parsed == ["b.dcm", "a.dcm", "c.dcm", "d.dcm", "e.dcm"]
    carried.confirm_written(write_pieces(tmp_path / "f.dcm", pieces), block)
    assert parsed == ["b.dcm", "a.dcm", "c.dcm", "d.dcm", "e.dcm"]


def test_a_changed_byte_or_a_misplaced_block_fails_the_structural_confirmation(tmp_path: Path):
    carried, item = received_in_memory("CT_small.dcm")
    block = item_block(item)
    pieces = [bytes(p) for p in item.with_block(block)]
    good = b"".join(pieces)
    with pytest.raises(UnfaithfulFileError, match="not the size"):
        carried.confirm_written(write_pieces(tmp_path / "b.dcm", [good, b"\0\0"]), block)
    header = bytearray(good)
    header[len(pieces[0]) + 4] ^= 0x01  # the first element's VR: it parses into something else
    with pytest.raises(UnfaithfulFileError):
        carried.confirm_written(write_pieces(tmp_path / "a.dcm", [header]), block)
    splice = carried._splice
    assert splice is not None
    # The block two bytes into the next element's header: the bytes are what was "meant", yet they
    # parse into other elements than those received.
    carried._splice = Splice(splice.at + 2, splice.ours)
    misplaced = carried.encoded.pieces(splice.at + 2, splice.ours)
    with pytest.raises(UnfaithfulFileError):
        carried.confirm_written(write_pieces(tmp_path / "c.dcm", misplaced), block)
    carried._splice = splice
    other = item_block(item, institution="Another Hospital")
    with pytest.raises(UnfaithfulFileError, match="another block"):
        carried.confirm_written(write_pieces(tmp_path / "d.dcm", pieces), other)
    carried.confirm_written(write_pieces(tmp_path / "e.dcm", pieces), block)


def _store_meta(**overrides: object) -> FileMetaDataset:
    """A C-STORE's file meta as pynetdicom's Event.file_meta builds it, with ``overrides``."""
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12345678901234567890.1"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    for keyword, value in overrides.items():
        if value is None:
            delattr(meta, keyword)
        else:
            setattr(meta, keyword, value)
    return meta


PACKED_METAS = [
    {},
    {"MediaStorageSOPInstanceUID": "1.2.3.44", "ImplementationVersionName": "ODD_NAME"},
    {"SourceApplicationEntityTitle": "STORESCU"},
    {"SourceApplicationEntityTitle": "ODD"},
    {"TransferSyntaxUID": "1.2.840.10008.1.2"},
    {"FileMetaInformationGroupLength": None},
    {"FileMetaInformationGroupLength": 999},
]
# each of these pydicom completes, refuses or encodes its own way: it writes them itself
PYDICOM_METAS = [
    {"ImplementationVersionName": None},
    {"ImplementationClassUID": None},
    {"ImplementationClassUID": ""},
    {"FileMetaInformationVersion": b""},
    {"ImplementationVersionName": "VERSION_\u00e9"},
    {"SourceApplicationEntityTitle": ""},
    {"PrivateInformationCreatorUID": "1.2.3"},
]


@pytest.mark.parametrize("overrides", PACKED_METAS + PYDICOM_METAS)
def test_the_file_meta_is_packed_byte_for_byte_as_pydicom_writes_it(overrides: dict):
    assert (_packed_meta(_store_meta(**overrides)) is not None) == (overrides in PACKED_METAS)
    ours = file_meta_bytes(_store_meta(**overrides))
    theirs = DicomBytesIO()
    theirs.is_little_endian, theirs.is_implicit_VR = True, False
    write_file_meta_info(theirs, _store_meta(**overrides), enforce_standard=True)
    assert ours == theirs.getvalue()
    read = pydicom.dcmread(io.BytesIO(PREAMBLE + ours)).file_meta
    assert read.TransferSyntaxUID == _store_meta(**overrides).TransferSyntaxUID


@pytest.mark.parametrize("missing", ["MediaStorageSOPClassUID", "TransferSyntaxUID"])
def test_a_file_meta_without_a_required_uid_is_refused_as_pydicom_refuses_it(missing: str):
    with pytest.raises(AttributeError, match="Required File Meta Information"):
        file_meta_bytes(_store_meta(**{missing: None}))


def test_a_failing_walk_never_refuses_a_file(tmp_path: Path, monkeypatch):
    """A bug in the walk leaves the decision to the parse: a faithful file is still confirmed."""
    carried, block, path = stored_with_block("MR_small_bigendian.dcm", tmp_path)

    def broken(*args, **kwargs):
        raise IndexError("a bug in the walk")

    monkeypatch.setattr(carrier_module, "walk", broken)
    carried.confirm_written(path, block)


CHARSETS = [[""], *([term] for term in sorted(python_encoding)), ["", "ISO 2022 IR 87"]]


@pytest.mark.parametrize("charset", CHARSETS)
def test_printable_ascii_is_encoded_without_the_character_set_as_with_it(charset):
    """The short cut for our texts gives exactly the bytes the character set's encoding gives."""
    text = "".join(chr(c) for c in range(0x20, 0x7F))  # every printable ASCII character, "\\" and "~" too
    for value in (text, text[:-1], "1.2.840.10008", "d9fb" * 16, "Test Hospital", "Zürich"):
        assert splice_module._encoded("LO", value, True, charset) == encode_value("LO", value, True, charset)
