"""export-images (dicom_chain/imageexport.py, carriers/picture/render.py): a study as chained
pictures whose blocks name their sources' blocks, rendered as a viewer would, recorded."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.carriers.picture import chain, render
from dicom_chain.cli import main
from dicom_chain.errors import MethodRefusedError, NothingToExportError
from dicom_chain.imageexport import export_images
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_node
from dicom_chain.vocab import EventType

from .conftest import SAMPLE_STUDY


@pytest.fixture
def sample(node: Node) -> tuple[Node, str]:
    study = ""
    for path in sorted(SAMPLE_STUDY.glob("*.dcm")):
        result = node.ingest(item_from_dataset(read_path(path)))
        study = result.block.header.study_instance_uid
    return node, study


def read_path(path: Path):
    import pydicom

    return pydicom.dcmread(path)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "tiff"])
def test_the_sample_study_exports_as_a_chain_naming_each_source_block(sample, tmp_path: Path, fmt: str):
    node, study = sample
    result = export_images(node, study, fmt, tmp_path / "out", actor="dr.who")
    assert len(result.files) == len(list(SAMPLE_STUDY.glob("*.dcm")))
    report = chain.verify([(str(f), f.read_bytes()) for f in result.files], frozenset({node.key.public_key}))
    assert report.ok, [(f.kind, f.message) for f in report.errors]
    sources = {
        row.block.header.sop_instance_uid: row.block_hash
        for _, row in node.ledger.iter_blocks(node.chain_id)
        if not isinstance(row, str)
    }
    assert len(sources) == len(result.files)
    for path, block in zip(result.files, result.blocks, strict=True):
        assert block.header.group_id == study
        assert block.header.picture.source_block_hash == sources[path.stem]  # the picture names its source
    assert verify_node(node.ledger, node.storage).ok  # and the sources verify: the path holds
    [event] = [e for e, _ in node.ledger.iter_events_with_hash() if e.type == EventType.IMAGES_EXPORTED]
    assert (
        event.actor == "dr.who"
        and event.study_uid == study
        and event.details["pictures"] == len(result.files)
    )
    assert [b["picture"] for b in event.details["blocks"]] == [b.hash for b in result.blocks]
    assert event.details["lossy"] == (fmt == "jpeg")


def test_a_pixel_method_on_jpeg_or_a_used_folder_writes_nothing(sample, tmp_path: Path):
    node, study = sample
    with pytest.raises(MethodRefusedError):
        export_images(node, study, "jpeg", tmp_path / "out", actor="a", method="watermark")
    assert not (tmp_path / "out").exists()
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    with pytest.raises(NothingToExportError):
        export_images(node, study, "png", used, actor="a")
    with pytest.raises(NothingToExportError):
        export_images(node, "1.2.3.999", "png", tmp_path / "none", actor="a")
    assert not any(e.type == EventType.IMAGES_EXPORTED for e, _ in node.ledger.iter_events_with_hash())


def ct(**changes):
    ds = next(ct_study(StudySpec(seed=8, instances=1, rows=8, columns=8)))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def test_a_window_maps_its_centre_to_mid_grey_and_clips_outside():
    ds = ct(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    values = np.array([0, 1024 + 40, 1024 - 160, 1024 + 240, 4000] + [1024] * 59, dtype=np.uint16).reshape(
        8, 8
    )
    ds.PixelData = values.tobytes()
    [image] = render.frames(ds)
    out = np.asarray(image).reshape(-1)
    assert image.mode == "L"
    assert out[0] == 0 and out[4] == 255  # below and above the window
    assert abs(int(out[1]) - 128) <= 1  # the centre
    assert out[2] == 0 and out[3] == 255  # the window's edges


def test_no_window_uses_the_frame_range_and_monochrome1_is_inverted():
    ds = ct(PhotometricInterpretation="MONOCHROME2")
    for tag in ("WindowCenter", "WindowWidth"):
        if tag in ds:
            delattr(ds, tag)
    values = np.linspace(100, 900, 64).astype(np.uint16).reshape(8, 8)
    ds.PixelData = values.tobytes()
    [plain] = render.frames(ds)
    assert np.asarray(plain).min() == 0 and np.asarray(plain).max() == 255
    ds.PhotometricInterpretation = "MONOCHROME1"
    [inverted] = render.frames(ds)
    assert np.array_equal(np.asarray(inverted), 255 - np.asarray(plain))


def test_each_frame_of_a_multi_frame_and_colour_come_out_as_their_own_pictures():
    ds = ct()
    for tag in ("WindowCenter", "WindowWidth"):
        if tag in ds:
            delattr(ds, tag)
    frames = np.stack([np.full((8, 8), 100 * (i + 1), np.uint16) for i in range(3)])
    frames[:, 0, 0] = 0
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    pictures = render.frames(ds)
    assert len(pictures) == 3 and all(p.size == (8, 8) for p in pictures)
    rgb = ct(SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0, BitsAllocated=8,
             BitsStored=8, HighBit=7, PixelRepresentation=0)  # fmt: skip
    for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if tag in rgb:
            delattr(rgb, tag)
    colour = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rgb.PixelData = colour.tobytes()
    [picture] = render.frames(rgb)
    assert picture.mode == "RGB" and np.array_equal(np.asarray(picture), colour)


def test_export_images_on_the_command_line(sample, tmp_path: Path):
    node, study = sample
    home = node.settings.home
    node.close()
    runner = CliRunner()
    out = tmp_path / "pictures"
    export = ["export-images", "--home", str(home), study, "--format", "png", "--output", str(out)]
    refused = runner.invoke(main, [*export, "--method", "reversible"])  # 64 x 64 slices: too few carriers
    assert refused.exit_code == 1 and "reversible method" in refused.output and not out.exists()
    result = runner.invoke(main, export)
    assert result.exit_code == 0, result.output
    checked = runner.invoke(main, ["imagechain", "verify", "--home", str(home), str(out)])
    assert checked.exit_code == 0, checked.output
    first = sorted(out.iterdir())[0]
    assert Image.open(io.BytesIO(first.read_bytes())).mode == "L"


def test_a_palette_image_renders_through_its_palette():
    import pydicom
    from pydicom.pixels import apply_color_lut

    from .conftest import TEST_FILES

    ds = pydicom.dcmread(TEST_FILES / "examples_palette.dcm")
    [picture] = render.frames(ds)
    expected = (apply_color_lut(ds.pixel_array, ds).astype(np.uint32) >> 8).astype(np.uint8)
    assert picture.mode == "RGB" and np.array_equal(np.asarray(picture), expected)


def test_twelve_bit_colour_is_scaled_by_its_bits_stored():
    rgb = ct(SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0, BitsAllocated=16,
             BitsStored=12, HighBit=11, PixelRepresentation=0)  # fmt: skip
    for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if tag in rgb:
            delattr(rgb, tag)
    colour = np.full((8, 8, 3), 4095, np.uint16)
    rgb.PixelData = colour.tobytes()
    [picture] = render.frames(rgb)
    assert np.asarray(picture).min() == 255  # full scale stays full scale


def test_an_export_whose_record_fails_leaves_no_pictures(sample, tmp_path: Path, monkeypatch):
    node, study = sample

    def failing(draft):
        raise OSError("ledger full")

    monkeypatch.setattr(node, "record", failing)
    with pytest.raises(OSError):
        export_images(node, study, "png", tmp_path / "out", actor="a")
    assert [p.name for p in tmp_path.iterdir()] == ["node"]  # the node home only: no folder, no staging copy
