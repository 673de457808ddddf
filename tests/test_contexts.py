"""How a stored instance can go over a peer's accepted contexts: decided before sending, by
pynetdicom's own rule, never by reading an exception's text afterwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import build_context
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from dicom_chain.verify import verify_files
from scp.contexts import Sending, contexts_for, decompress, prefer_stored, preferred_syntax, sending

from .conftest import read

CT, MR = str(CTImageStorage), str(MRImageStorage)


@pytest.mark.parametrize(
    "accepted, stored, expected",
    [
        ({(CT, JPEGBaseline8Bit)}, JPEGBaseline8Bit, Sending.AS_STORED),
        ({(CT, ExplicitVRLittleEndian)}, ExplicitVRLittleEndian, Sending.AS_STORED),
        ({(CT, ImplicitVRLittleEndian)}, ExplicitVRLittleEndian, Sending.RE_ENCODED),
        ({(CT, ExplicitVRLittleEndian)}, DeflatedExplicitVRLittleEndian, Sending.RE_ENCODED),
        ({(CT, ExplicitVRLittleEndian)}, JPEGBaseline8Bit, None),  # compressed pixels never convert
        ({(CT, JPEG2000Lossless)}, JPEGBaseline8Bit, None),
        ({(CT, JPEGBaseline8Bit)}, ExplicitVRLittleEndian, None),
        ({(CT, ImplicitVRLittleEndian)}, ExplicitVRBigEndian, None),  # pynetdicom never swaps byte order
        ({(MR, ExplicitVRLittleEndian)}, ExplicitVRLittleEndian, None),  # another SOP class
        (set(), ExplicitVRLittleEndian, None),
        ({(CT, "1.2.3.4.5")}, ExplicitVRLittleEndian, None),  # a private syntax: nothing known of it
    ],
)
def test_sending_follows_pynetdicoms_rule(accepted, stored, expected):
    assert sending({(c, str(s)) for c, s in accepted}, CT, str(stored)) is expected


JLS, MPEG2 = str(JPEGLSLossless), "1.2.840.10008.1.2.4.100"
ELE, ILE = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)


@pytest.mark.parametrize(
    "accepted, stored, expected",
    [
        ({(CT, ExplicitVRLittleEndian)}, JPEGBaseline8Bit, Sending.DECOMPRESSED),
        ({(CT, ImplicitVRLittleEndian)}, JPEGLSLossless, Sending.DECOMPRESSED),
        ({(CT, DeflatedExplicitVRLittleEndian)}, RLELossless, Sending.DECOMPRESSED),
        ({(CT, JPEGLSLossless), (CT, ExplicitVRLittleEndian)}, JPEGLSLossless, Sending.AS_STORED),
        ({(CT, ExplicitVRBigEndian)}, JPEGLSLossless, None),  # decoded pixels are little endian
        ({(CT, JPEG2000Lossless)}, JPEGLSLossless, None),  # never re-compressed
        ({(CT, ExplicitVRLittleEndian)}, MPEG2, None),  # no decoder for it
        ({(MR, ExplicitVRLittleEndian)}, JPEGLSLossless, None),
    ],
)
def test_retrievals_decompress_what_the_peer_cannot_take_compressed(accepted, stored, expected):
    assert sending({(c, str(s)) for c, s in accepted}, CT, str(stored), decompressing=True) is expected


@pytest.mark.parametrize(
    "offered, held, expected",
    [
        ([JLS, ELE, ILE], {JLS}, JLS),  # getscu +xt, a JPEG-LS study: as stored
        ([ELE, ILE], {JLS}, ELE),  # getscu: uncompressed only, decompressed
        ([JLS, ELE, ILE], {ELE}, ELE),  # nothing held in JPEG-LS: JPEG-LS would carry nothing
        ([JLS, ELE, ILE], {JLS, ELE}, ELE),  # mixed: the one syntax every instance can go over
        ([ILE, ELE], {JLS}, ILE),  # the peer's order among those that serve
        ([JLS], {JLS, ELE}, JLS),  # only JPEG-LS offered: what is stored so goes, the rest fails
        ([JLS, ELE], set(), ELE),  # nothing held yet: what anything can go as
        ([str(JPEG2000Lossless)], {JLS}, None),  # nothing fits: pynetdicom's choice stands
        ([ELE], {MPEG2}, None),
    ],
)
def test_a_get_peers_storage_context_takes_the_stored_syntax_when_everything_can_go_over_it(
    offered, held, expected
):
    assert preferred_syntax(offered, held) == expected


def test_the_choice_becomes_the_first_supported_syntax_and_keeps_the_roles():
    supported = build_context(MR, [ILE, ELE, JLS])
    supported.scu_role, supported.scp_role = True, True
    other = build_context(CT, [ILE, ELE, JLS])
    result = prefer_stored([supported, other], {MR: [JLS, ELE]}, {MR: {JLS}})
    assert [str(s) for s in result[0].transfer_syntax] == [JLS, ILE, ELE]
    assert (result[0].scu_role, result[0].scp_role) == (True, True)
    assert result[1] is other  # not offered with the SCP role: untouched


def test_a_move_proposes_uncompressed_too_for_compressed_instances():
    items = [Item(MR, JLS), Item(MR, JLS), Item(CT, MPEG2)]
    proposed = {(str(cx.abstract_syntax), tuple(map(str, cx.transfer_syntax))) for cx in contexts_for(items)}
    assert proposed == {(MR, (JLS,)), (CT, (MPEG2,))}  # forwarding: as stored only
    decompressing = contexts_for(items, decompressing=True)
    proposed = {(str(cx.abstract_syntax), tuple(map(str, cx.transfer_syntax))) for cx in decompressing}
    assert proposed == {(MR, (JLS,)), (CT, (MPEG2,)), (MR, (ELE, ILE))}  # MPEG-2: nothing decodes it


@dataclass
class Item:
    sop_class_uid: str
    transfer_syntax: str


LOSSLESS_FILES = [
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
]


@pytest.mark.parametrize("name", LOSSLESS_FILES)
def test_a_decompressed_lossless_instance_still_verifies(node, tmp_path, name):
    stored = ingest_copy(node, tmp_path, read(name))
    out = tmp_path / "out.dcm"
    decompress(pydicom.dcmread(stored)).save_as(out, enforce_file_format=True)
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    report = verify_files([out], frozenset({node.key.public_key}))
    assert report.ok, report.findings


def test_a_decompressed_lossy_instance_is_named_lossy_not_altered(node, tmp_path):
    ds = read("SC_rgb_jpeg_dcmtk.dcm")
    del ds.LossyImageCompression  # a modality that did not say so (PS3.3 C.7.6.1.1.5 says it must)
    stored = ingest_copy(node, tmp_path, ds)
    out = tmp_path / "out.dcm"
    decompressed = decompress(pydicom.dcmread(stored))
    assert decompressed.LossyImageCompression == "01"
    decompressed.save_as(out, enforce_file_format=True)
    report = verify_files([out], frozenset({node.key.public_key}))
    assert {f.kind for f in report.errors} == {"lossy-reencoded"}


def ingest_copy(node, tmp_path: Path, ds: Dataset) -> Path:
    """``ds`` under a new SOP Instance UID, ingested; the stored file's path."""
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    source = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(source, enforce_file_format=True)
    result = node.ingest_file(source)
    return Path(node.storage.path(result.path))
