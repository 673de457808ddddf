"""``imagechain``: chains of ordinary pictures (PNG, JPEG, TIFF), each carrying its own block.

Exit status of ``verify``: as ``dicom-chain verify`` (0 intact, 1 broken, 2 usage, 3 intact but no
signer key pinned).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from dicom_chain.cli.exits import EXIT_BROKEN, EXIT_OK, EXIT_UNCHECKED
from dicom_chain.cli.options import NODE, config_option, settings_from, settings_options

PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})  # what a folder given yields


@click.group()
def imagechain() -> None:
    """Chains of ordinary pictures: the block inside each PNG, JPEG or TIFF file."""


@imagechain.command("embed")
@config_option
@settings_options("home", "key_file", "institution")
@click.option(
    "--method",
    type=click.Choice(["metadata", "watermark", "reversible"]),
    default="metadata",
    show_default=True,
    help=(
        "Where the block goes: metadata (a PNG iTXt chunk, a JPEG APP10 segment and comment, a TIFF "
        "tag); watermark (the samples' lowest bits; PNG, TIFF); reversible (histogram shifting; "
        "PNG, TIFF; 'restore' gives the original pixels back)."
    ),
)
@click.option(
    "--chain", "chain_name", required=True, help="The chain's name; with the node's key it is the chain."
)
@click.option(
    "--after",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Continue the chain after this picture, its last (default: a new chain from height 0).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the chained pictures here, under their own names.",
)
@click.option("--in-place", is_flag=True, help="Replace each picture by its chained copy instead.")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def embed(
    method: str,
    chain_name: str,
    after: Path | None,
    output: Path | None,
    in_place: bool,
    files: tuple[Path, ...],
    **kwargs: Any,
) -> None:
    """Chain FILES in the order given, each picture's block linking it to the one before."""
    from dicom_chain.carriers.picture import chain
    from dicom_chain.nodekey import exported_key

    if (output is None) == (not in_place):
        raise click.UsageError("give --output DIR or --in-place")
    names = [f.name for f in files]
    if output is not None and len(set(names)) != len(names):
        raise click.UsageError("two pictures share a name: they would overwrite each other in --output")
    settings = settings_from(kwargs)
    key = exported_key(settings)
    tail = chain.Tail.of(after.read_bytes()) if after is not None else None
    chained = chain.embed(
        [(f.name, f.read_bytes()) for f in files],
        method=method,
        chain=chain_name,
        key=key,
        institution=settings.institution,
        after=tail,
    )
    for source, (data, block) in zip(files, chained, strict=True):
        target = source if in_place else output / source.name  # type: ignore[operator]
        _write_atomically(target, data)
        click.echo(f"{target}  height {block.header.height}  block {block.hash}")


@imagechain.command("verify")
@config_option
@settings_options("home", help_for={"home": "Node home whose key pins the signer (default: none pinned)."})
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trust only pictures signed by this key (repeatable; from 'keys export').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def verify(public_keys: tuple[Path, ...], as_json: bool, paths: tuple[Path, ...], **kwargs: Any) -> None:
    """Check pictures (their blocks and the links between them); folders give their pictures.

    \b
    Exit status: 0 all intact, 1 something is broken, 2 usage error,
    3 intact, but signers not checked (no key pinned).
    """
    from dicom_chain.carriers.picture import chain
    from dicom_chain.cli.verify import show_report
    from dicom_chain.keys import load_public_key
    from dicom_chain.verifyrun import pinned_keys

    given = frozenset(load_public_key(p) for p in public_keys) if public_keys else None
    trusted = pinned_keys(settings_from(kwargs), given)
    files = _expand(paths)
    report = chain.verify([(str(f), f.read_bytes()) for f in files], trusted)
    show_report(report, as_json)
    sys.exit(EXIT_BROKEN if not report.ok else EXIT_OK if report.signers_checked else EXIT_UNCHECKED)


@imagechain.command("extract")
@click.option("--json", "as_json", is_flag=True, help="The block as indented JSON.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def extract(as_json: bool, file: Path) -> None:
    """Print the block FILE carries (its serialised bytes, or --json)."""
    from dicom_chain.carriers.picture import chain

    block = chain.read_block(file.read_bytes())
    if as_json:
        click.echo(json.dumps(block.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(block.to_bytes().decode("utf-8"))


@imagechain.command("restore")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the picture with its original pixels here.",
)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def restore(output: Path, file: Path) -> None:
    """Give back the original pixels of FILE, chained by the reversible method, bit for bit: the
    restored samples are checked against the content hash the block recorded before writing."""
    from dicom_chain.carriers.picture import chain

    restored, block = chain.restore(file.read_bytes())
    _write_atomically(output, restored)
    click.echo(
        f"{output}  original pixels of height {block.header.height}, content hash {block.header.content_hash}"
    )


@click.command("export-images")
@config_option
@settings_options(*NODE)
@click.argument("study_uid")
@click.option("--format", "fmt", type=click.Choice(["png", "jpeg", "tiff"]), required=True)
@click.option(
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the pictures (new or empty).",
)
@click.option(
    "--method",
    type=click.Choice(["metadata", "watermark", "reversible"]),
    default="metadata",
    show_default=True,
    help="How each picture holds its block (the pixel methods need PNG or TIFF).",
)
@click.option("--chain", "chain_name", help="The pictures' chain (default: the study's UID and the time).")
def export_images(
    study_uid: str, fmt: str, output: Path, method: str, chain_name: str | None, **kwargs: Any
) -> None:
    """Render a study's instances as chained pictures, one a frame (VOI LUT or window, Modality
    LUT, MONOCHROME1 inverted), each block naming its source instance's block; recorded."""
    from dicom_chain.actors import local_user
    from dicom_chain.imageexport import export_images as export
    from dicom_chain.node import Node

    node = Node.open(settings_from(kwargs))
    try:
        result = export(
            node, study_uid, fmt, output, actor=local_user(), method=method, chain_name=chain_name
        )
    finally:
        node.close()
    click.echo(
        f"exported {len(result.files)} picture(s) of {study_uid} to {output} (chain {result.chain_name})"
    )


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES
            )
        else:
            files.append(path)
    return files


def _write_atomically(target: Path, data: bytes) -> None:
    """A temp file in the target's folder, synced, renamed over the target: never half a picture."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".imagechain-")
    try:
        with os.fdopen(fd, "wb") as fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
