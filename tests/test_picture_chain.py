"""Picture chains (carriers/picture/chain.py) and ``dicom-chain imagechain``: every format round
trips, long chains verify, and each kind of tampering is found and named with its file."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dicom_chain.carriers.picture import chain, format_of
from dicom_chain.cli import main
from dicom_chain.errors import MalformedBlockError, MethodRefusedError
from dicom_chain.keys import NodeKey

from .peers import require_imagemagick
from .test_picture_formats import picture

KEY = NodeKey.generate()
OTHER = NodeKey.generate()
TRUSTED = frozenset({KEY.public_key})
KINDS = [("png", "L"), ("png", "I;16"), ("png", "RGB"), ("jpeg", "L"), ("jpeg", "RGB"), ("tiff", "L"),
         ("tiff", "I;16"), ("tiff", "RGB")]  # fmt: skip


def pictures(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        fmt, mode = KINDS[(i + seed) % len(KINDS)]
        suffix = {"png": "png", "jpeg": "jpg", "tiff": "tif"}[fmt]
        out.append((f"p{i:03d}.{suffix}", picture(fmt, mode, size=(24 + i % 5, 17), seed=seed * 1000 + i)))
    return out


def chained(n: int, seed: int = 0, name: str = "keys") -> list[tuple[str, bytes]]:
    made = chain.embed(pictures(n, seed), method="metadata", chain=name, key=KEY, institution="Test Hospital")
    return [(f"p{i:03d}", data) for i, (data, _) in enumerate(made)]


def kinds(report) -> list[tuple[str, str]]:
    return sorted((f.kind.value, f.path) for f in report.errors)


def test_every_format_round_trips_and_extracts_what_was_embedded():
    given = pictures(len(KINDS))
    made = chain.embed(given, method="metadata", chain="round", key=KEY, institution="Test Hospital")
    for (name, original), (data, block) in zip(given, made, strict=True):
        assert chain.read_block(data) == block
        assert block.header.carrier == format_of(original).NAME and block.header.item_id.endswith(name)
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(data))), np.asarray(Image.open(io.BytesIO(original)))
        )
    report = chain.verify([(str(i), d) for i, (d, _) in enumerate(made)], TRUSTED)
    assert report.ok and report.signers_checked and report.blocks_checked == len(KINDS)
    assert [b.header.height for _, b in made] == list(range(len(KINDS)))


def test_a_chain_of_a_hundred_pictures_verifies_and_continues():
    files = chained(100)
    report = chain.verify(files, TRUSTED)
    assert report.ok and report.blocks_checked == 100
    more = chain.embed(
        pictures(3, seed=7),
        method="metadata",
        chain="keys",
        key=KEY,
        institution="Test Hospital",
        after=chain.Tail.of(files[-1][1]),
    )
    assert [b.header.height for _, b in more] == [100, 101, 102]
    assert chain.verify(files + [(f"q{i}", d) for i, (d, _) in enumerate(more)], TRUSTED).ok
    with pytest.raises(MalformedBlockError):  # another chain's name: not its tail
        chain.embed(pictures(1), method="metadata", chain="other", key=KEY, institution="T",
                    after=chain.Tail.of(files[-1][1]))  # fmt: skip


def test_a_one_pixel_change_is_found_in_that_picture():
    files = chained(4)
    name, data = files[1]
    module = format_of(data)
    image = Image.open(io.BytesIO(data))
    pixels = np.asarray(image).copy()
    pixels.flat[7] ^= 1
    edited = io.BytesIO()
    Image.fromarray(pixels).save(edited, format=image.format)
    forged = module.with_block(edited.getvalue(), module.read_block(data))  # the block put back
    report = chain.verify([files[0], (name, forged), *files[2:]], TRUSTED)
    assert kinds(report) == [("altered", name), ("broken-link", files[2][0])]
    assert "pixels changed" in report.errors[0].message


@pytest.mark.parametrize("index", [1, 3, 5])  # a PNG, a JPEG, a TIFF, each with pictures after it
def test_a_block_stripped_by_a_pillow_re_save_is_found(index: int):
    files = chained(7)
    name, data = files[index]
    image = Image.open(io.BytesIO(data))
    resaved = io.BytesIO()
    image.save(resaved, format=image.format)  # Pillow writes no unknown chunk, segment or tag
    report = chain.verify([*files[:index], (name, resaved.getvalue()), *files[index + 1 :]], TRUSTED)
    errors = kinds(report)
    if image.format == "JPEG":  # Pillow keeps the comment: the block survives, the pixels do not
        assert ("altered", name) in errors
    else:
        assert ("no-block", name) in errors
    assert ("broken-link", files[index + 1][0]) in errors or ("gap", files[index + 1][0]) in errors


def test_imagemagick_convert_breaks_the_chain_where_it_went(tmp_path: Path):
    convert = require_imagemagick()
    files = chained(6)
    for index in (0, 3, 5):  # PNG, JPEG, TIFF through a tool real users run
        name, data = files[index]
        suffix = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif"}[Image.open(io.BytesIO(data)).format]
        src, dst = tmp_path / f"in{index}{suffix}", tmp_path / f"out{index}{suffix}"
        src.write_bytes(data)
        subprocess.run([convert, str(src), str(dst)], check=True, capture_output=True, timeout=60)
        report = chain.verify([*files[:index], (name, dst.read_bytes()), *files[index + 1 :]], TRUSTED)
        assert not report.ok and name in {f.path for f in report.errors}, (index, kinds(report))


def test_a_picture_removed_inserted_or_swapped_is_found():
    files = chained(6)
    removed = chain.verify(files[:2] + files[3:], TRUSTED)
    assert kinds(removed) == [("gap", files[3][0])]
    stranger = ("stranger.png", picture("png", "L", seed=99))
    inserted = chain.verify([*files[:3], stranger, *files[3:]], TRUSTED)
    assert kinds(inserted) == [("no-block", "stranger.png")]
    forged = chain.embed(pictures(4, seed=3), method="metadata", chain="keys", key=OTHER, institution="X")
    foreign = ("forged.png", forged[3][0])  # another key's block claiming height 3 of a chain
    assert ("untrusted-key", "forged.png") in kinds(chain.verify([*files, foreign], TRUSTED))
    # two pictures' pixels exchanged, each keeping its own block: both named
    a, b = _same_size_pair()
    swapped = [(a[0], _transplant(a[1], b[1])), (b[0], _transplant(b[1], a[1]))]
    assert kinds(chain.verify(swapped, TRUSTED)) == [
        ("altered", a[0]),
        ("altered", b[0]),
        ("broken-link", b[0]),
    ]


def _same_size_pair() -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    made = chain.embed(
        [("x.png", picture("png", "L", seed=1)), ("y.png", picture("png", "L", seed=2))],
        method="metadata",
        chain="pair",
        key=KEY,
        institution="T",
    )
    return ("x.png", made[0][0]), ("y.png", made[1][0])


def _transplant(block_from: bytes, pixels_from: bytes) -> bytes:
    module = format_of(pixels_from)
    return module.with_block(pixels_from, module.read_block(block_from))


def test_a_block_moved_to_another_picture_is_found():
    files = chained(3)
    module = format_of(files[1][1])
    other = picture(module.NAME, "L", seed=42)
    moved = ("moved", module.with_block(other, module.read_block(files[1][1])))
    assert ("altered", "moved") in kinds(chain.verify([files[0], moved, files[2]], TRUSTED))


def test_a_recompressed_jpeg_is_found():
    files = chained(5)
    name, data = files[4]  # (4 + 0) % 8: a JPEG
    assert format_of(data).NAME == "jpeg"
    again = io.BytesIO()
    Image.open(io.BytesIO(data)).save(again, format="JPEG", quality=60)
    module = format_of(data)
    report = chain.verify(
        [*files[:4], (name, module.with_block(again.getvalue(), module.read_block(data)))], TRUSTED
    )
    assert kinds(report) == [("altered", name)] and "pixels changed" in report.errors[0].message


def test_a_png_re_encoded_losslessly_is_reported_as_such():
    """Metadata method: the content hash covers the file's bytes, so a PNG re-encoded with other
    filter settings (block kept) is ALTERED; its pixels' hash still matches, and the report says
    so: the file changed, its pixels did not. The next picture's link (the whole previous file's
    hash) breaks too: that file is not the one it was chained after."""
    files = chained(3)
    name, data = files[0]
    assert format_of(data).NAME == "png"
    other = io.BytesIO()
    Image.open(io.BytesIO(data)).save(other, format="PNG", compress_level=1)
    module = format_of(data)
    report = chain.verify(
        [(name, module.with_block(other.getvalue(), module.read_block(data))), *files[1:]], TRUSTED
    )
    assert kinds(report) == [("altered", name), ("broken-link", files[1][0])]
    assert "its pixels did not" in report.errors[0].message


def test_an_unknown_method_is_refused():
    with pytest.raises(MethodRefusedError, match="stego"):
        chain.embed(pictures(1), method="stego", chain="w", key=KEY, institution="T")


def test_the_command_line_embeds_verifies_and_extracts(tmp_path: Path):
    home = tmp_path / "home"
    sources = tmp_path / "in"
    sources.mkdir()
    for name, data in pictures(4):
        (sources / name).write_bytes(data)
    files = sorted(sources.iterdir())
    runner = CliRunner()
    out = tmp_path / "out"
    embed = ["imagechain", "embed", "--home", str(home), "--chain", "ward-3"]
    made = runner.invoke(main, [*embed, "--output", str(out), *map(str, files)])
    assert made.exit_code == 0, made.output
    assert sorted(p.name for p in out.iterdir()) == [f.name for f in files]
    checked = runner.invoke(main, ["imagechain", "verify", "--home", str(home), str(out)])
    assert checked.exit_code == 0 and checked.output.startswith("OK: 4 file(s)"), checked.output
    unpinned = runner.invoke(main, ["imagechain", "verify", str(out)])
    assert unpinned.exit_code == 3
    block = json.loads(
        runner.invoke(main, ["imagechain", "extract", "--json", str(out / files[2].name)]).output
    )
    assert block["header"]["height"] == 2 and block["header"]["group_id"] == "ward-3"
    assert block["header"]["picture"]["method"] == "metadata"
    more = tmp_path / "more.png"
    more.write_bytes(picture("png", "RGB", seed=5))
    extended = runner.invoke(main, [*embed, "--in-place", "--after", str(out / files[-1].name), str(more)])
    assert extended.exit_code == 0 and "height 4" in extended.output
    shutil.copy(more, out / "more.png")
    assert runner.invoke(main, ["imagechain", "verify", "--home", str(home), str(out)]).exit_code == 0
    (out / files[1].name).unlink()
    broken = runner.invoke(main, ["imagechain", "verify", "--home", str(home), str(out)])
    assert broken.exit_code == 1 and "gap" in broken.output and files[2].name in broken.output
    usage = runner.invoke(main, ["imagechain", "embed", "--home", str(home), "--chain", "x", str(more)])
    assert usage.exit_code == 2  # neither --output nor --in-place


def test_another_keys_picture_claiming_a_place_in_a_chain_is_named():
    """Both keys pinned: the impostor copies the chain's id and links to its last picture."""
    import dataclasses

    from dicom_chain.block import Block
    from dicom_chain.carriers.picture.chain import file_hash

    files = chained(3)
    last = chain.read_block(files[-1][1])
    extra = pictures(1, seed=5)[0][1]
    module = format_of(extra)
    header = dataclasses.replace(
        last.header,
        height=3,
        prev_hash=last.hash,
        study_index=3,
        study_prev_hash=last.hash,
        key_id=OTHER.key_id,
        content_hash=module.content_hash(extra),
        carrier=module.NAME,
        picture=dataclasses.replace(last.header.picture, prev_file_hash=file_hash(files[-1][1])),
    )
    forged = module.with_block(extra, Block.sign(header, OTHER).to_bytes())
    report = chain.verify([*files, ("impostor", forged)], frozenset({KEY.public_key, OTHER.public_key}))
    assert ("broken-link", "impostor") in kinds(report)
