"""The DICOM carrier: Part 10 files and received datasets, with the block in private group 0071.

The first implementation of ``carriers.base``: content hash (canonical.py), block in a private
block (embedding.py), spliced into the bytes as received when they are at hand (splice.py), checks
before chaining (validation.py), identity from the four UIDs (identity.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom import dcmwrite
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_chain.block import FORMAT_VERSION, Block
from dicom_chain.carriers.base import Carried, Carrier, Digests, Identity, Item
from dicom_chain.carriers.dicom import fastread
from dicom_chain.carriers.dicom.canonical import CANONICAL_VERSION, content_digests, lossy_pixels
from dicom_chain.carriers.dicom.elementwalk import Element, walk
from dicom_chain.carriers.dicom.embedding import embed_block, read_block, take_checkpoint
from dicom_chain.carriers.dicom.identity import instance_identity
from dicom_chain.carriers.dicom.indexvalues import index_values
from dicom_chain.carriers.dicom.privatetags import CHAIN_GROUP
from dicom_chain.carriers.dicom.splice import (
    PREAMBLE,
    EncodedInstance,
    FileSpan,
    Layout,
    Splice,
    encoding_as_read,
    file_meta_bytes,
    layout,
    splice_point,
    spliced_layout,
)
from dicom_chain.carriers.dicom.unlengths import is_big_endian_part10, un_lengths_defined
from dicom_chain.carriers.dicom.validation import pixel_data_anomalies
from dicom_chain.errors import (
    ContentHashError,
    DicomChainError,
    LossyReencodingError,
    MalformedBlockError,
    NeedMore,
    NotDicomError,
    UnfaithfulFileError,
    Unwalkable,
)
from dicom_chain.storage import read_written

PART10_MAGIC = b"DICM"  # PS3.10 7.1: after the 128-byte preamble
PART10_MAGIC_AT = 128
HEAD_BYTES = 65536  # enough for any file meta we have seen; a longer one reads as before
# A received file's values longer than this stay on disk until used (pydicom's defer_size): the
# pixels are then hashed and copied in chunks, never held whole. Above any attribute the index or
# the block reads; far below a frame of a large image.
DEFER_BYTES = 1 << 20
# A stored file's head read at once to walk its element headers: every header of a CT or MR slice
# lies in its first few KB (then the pixels, skipped by length); a file whose headers lie further
# (a long multi-frame, a structured report) is read whole, once more. 16 KiB, not 64: a quarter of
# the copy out of the page cache (0.008 -> 0.004 ms a read).
WALK_HEAD_BYTES = 16384
# A received data set held in memory is parsed with values over this left in its buffer: the pixels
# of any image worth the trouble (a 64x64 8-bit icon is 4 KB, a CT slice 512 KB), while the
# attributes of an instance, small, are read as ever.
IN_PLACE_BYTES = 65536
PIXEL_DATA = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF


class DicomCarrier(Carrier):
    name = "dicom"
    suffix = ".dcm"
    block_format = FORMAT_VERSION  # what every DICOM block so far is: their hashes must not move
    canonical_version = CANONICAL_VERSION
    magic_length = PART10_MAGIC_AT + len(PART10_MAGIC)
    forwarded = True

    def recognises(self, head: bytes) -> bool:
        # pydicom refuses a file without the magic unless forced, so this is exactly what it reads
        return head[PART10_MAGIC_AT : self.magic_length] == PART10_MAGIC

    def open(self, data: bytes) -> DicomCarried:
        ds, encoded = EncodedInstance.from_part10(data)
        return DicomCarried(ds, encoded)

    def received(self, ds: Dataset, body: bytes) -> DicomCarried:
        """A dataset as a C-STORE carried it: ``body`` is its encoding without file meta."""
        return DicomCarried(ds, EncodedInstance.from_network(ds, body))

    def open_stored(self, path: Path) -> DicomCarried:
        """A stored file with its large values left on disk (``defer_size``): confirming a large
        instance reads it in pieces, never whole. Big endian files are read whole, as ``open`` reads
        them (their undefined length UN values need unlengths.py first)."""
        with path.open("rb") as fp:
            head = fp.read(64 * 1024)
        if is_big_endian_part10(head):
            return self.open(path.read_bytes())
        try:
            ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
        except OSError:
            raise
        except Exception as exc:  # pydicom raises many types on garbage
            raise NotDicomError(f"{path}: not a readable DICOM file ({exc})") from exc
        return DicomCarried(ds)

    def received_file(self, path: Path, file_meta: FileMetaDataset) -> DicomCarried:
        """A dataset a C-STORE carried, received to the Part 10 file ``path``, its large values left
        on disk until used; ``file_meta`` as for ``received``. The file must stay until the item is
        stored. A deflated one is inflated whole (pydicom cannot come back to a value inside it).
        """
        syntax = file_meta.get("TransferSyntaxUID")
        deflated = syntax is not None and syntax == DeflatedExplicitVRLittleEndian
        try:
            ds = pydicom.dcmread(path, defer_size=None if deflated else DEFER_BYTES)
        except Exception as exc:  # pydicom raises many types on garbage
            raise NotDicomError(f"dataset does not decode: {exc}") from exc
        ds.file_meta = file_meta
        return DicomCarried(ds, EncodedInstance.from_received_file(ds, path))

    def received_bytes(
        self, data: bytes, file_meta: FileMetaDataset, prefix: bytes | None = None
    ) -> DicomCarried:
        """``received_file`` for a Part 10 file received to memory (an instance under the spool's
        memory limit): the same item, parsed and written from the same bytes.

        The pixels are left in ``data`` (``_parsed_in_place``): hashed from a view of it and
        written from it, never copied out, unless something reads them as a value. ``prefix``: the
        preamble and ``file_meta`` as ``file_meta_bytes`` writes it, when the caller has it
        (``fastread.file_meta``)."""
        if prefix is None:
            try:
                prefix = PREAMBLE + file_meta_bytes(file_meta)
            except Exception:  # a meta pydicom will not write: refused after the parse, as ever
                prefix = None
        try:
            fast = fastread.parse(data, prefix, file_meta, IN_PLACE_BYTES) if prefix is not None else None
            ds = fast if fast is not None else _parsed_in_place(data)
        except Exception as exc:  # pydicom raises many types on garbage
            raise NotDicomError(f"dataset does not decode: {exc}") from exc
        ds.file_meta = file_meta
        encoded = EncodedInstance.from_received_bytes(ds, data, prefix)
        try:
            as_read = layout(ds, encoded.tell_base)  # now, before any value is converted
        except ValueError:
            as_read = None
        return DicomCarried(ds, encoded, as_read)

    def dataset(self, ds: Dataset) -> DicomCarried:
        """A dataset without its bytes: pydicom writes it when it is stored."""
        return DicomCarried(ds)


DICOM = DicomCarrier()


class DicomCarried(Carried):
    carrier = DICOM

    def __init__(
        self, ds: Dataset, encoded: EncodedInstance | None = None, as_read: Layout | None = None
    ) -> None:
        self.dataset = ds
        self.encoded = encoded  # the bytes ``ds`` was parsed from, when at hand
        self.as_read = as_read  # where its elements lay in those bytes (an in-memory body only)
        self._splice: Splice | None = None  # how with_block last wrote the block in, if spliced
        self._spliced_block: bytes | None = None  # the block that splice encodes
        self._identity: Identity | None = None  # as ``identity`` last read it from ``dataset``
        self._checked: tuple[str, ...] | None = None  # the anomalies ``check`` found, until asked for

    @property
    def item_id_hint(self) -> str:
        try:
            return str(self.dataset.get("SOPInstanceUID", "") or "")
        except Exception:  # a garbled UID still leaves the file worth naming by its path
            return ""

    def content_hash(self, version: int | None = None) -> str:
        return self._digests(version or CANONICAL_VERSION).content

    def digests(self) -> Digests:
        return self._digests(CANONICAL_VERSION)

    def _digests(self, version: int) -> Digests:
        """Values pydicom left unread in a body held in memory are hashed from it, uncopied."""
        encoded = self.encoded
        if encoded is not None and isinstance(encoded.body, bytes | memoryview):
            return content_digests(self.dataset, version, encoded.body, encoded.tell_base)
        return content_digests(self.dataset, version)

    def check_content(self, block: Block) -> None:
        """A lossy re-encoding of the pixels (every other attribute intact, and the file saying
        it is lossy) is named as such, apart from tampering (docs/design.md 1.6)."""
        header = block.header
        found = content_digests(self.dataset, header.canonical)
        if found.content == header.content_hash:
            return
        lossy = lossy_pixels(self.dataset)
        if lossy and header.attributes_hash and found.attributes == header.attributes_hash:
            uid = str(self.dataset.get("SOPInstanceUID", ""))
            derived = f", as a new instance {uid}" if uid != header.sop_instance_uid else ""
            raise LossyReencodingError(
                f"pixels re-encoded lossily ({lossy}){derived}: their values differ from those "
                "chained and cannot be checked; every other attribute is intact"
            )
        raise ContentHashError("content changed since it was chained (content hash differs)")

    def read_block(self) -> Block:
        try:
            return read_block(self.dataset)
        except DicomChainError:
            raise
        except Exception as exc:  # a garbled private element can fail inside pydicom
            raise MalformedBlockError(f"block unreadable: {exc}") from exc

    def take_sender_checkpoint(self) -> str:
        try:
            return take_checkpoint(self.dataset)
        except Exception:  # a garbled element: no checkpoint to judge, the instance itself is unharmed
            return ""

    def identity(self) -> Identity:
        self._identity = instance_identity(self.dataset)
        return self._identity

    def check(self) -> None:
        self._checked = tuple(pixel_data_anomalies(self.dataset))  # raises what check_pixel_data raises

    def anomalies(self) -> tuple[str, ...]:
        """What the ``check`` just before found (``item`` asks for both in turn: the pixel module
        read once), else found now."""
        found, self._checked = self._checked, None
        return found if found is not None else tuple(pixel_data_anomalies(self.dataset))

    def with_block(self, block: Block) -> Iterable[bytes | memoryview]:
        """The received bytes with the block spliced in; else pydicom writes the dataset."""
        self._splice = None
        if self.encoded is not None:
            splice = splice_point(self.dataset, self.encoded, block)
            if splice is not None:
                self._splice, self._spliced_block = splice, block.to_bytes()
                return self.encoded.pieces(splice.at, splice.ours)
        embed_block(self.dataset, block)  # now: a dataset with no room for it is the sender's fault
        return self._written_by_pydicom()

    def confirm_written(self, path: Path, block: Block) -> None:
        """A file spliced from bytes held in memory is confirmed by its structure: read back, it must
        parse into the received elements, each the same tag, VR and length at the same place (shifted
        past the block), plus our block and nothing else, and be the size of what was written. The
        bytes of those elements are the received ones (the store wrote the same buffers), so its
        content hashes as the received data set did (the canonical hash is a function of those
        elements alone) and the pixels need neither be read nor hashed a second time: 0.3 ms instead
        of 1.6 for a 0.5 MB CT slice. Anything else (written by pydicom, received to disk) is read
        back and re-hashed as ``verify`` reads a file; ``verify`` re-hashes every file later anyway.

        The structure is read by walking the element headers in the file's bytes (elementwalk), not
        by a pydicom parse; whatever that walk does not read as pydicom would, or any difference it
        finds, is left to the parse below, which decides (the walk alone never refuses a file)."""
        splice, encoded = self._splice, self.encoded
        if splice is None or encoded is None or self.as_read is None or isinstance(encoded.body, FileSpan):
            self.carrier.confirm(path, block)
            return
        try:
            if self._confirmed_by_walk(path, block, splice, encoded, self.as_read):
                return
        except OSError as exc:
            raise UnfaithfulFileError(f"the file as stored would not read back: {exc}") from exc
        except Exception:  # whatever goes wrong in the walk, the parse decides, never the walk
            pass
        self._confirm_by_parse(path, block, splice, encoded, self.as_read)

    def _confirmed_by_walk(
        self, path: Path, block: Block, splice: Splice, encoded: EncodedInstance, as_read: Layout
    ) -> bool:
        """True when the file's element headers lie exactly as received (shifted past the block),
        the bytes at the block's place are those inserted, and those encode ``block``; then the
        block read back is ``block`` and the identity is the received data set's, whose elements
        those are. False for anything else: the parse decides."""
        encoding = encoding_as_read(self.dataset)
        if encoding is None or block.to_bytes() != self._spliced_block:
            return False
        start = len(encoded.prefix)
        expected = start + len(encoded.body) + len(splice.ours)
        data, size = read_written(path, 0, WALK_HEAD_BYTES)  # the store's descriptor: no open
        if size != expected:
            return False  # the parse names the size
        try:
            found = walk(data, start, expected, start, *encoding)
        except NeedMore:
            data = read_written(path, 0, size)[0]
            try:
                found = walk(data, start, expected, start, *encoding)
            except Unwalkable:
                return False
        except Unwalkable:
            return False
        at, size = start + splice.at, len(splice.ours)
        inserted = data[at : at + size] if at + size <= len(data) else read_written(path, at, size)[0]
        if inserted != splice.ours:
            return False
        theirs = [e for e in found if e[0] >> 16 != CHAIN_GROUP]
        ours = [e for e in found if e[0] >> 16 == CHAIN_GROUP]
        if not ours or not all(splice.at <= offset < splice.at + size for _, _, offset, _ in ours):
            return False
        if not _same_layout(theirs, spliced_layout(as_read, splice)):
            return False
        try:  # the spliced path never changes ``dataset``: an identity read from it still holds
            ids = self._identity or instance_identity(self.dataset)
        except DicomChainError:
            return False  # the parse names what is wrong with it
        return (ids.item_id, ids.group_id) == (block.header.item_id, block.header.group_id)

    def _confirm_by_parse(
        self, path: Path, block: Block, splice: Splice, encoded: EncodedInstance, as_read: Layout
    ) -> None:
        """The structure as pydicom parses the file back, with the block and identity it reads."""
        try:
            expected = len(encoded.prefix) + len(encoded.body) + len(splice.ours)
            if path.stat().st_size != expected:
                raise UnfaithfulFileError("the file as stored is not the size of the bytes written")
            stored = pydicom.dcmread(path, defer_size=DEFER_BYTES)  # the pixels stay on disk
            found = layout(stored, len(encoded.prefix))
            ours = [e for e in found if e[0] >> 16 == CHAIN_GROUP]
            if tuple(e for e in found if e[0] >> 16 != CHAIN_GROUP) != spliced_layout(as_read, splice):
                raise UnfaithfulFileError("the file as stored would not parse into the elements received")
            if not all(splice.at <= offset < splice.at + len(splice.ours) for _, _, offset, _ in ours):
                raise UnfaithfulFileError("the file as stored would read our group from the bytes received")
            carried = read_block(stored)
            ids = instance_identity(stored)
        except DicomChainError as exc:
            if isinstance(exc, UnfaithfulFileError):
                raise
            raise UnfaithfulFileError(f"the file as stored would not verify: {exc}") from exc
        except Exception as exc:  # a parser decoding lazily may fail anywhere on garbled input
            raise UnfaithfulFileError(f"the file as stored would not read back: {exc}") from exc
        if carried.to_bytes() != block.to_bytes():
            raise UnfaithfulFileError("the file as stored would carry another block than the one signed")
        if (ids.item_id, ids.group_id) != (block.header.item_id, block.header.group_id):
            raise UnfaithfulFileError("the file as stored would name another item than its block")

    def _written_by_pydicom(self) -> Iterator[memoryview]:
        """Encoded as the store writes it, so that what pydicom refuses is a StorageError as ever;
        handed over as a view of pydicom's buffer, not a copy of it."""
        buffer = BytesIO()
        dcmwrite(buffer, self.dataset, enforce_file_format=True)
        yield buffer.getbuffer()

    def index_values(self) -> dict[str, Any]:
        return index_values(self.dataset)


def _same_layout(found: list[Element], expected: Layout) -> bool:
    """Element for element the same tag, place, length and VR; where pydicom converted an element
    while reading (Specific Character Set: length -1) its length is bounded by the next element's
    place, and in implicit VR its VR is pydicom's dictionary's, not in the bytes."""
    if len(found) != len(expected):
        return False
    for (tag, vr, at, length), (want_tag, want_vr, want_at, want_length) in zip(found, expected, strict=True):
        if (tag, at) != (want_tag, want_at):
            return False
        if want_length != -1 and length != want_length:
            return False
        if vr != want_vr and not (want_length == -1 and vr == "None"):
            return False
    return True


def _parsed_in_place(data: bytes) -> Dataset:
    """``data`` parsed as ``dcmread`` parses it, but for a top-level Pixel Data of defined length,
    which pydicom leaves unread (``defer_size``) in the buffer it keeps: reading it would copy the
    largest value of the instance into fresh memory only to hash and write it from there. Any
    other value left unread, or a sequence of undefined length (whose items pydicom reads with the
    same deferral but cannot read back), and the data set is parsed again the plain way."""
    ds = pydicom.dcmread(BytesIO(data), defer_size=IN_PLACE_BYTES)
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return pydicom.dcmread(BytesIO(data))  # the tells are offsets in the inflated bytes
    for tag, elem in ds._dict.items():
        if not isinstance(elem, RawDataElement) or tag == PIXEL_DATA:
            continue
        if (elem.value is None and elem.length) or elem.length == UNDEFINED_LENGTH:
            return pydicom.dcmread(BytesIO(data))
    pixels = ds._dict.get(PIXEL_DATA)
    if (
        isinstance(pixels, RawDataElement)
        and pixels.value is None
        and (not isinstance(pixels.value_tell, int) or pixels.value_tell + pixels.length > len(data))
    ):
        return pydicom.dcmread(BytesIO(data))  # cut short: read as ever, and refused as ever
    return ds


def item_from_dataset(ds: Dataset) -> Item:
    """A decoded dataset as something to chain (hashed, named, checked); pydicom writes it."""
    return DICOM.dataset(ds).item()


def read_dataset(path: Path) -> Dataset:
    """A Part 10 file as a dataset, or NotDicomError naming it; OSError passes through.

    Big endian files are read whole first, so that a UN of undefined length reads (see
    un_lengths_defined); any other file is read by pydicom from the path, as it always was.
    """
    try:
        with path.open("rb") as fp:
            head = fp.read(HEAD_BYTES)
        if not is_big_endian_part10(head):
            return pydicom.dcmread(path)
        ds = pydicom.dcmread(BytesIO(un_lengths_defined(path.read_bytes())))
        ds.filename = str(path)
        return ds
    except IsADirectoryError as exc:
        raise NotDicomError(f"{path}: is a directory") from exc
    except OSError:
        raise
    except Exception as exc:  # pydicom raises many types on garbage
        raise NotDicomError(f"{path}: not a readable DICOM file ({exc})") from exc
