"""Key images out of the node: a study's instances as PNG, JPEG or TIFF pictures, chained.

Each instance (its newest version, from the query index) is rendered frame by frame
(carriers/picture/render.py), and the pictures are chained in study order (carriers/picture/
chain.py): group = the Study Instance UID, and each picture's block names its source instance's
block (``picture.source_block_hash``). ``imagechain verify`` of the pictures and ``verify`` of
the sources then prove the path from the original to the picture. The export is an
``images.exported`` event, with every source and picture block hash. Nothing is written when
anything fails.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dicom_chain.block import Block, utc_now
from dicom_chain.carriers.dicom.carrier import DICOM
from dicom_chain.carriers.picture import chain, render
from dicom_chain.errors import NothingToExportError, StorageError
from dicom_chain.events import EventDraft
from dicom_chain.node import Node
from dicom_chain.sharing.research import study_instances
from dicom_chain.storage import path_part
from dicom_chain.vocab import EventType

# Pillow's format names, file suffixes, and what each save is given (JPEG: high quality, so a key
# image keeps the detail a radiologist marked; it is lossy all the same, and says so in the event)
FORMATS = {
    "png": ("PNG", ".png", {}),
    "jpeg": ("JPEG", ".jpg", {"quality": 95}),
    "tiff": ("TIFF", ".tif", {}),
}


@dataclass(frozen=True)
class ExportedImages:
    files: tuple[Path, ...]
    blocks: tuple[Block, ...]
    sources: tuple[str, ...]  # per picture, its DICOM source's block hash
    chain_name: str


def export_images(
    node: Node,
    study_uid: str,
    fmt: str,
    output: Path,
    *,
    actor: str,
    method: str = "metadata",
    chain_name: str | None = None,
) -> ExportedImages:
    """Render, chain and write the study's pictures to ``output`` (new or empty), and record it."""
    if fmt not in FORMATS:
        raise NothingToExportError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise NothingToExportError(f"{output} exists and is not an empty directory")
    instances = study_instances(node.db, study_uid)
    if not instances:
        raise NothingToExportError(f"study {study_uid} is not on this node")
    pil, suffix, options = FORMATS[fmt]
    pictures: list[tuple[str, bytes]] = []
    sources: list[str] = []
    for instance in instances:
        try:
            data = node.storage.path(instance.path).read_bytes()
        except OSError as exc:
            raise StorageError(
                f"{instance.sop_instance_uid}: cannot read {instance.path} ({exc.strerror})"
            ) from exc
        carried = DICOM.open(data)
        source = carried.read_block().hash
        frames = render.frames(carried.dataset)
        for number, image in enumerate(frames, start=1):
            stem = path_part(instance.sop_instance_uid) + (f"-{number}" if len(frames) > 1 else "")
            out = io.BytesIO()
            image.save(out, format=pil, **options)
            pictures.append((stem + suffix, out.getvalue()))
            sources.append(source)
    name = chain_name or f"{study_uid}@{utc_now()}"  # each export a chain of its own
    made = chain.embed(
        pictures,
        method=method,
        chain=name,
        key=node.key,
        institution=node.settings.institution,
        group=study_uid,
        sources=sources,
    )
    # Written beside the output, then renamed into place (an empty folder is replaced), then
    # recorded; a failure at any step leaves neither pictures nor an event behind.
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        for (file_name, _), (data, _) in zip(pictures, made, strict=True):
            (staging / file_name).write_bytes(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # as a folder made by mkdir (mkdtemp's is 0700)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = [output / file_name for file_name, _ in pictures]
    blocks = tuple(block for _, block in made)
    try:
        _record(node, study_uid, fmt, output, actor, method, files, blocks, sources, instances[0].patient_id)
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    return ExportedImages(tuple(files), blocks, tuple(sources), name)


def _record(
    node: Node,
    study_uid: str,
    fmt: str,
    output: Path,
    actor: str,
    method: str,
    files: list[Path],
    blocks: tuple[Block, ...],
    sources: list[str],
    patient_id: str,
) -> None:
    node.record(
        EventDraft(
            type=EventType.IMAGES_EXPORTED,
            actor=actor,
            patient_id=patient_id,
            study_uid=study_uid,
            chain_id=node.chain_id,
            details={
                "output": str(output),
                "format": fmt,
                "lossy": fmt == "jpeg",
                "method": method,
                "pictures": len(files),
                "picture_chain_id": blocks[0].header.chain_id,
                "blocks": [{"source": s, "picture": b.hash} for s, b in zip(sources, blocks, strict=True)],
            },
        )
    )
