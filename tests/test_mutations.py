"""Mutation test: any single change to a chained study is caught by verify, on the right file.

One node chains two small synthetic studies (interleaved, so heights and study indexes differ),
each instance carrying a public sequence with a nested one, another vendor's private block with a
private sequence, and a private element inside a sequence item. Each run then applies well over a
thousand random single changes to the node's store, one at a time, restoring the bytes after each,
and demands an error finding naming the file the change reveals itself in (design.md section 3).

The seed is random per run and in every failure message; ``MUTATION_SEED=<n>`` replays a run and
``MUTATIONS=<n>`` sets how many changes it applies.

Changes the design declares meaningless are regenerated, not counted:
- one padding byte of a value whose trailing spaces and NULs are padding (1.2: public text VRs;
  2.2: the readable copies, our creator and the serialised block are compared without padding);
- removing a readable copy of the block: a reader may drop copies, the serialised block decides
  (2.2); the copies' values are mutated instead;
- file meta (group 0002), group lengths and trailing padding are outside the hash (1.1);
- (canonical version 2) bits of a pixel sample outside Bits Stored (1.5), and trailing spaces or
  NULs of a private value whose other bytes are all text (1.4).
Two changes only the ledger sees are checked with ``verify_node``: removing the last instance of
a study (section 3), and exchanging two whole files between paths (a set of files has no order
but the one its blocks give; the ledger records each block's path).
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, data_element_generator, read_preamble
from pydicom.sequence import Sequence

from dicom_chain.block import Block
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.carriers.dicom.embedding import embed_block, read_block, remove_blocks
from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP, ELEMENTS, chain_block_tags, creator_slots
from dicom_chain.config import Settings
from dicom_chain.findings import Report
from dicom_chain.node import Node
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.verify import verify_files, verify_node

STUDIES, PER_STUDY = 2, 4
DEFAULT_MUTATIONS = 1200
# Public text VRs whose trailing spaces and NULs are padding (design.md 1.2).
PADDED_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
PIXEL_DATA = 0x7FE00010
# Bytes a private value's text may hold (design.md 1.4): printable, high, TAB, LF, FF, CR, ESC.
TEXT_BYTES = bytes(range(0x20, 0x100)) + b"\t\n\x0c\r\x1b"
BLOCK_OB = 0x10


def _enriched(ds: Dataset) -> Dataset:
    """A synthetic CT instance with sequences (one nested), private data, private data in an item."""
    ds = copy.deepcopy(ds)
    first, second = Dataset(), Dataset()
    for n, item in enumerate((first, second)):
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.10.1507.{ds.InstanceNumber}.{n + 1}"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121311", "DCM", "Localizer"
    second.PurposeOfReferenceCodeSequence = [code]
    first.private_block(0x0011, "ACME ITEM", create=True).add_new(0x01, "SH", "in item")
    ds.ReferencedImageSequence = [first, second]
    vendor = ds.private_block(0x0009, "ACME 1.0", create=True)
    vendor.add_new(0x01, "LO", "vendor value")
    vendor.add_new(0x02, "OB", bytes(range(1, 9)))
    inner = Dataset()
    inner.PatientID = "inner id"
    vendor.add_new(0x03, "SQ", [inner])
    return ds


@dataclass(frozen=True)
class Leaf:
    """A value that is not a sequence, where its bytes are in the file."""

    tag: int
    vr: str
    start: int
    length: int
    depth: int  # 0 at the top level, 1 inside an item of a top-level sequence, ...
    in_block: bool  # one of our DICOM_CHAIN block's elements (top level only)


def _leaves(data: bytes) -> list[Leaf]:
    ds = pydicom.dcmread(BytesIO(data))
    assert not ds.original_encoding[0] and ds.original_encoding[1]  # explicit VR little endian
    ours = chain_block_tags(ds)
    fp = BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    # the top level read raw (pydicom decodes a few elements eagerly, and then forgets where they were)
    top = {int(raw.tag): raw for raw in data_element_generator(fp, False, True)}
    out: list[Leaf] = []

    def walk(container: Dataset, base: int, depth: int) -> None:
        for tag in list(container.keys()):
            raw = top[int(tag)] if depth == 0 else container._dict[tag]
            assert isinstance(raw, RawDataElement)
            start = base + raw.value_tell
            elem = container[tag]
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item, start, depth + 1)
                continue
            if tag.element == 0 or tag == 0xFFFCFFFC or not raw.length:
                continue
            assert data[start : start + raw.length] == raw.value  # the walker finds the real bytes
            out.append(Leaf(int(tag), str(elem.VR), start, raw.length, depth, depth == 0 and tag in ours))

    walk(ds, 0, 0)
    return out


def _padding_only(leaf: Leaf, old: bytes, new: bytes, bits: tuple[int, int] | None = None) -> bool:
    """The change touches only padding the design says is not value (module docstring); ``bits``
    is (Bits Allocated, Bits Stored) for pixel data."""
    value = slice(leaf.start, leaf.start + leaf.length)
    if leaf.tag == PIXEL_DATA and bits is not None:
        allocated, stored = bits
        width = allocated // 8
        dtype = f"<u{width}"
        mask = (1 << stored) - 1  # High Bit is Bits Stored - 1 in the synthetic studies
        before = np.frombuffer(old[value], dtype) & mask
        after = np.frombuffer(new[value], dtype) & mask
        return bool((before == after).all())
    if leaf.tag >> 16 & 1 and not leaf.in_block:  # private: padding when the rest is text (1.4)
        a, b = old[value].rstrip(b" \x00"), new[value].rstrip(b" \x00")
        textual = a and len(a) < leaf.length and not a.translate(None, TEXT_BYTES)
        if textual and a == b:
            return True
    public_text = leaf.tag >> 16 & 1 == 0 and _dictionary_vr(leaf.tag) in PADDED_VRS
    if not (public_text or leaf.in_block) or leaf.vr == "UL":
        return False
    strip = b" \x00"
    if leaf.in_block and leaf.vr != "OB":  # copies and creator: compared with both ends stripped
        return old[value].strip(strip) == new[value].strip(strip)
    return old[value].rstrip(strip) == new[value].rstrip(strip)


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


@dataclass
class Study:
    """The chained store, each file's original bytes, and who follows whom in each study."""

    node: Node
    paths: list[Path]  # in chain (height) order
    original: dict[Path, bytes]
    leaves: dict[Path, list[Leaf]]
    next_in_study: dict[Path, Path | None]  # the instance whose index reveals this one's removal
    bits: dict[Path, tuple[int, int]]  # (Bits Allocated, Bits Stored) of each file's pixels

    def restore(self) -> None:
        for path, data in self.original.items():
            if not path.is_file() or path.read_bytes() != data:
                path.write_bytes(data)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    node = Node.open(Settings(home=tmp_path_factory.mktemp("mutations"), institution="Test Hospital"))
    streams = [
        [_enriched(ds) for ds in ct_study(StudySpec(seed=40 + s, instances=PER_STUDY, rows=8, columns=8))]
        for s in range(STUDIES)
    ]
    paths = [node.ingest(item_from_dataset(stream[i])).path for i in range(PER_STUDY) for stream in streams]
    original = {p: p.read_bytes() for p in paths}
    by_study: dict[str, list[tuple[int, Path]]] = {}
    for p in paths:
        h = read_block(pydicom.dcmread(p)).header
        by_study.setdefault(h.study_instance_uid, []).append((h.study_index, p))
    next_in_study: dict[Path, Path | None] = {}
    for members in by_study.values():
        ordered = [p for _, p in sorted(members)]
        for i, p in enumerate(ordered):
            next_in_study[p] = ordered[i + 1] if i + 1 < len(ordered) else None
    try:
        bits = {}
        for p in paths:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            bits[p] = (int(ds.BitsAllocated), int(ds.BitsStored))
        leaves = {p: _leaves(d) for p, d in original.items()}
        yield Study(node, paths, original, leaves, next_in_study, bits)
    finally:
        node.close()


@dataclass(frozen=True)
class Mutation:
    kind: str
    what: str
    contents: dict[Path, bytes | None]  # new bytes per changed path; None: the file is removed
    named: frozenset[Path]  # every one of these must be named by an error finding
    ledger_only: bool = False  # files alone cannot show it: verify the node with its ledger

    def apply(self) -> None:
        for path, data in self.contents.items():
            if data is None:
                path.unlink()
            else:
                path.write_bytes(data)


class NotAChange(Exception):
    """The draw changed no byte, or only what the design declares meaningless: draw again."""


@dataclass
class Mutator:
    study: Study
    rng: random.Random
    regenerated: Counter[str] = field(default_factory=Counter)

    # -- helpers ------------------------------------------------------------------------------

    def _file(self) -> Path:
        return self.rng.choice(self.study.paths)

    def _edit(self, path: Path, change: Callable[[Dataset], str]) -> tuple[bytes, str]:
        """Parse the file, let ``change`` edit the dataset (it says what it did), write it back."""
        ds = pydicom.dcmread(BytesIO(self.study.original[path]))
        what = change(ds)
        out = BytesIO()
        ds.save_as(out)
        return out.getvalue(), what

    def _one(self, kind: str, path: Path, data: bytes, what: str) -> Mutation:
        if data == self.study.original[path]:
            raise NotAChange(what)
        return Mutation(kind, f"{what} in {path.name}", {path: data}, frozenset({path}))

    @staticmethod
    def _datasets(ds: Dataset) -> list[Dataset]:
        """The dataset and every sequence item in it, at any depth."""
        out = [ds]
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value:
                    out.extend(Mutator._datasets(item))
        return out

    @staticmethod
    def _sequences(ds: Dataset) -> list[tuple[Dataset, int]]:
        out: list[tuple[Dataset, int]] = []
        for container in Mutator._datasets(ds):
            out.extend((container, int(e.tag)) for e in container if e.VR == "SQ")
        return out

    # -- byte changes -------------------------------------------------------------------------

    def _byte(self, kind: str, pick: Callable[[Leaf], bool]) -> Mutation:
        path = self._file()
        leaf = self.rng.choice([leaf for leaf in self.study.leaves[path] if pick(leaf)])
        old = self.study.original[path]
        at = leaf.start + self.rng.randrange(leaf.length)
        new = bytearray(old)
        new[at] ^= self.rng.randrange(1, 256)
        if _padding_only(leaf, old, bytes(new), self.study.bits.get(path)):
            raise NotAChange("padding")
        return self._one(
            kind, path, bytes(new), f"byte {at} of ({leaf.tag >> 16:04X},{leaf.tag & 0xFFFF:04X})"
        )

    def byte_public(self) -> Mutation:
        return self._byte(
            "byte-public", lambda f: f.depth == 0 and not f.tag >> 16 & 1 and f.tag != PIXEL_DATA
        )

    def byte_private(self) -> Mutation:
        return self._byte("byte-private", lambda f: f.depth == 0 and bool(f.tag >> 16 & 1) and not f.in_block)

    def byte_in_item(self) -> Mutation:
        return self._byte("byte-in-item", lambda f: f.depth > 0)

    def byte_pixel(self) -> Mutation:
        return self._byte("byte-pixel-data", lambda f: f.tag == PIXEL_DATA)

    def byte_block(self) -> Mutation:
        """A byte of our block: the creator, a readable copy or the serialised block."""
        return self._byte("byte-block", lambda f: f.in_block)

    # -- the block's fields -------------------------------------------------------------------

    def block_field(self) -> Mutation:
        path = self._file()
        choice = self.rng.randrange(3)
        if choice == 0:
            return self._block_header_field(path)
        if choice == 1:
            return self._block_copy(path)
        return self._block_hex_case(path)

    def _block_header_field(self, path: Path) -> Mutation:
        """One header field changed in the serialised block and every readable copy alike (the
        old signature kept: nobody else holds the key)."""
        rng = self.rng

        def change(ds: Dataset) -> str:
            block = read_block(ds)
            h = block.header
            name = rng.choice(
                ["chain_id", "height", "prev_hash", "content_hash", "timestamp", "institution",
                 "sop_instance_uid", "study_instance_uid", "study_index", "study_prev_hash"]
            )  # fmt: skip
            value = getattr(h, name)
            if isinstance(value, int):
                new: object = value + rng.choice([1, 2, 7]) if value == 0 or rng.random() < 0.5 else value - 1
            elif name.endswith("hash"):  # another block's hash, or any
                other = read_block(pydicom.dcmread(rng.choice(self.study.paths))).hash
                new = rng.choice([f"{rng.getrandbits(256):064x}", other])
            else:
                at = rng.randrange(len(value))
                new = value[:at] + rng.choice("0123456789ABCXYZ.") + value[at + 1 :]
            if new == value:
                raise NotAChange(name)
            embed_block(ds, Block(replace(h, **{name: new}), block.public_key, block.signature))
            return f"header {name} {value!r} -> {new!r}"

        data, what = self._edit(path, change)
        return self._one("block-field", path, data, what)

    def _block_copy(self, path: Path) -> Mutation:
        """One readable copy changed to another value of its kind; the serialised block left alone."""
        rng = self.rng

        def change(ds: Dataset) -> str:
            [slot] = creator_slots(ds)
            offset = rng.choice([o for o in ELEMENTS if o != BLOCK_OB])
            elem = ds[(CHAIN_GROUP << 16) | (slot << 8) | offset]
            value = elem.value
            if isinstance(value, int):
                elem.value = value + 1
            else:
                text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                at = rng.randrange(len(text.rstrip()))
                elem.value = text[:at] + ("Q" if text[at] != "Q" else "R") + text[at + 1 :]
            return f"readable copy {ELEMENTS[offset][3]}"

        data, what = self._edit(path, change)
        return self._one("block-field", path, data, what)

    def _block_hex_case(self, path: Path) -> Mutation:
        """A hex digit of the public key or signature in upper case: same bytes once decoded."""
        old = self.study.original[path]
        leaf = next(f for f in self.study.leaves[path] if f.in_block and f.vr == "OB")
        value = old[leaf.start : leaf.start + leaf.length]
        spots = []
        for key in (b'"public_key":"', b'"signature":"'):
            at = value.index(key) + len(key)
            spots += [at + i for i in range(128 if b"sig" in key else 64) if value[at + i] in b"abcdef"]
        at = leaf.start + self.rng.choice(spots)
        new = bytearray(old)
        new[at] = ord(chr(new[at]).upper())
        return self._one(
            "block-field", path, bytes(new), f"hex digit at {at} of the serialised block in upper case"
        )

    # -- elements and items -------------------------------------------------------------------

    def element_added(self) -> Mutation:
        path = self._file()
        rng = self.rng

        def change(ds: Dataset) -> str:
            where = rng.randrange(5)
            value = f"X{rng.randrange(10**6)}"
            if where == 0:
                tag, vr = rng.choice(
                    [(0x00081010, "SH"), (0x00081070, "PN"), (0x00180015, "CS"), (0x00204000, "LT")]
                )
                ds.add_new(tag, vr, value)
                return f"public ({tag >> 16:04X},{tag & 0xFFFF:04X})"
            if where == 1:
                items = self._datasets(ds)[1:]
                item = rng.choice(items)
                tag = rng.choice([t for t in (0x00081010, 0x00200013, 0x00400254) if t not in item])
                item.add_new(tag, dictionary_VR(tag), "7" if tag == 0x00200013 else value)
                return "public element in a sequence item"
            if where == 2:
                block = ds.private_block(0x0009, "ACME 1.0")
                offset = rng.randrange(0x04, 0x100)
                block.add_new(offset, "LO", value)
                return f"element at offset {offset:02X} of another vendor's private block"
            if where == 3:
                ds.private_block(0x0071, "OTHER VENDOR", create=True).add_new(0x01, "LO", value)
                return "another creator's element in group 0071"
            [slot] = creator_slots(ds)
            offset = rng.choice([o for o in range(0x00, 0x100) if o not in ELEMENTS])
            ds.add_new(
                (CHAIN_GROUP << 16) | (slot << 8) | offset, rng.choice(["LO", "OB", "UN"]), value.encode()
            )
            return f"element at unused offset {offset:02X} of our block"

        data, what = self._edit(path, change)
        return self._one("element-added", path, data, f"added {what}")

    def element_removed(self) -> Mutation:
        path = self._file()
        rng = self.rng

        def change(ds: Dataset) -> str:
            # our block's elements but its creator (offset byte 00) and the serialised block
            copies = {t for t in chain_block_tags(ds) if t >> 8 & 0xFF and t & 0xFF != BLOCK_OB}
            choices = [
                (container, int(tag))
                for container in self._datasets(ds)
                for tag in container.keys()
                if tag.element != 0 and not (container is ds and int(tag) in copies)
            ]
            container, tag = rng.choice(choices)
            del container[tag]
            return (
                f"removed ({tag >> 16:04X},{tag & 0xFFFF:04X}){' in an item' if container is not ds else ''}"
            )

        data, what = self._edit(path, change)
        return self._one("element-removed", path, data, what)

    def item_added_or_removed(self) -> Mutation:
        path = self._file()
        rng = self.rng

        def change(ds: Dataset) -> str:
            container, tag = rng.choice(self._sequences(ds))
            seq: Sequence = container[tag].value
            name = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
            if seq and rng.random() < 0.5:
                del seq[rng.randrange(len(seq))]
                return f"item removed from {name}"
            new = copy.deepcopy(rng.choice(list(seq))) if seq and rng.random() < 0.7 else Dataset()
            seq.insert(rng.randrange(len(seq) + 1), new)
            return f"item added to {name}"

        data, what = self._edit(path, change)
        return self._one("item-added-or-removed", path, data, what)

    # -- the set of files ---------------------------------------------------------------------

    def file_removed(self) -> Mutation:
        path = self._file()
        after = self.study.next_in_study[path]
        if after is None:  # the last of its study: only the ledger can tell (design.md section 3)
            return Mutation("file-removed", f"removed {path.name}, last of its study", {path: None},
                            frozenset({path}), ledger_only=True)  # fmt: skip
        return Mutation("file-removed", f"removed {path.name}", {path: None}, frozenset({after}))

    def files_swapped(self) -> Mutation:
        a, b = self.rng.sample(self.study.paths, 2)
        data_a, data_b = self.study.original[a], self.study.original[b]
        if self.rng.random() < 0.5:  # whole files exchanged: each still a valid chained file
            return Mutation("files-swapped", f"contents of {a.name} and {b.name} exchanged",
                            {a: data_b, b: data_a}, frozenset({a, b}), ledger_only=True)  # fmt: skip
        ds_a, ds_b = (pydicom.dcmread(BytesIO(d)) for d in (data_a, data_b))
        blocks_a = {t: ds_a[t] for t in chain_block_tags(ds_a)}
        blocks_b = {t: ds_b[t] for t in chain_block_tags(ds_b)}
        out = {}
        for path, ds, donor in ((a, ds_a, blocks_b), (b, ds_b, blocks_a)):
            remove_blocks(ds)
            for tag, elem in donor.items():
                ds[tag] = elem
            buf = BytesIO()
            ds.save_as(buf)
            out[path] = buf.getvalue()
        return Mutation("files-swapped", f"blocks of {a.name} and {b.name} exchanged", out, frozenset({a, b}))

    KINDS = (
        "byte_public", "byte_private", "byte_in_item", "byte_pixel", "byte_block", "block_field",
        "element_added", "element_removed", "item_added_or_removed", "file_removed", "files_swapped",
    )  # fmt: skip

    def draw(self, kind: str) -> Mutation:
        while True:
            try:
                return getattr(self, kind)()
            except NotAChange:
                self.regenerated[kind] += 1


def _problems(report: Report, named: frozenset[Path]) -> str:
    """Empty when the report is broken and its errors name every file in ``named``."""
    if report.ok:
        return "verify found nothing"
    named_by_errors = {f.path for f in report.errors}
    missing = sorted(p.name for p in named if str(p) not in named_by_errors)
    return f"no error names {missing}" if missing else ""


def test_the_unchanged_study_verifies_and_pydicom_round_trips_change_nothing(study: Study) -> None:
    """The baseline: without a change nothing is found, so every finding below is the change's."""
    pinned = frozenset({study.node.key.public_key})
    root = study.node.storage.root
    for complete in (True, False):
        report = verify_files([root], pinned, complete=complete)
        assert report.ok and report.files_checked == STUDIES * PER_STUDY, report.findings
    assert verify_node(study.node.ledger, study.node.storage, pinned).ok
    for path, data in study.original.items():
        out = BytesIO()
        pydicom.dcmread(BytesIO(data)).save_as(out)
        path.write_bytes(out.getvalue())
    try:
        assert verify_files([root], pinned, complete=True).ok
    finally:
        study.restore()


def test_every_single_change_is_found_on_the_right_file(study: Study, record_property) -> None:
    seed = int(os.environ.get("MUTATION_SEED") or random.SystemRandom().randrange(2**32))
    total = int(os.environ.get("MUTATIONS") or DEFAULT_MUTATIONS)
    record_property("mutation_seed", seed)
    print(f"mutation seed {seed} (replay: MUTATION_SEED={seed})")
    mutator = Mutator(study, random.Random(seed))
    pinned = frozenset({study.node.key.public_key})
    root = study.node.storage.root
    done: Counter[str] = Counter()
    started = time.monotonic()
    for n in range(total):
        kind = Mutator.KINDS[n % len(Mutator.KINDS)]
        mutation = mutator.draw(kind)
        where = f"seed {seed} (MUTATION_SEED={seed}), mutation {n}, {mutation.kind}: {mutation.what}"
        mutation.apply()
        try:
            if mutation.ledger_only:
                reports = [verify_node(study.node.ledger, study.node.storage, pinned)]
            else:
                reports = [verify_files([root], pinned, complete=True)]
                if mutation.kind != "file-removed":  # part of a study is fine by default; a change is not
                    reports.append(verify_files([root], pinned))
            for report in reports:
                assert not (problem := _problems(report, mutation.named)), (
                    f"{where}: {problem} {report.findings}"
                )
        finally:
            study.restore()
        done[mutation.kind] += 1
    elapsed = time.monotonic() - started
    print(
        f"{sum(done.values())} mutations in {elapsed:.1f} s: {dict(done)};",
        f"regenerated {dict(mutator.regenerated)}",
    )
    assert sum(done.values()) >= 1000 or total < 1000
    assert len(done) == len(Mutator.KINDS), done  # every kind of change is represented
