"""The carrier interface: what the node, the store and the verifier ask of a kind of file.

A carrier knows one format (DICOM first; PNG, JPEG and TIFF later, as siblings): how to tell it by
its first bytes, what names an item in it, how to hash its content so that the hash survives what
a hop may legitimately rewrite, and where a block lives inside it. Everything above this package
speaks only this interface: ``Node.ingest`` takes an ``Item``, ``verify`` opens files through the
registry (``carriers.registry``), the store writes the bytes an item hands it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from dicom_chain import timing
from dicom_chain.block import Block
from dicom_chain.errors import ContentHashError, DicomChainError, UnfaithfulFileError


@dataclass(frozen=True)
class Identity:
    """What names an item, in the node's terms; each carrier says what its own terms map to."""

    item_id: str  # DICOM: SOP Instance UID. Versions of one item share it; the block names it
    group_id: str  # DICOM: Study Instance UID. The block's group links run within it
    series_id: str  # DICOM: Series Instance UID. A folder level of the store
    item_class: str  # DICOM: SOP Class UID. What a receiver must support to take the item
    patient_id: str  # may be empty: not every item names a patient
    encoding: str  # DICOM: the transfer syntax as stored. Forwarding chooses contexts by it


class Carried(ABC):
    """One file of a carrier's format, parsed. It may hold no block, or lack what chaining needs:
    verification reads broken files too, so only ``item()`` insists on a complete identity."""

    carrier: ClassVar[Carrier]

    @property
    @abstractmethod
    def item_id_hint(self) -> str:
        """The item id when the file names one, else "": findings on broken files still name it."""

    @abstractmethod
    def content_hash(self, version: int | None = None) -> str:
        """Hex SHA-256 of the carrier's canonical content (its block left out), by canonical
        ``version`` (None: the carrier's newest); MalformedDatasetError when the content cannot be
        canonicalised, or the version is not one the carrier knows."""

    def digests(self) -> Digests:
        """What a new block records of the content: by default the content hash alone."""
        return Digests(self.carrier.canonical_version, self.content_hash(), "")

    @abstractmethod
    def read_block(self) -> Block:
        """The block the file carries: NoBlockError, or MalformedBlockError for anything garbled."""

    @abstractmethod
    def identity(self) -> Identity:
        """MalformedDatasetError when the file lacks or garbles what names an item."""

    @abstractmethod
    def with_block(self, block: Block) -> Iterable[bytes | memoryview]:
        """The file with ``block`` in it (any block it held replaced), as pieces to write in order.

        May be lazy: an error while encoding then surfaces while the store writes them
        or written, as MalformedDatasetError (the item's fault: it fails the same way again)."""

    @abstractmethod
    def check(self) -> None:
        """Checks before chaining (MalformedDatasetError), so that a block never vouches for a
        broken file; a format whose parser already refuses broken files checks nothing more."""

    def anomalies(self) -> tuple[str, ...]:
        """What does not conform yet is kept as received and chained (each a short ``kind: detail``
        text): the receipt event names them and a DICOM sender gets a warning. None by default."""
        return ()

    def take_sender_checkpoint(self) -> str:
        """The sending institution's checkpoint, when the item came as a release that carries one
        (tlog/publishing.carried_request), removed from the item; "" otherwise, and for formats
        without."""
        return ""

    def index_values(self) -> Mapping[str, Any] | None:
        """The Query/Retrieve index's attributes of the item (db/indexschema.py), keyword -> value
        as read; None for formats without a query model."""
        return None

    def check_content(self, block: Block) -> None:
        """ContentHashError unless the content still hashes, by the canonical version ``block``
        names, to what it recorded."""
        if self.content_hash(block.header.canonical) != block.header.content_hash:
            raise ContentHashError("content changed since it was chained (content hash differs)")

    def confirm_written(self, path: Path, block: Block) -> None:
        """UnfaithfulFileError unless the file ``with_block`` just gave the store passes what
        ``verify`` checks; a carrier that knows how it wrote the file may prove it more cheaply."""
        self.carrier.confirm(path, block)

    def item(self) -> Item:
        """The file as something to chain: hashed, named and checked, or a named error."""
        timing.mark("decode")
        digests = self.digests()  # first: a parser decoding values lazily has decoded nothing yet
        timing.mark("hash")
        identity = self.identity()
        self.check()
        timing.mark("checks")
        return Item(self, identity, digests.content, digests.version, digests.attributes, self.anomalies())


@dataclass(frozen=True)
class Digests:
    """What a block records of an item's content (docs/design.md 1): the canonical version used,
    the content hash, and (DICOM from version 2) the hash of every attribute but the pixels."""

    version: int
    content: str
    attributes: str = ""  # "" when the version has none


@dataclass(frozen=True)
class Item:
    """One thing to chain, ready: all ``Node.ingest`` needs, and nothing of its format."""

    carried: Carried
    identity: Identity
    content_hash: str
    canonical: int = 1  # the canonical version content_hash used
    attributes_hash: str = ""  # DICOM from canonical 2: every attribute but the pixels (1.6)
    anomalies: tuple[str, ...] = ()  # kept as received, but not conforming (Carried.anomalies)

    def same_content(self, block: Block) -> bool:
        """Whether ``block`` recorded this content, by whichever canonical version it used."""
        if block.header.canonical == self.canonical:
            return block.header.content_hash == self.content_hash
        try:
            return self.carried.content_hash(block.header.canonical) == block.header.content_hash
        except DicomChainError:
            return False

    @property
    def carrier(self) -> Carrier:
        return self.carried.carrier

    def with_block(self, block: Block) -> Iterable[bytes | memoryview]:
        return self.carried.with_block(block)

    def confirm_written(self, path: Path, block: Block) -> None:
        self.carried.confirm_written(path, block)

    def index_values(self) -> Mapping[str, Any] | None:
        return self.carried.index_values()


class Carrier(ABC):
    """One format. Registered carriers are asked in turn whether they recognise a file's first bytes."""

    name: ClassVar[str]  # lowercase; format 2 block headers carry it (docs/design.md 2.4)
    suffix: ClassVar[str]  # the file name suffix in the store, e.g. ".dcm"
    block_format: ClassVar[int]  # the block header format this carrier writes (1: DICOM only, 2: any)
    canonical_version: ClassVar[int] = 1  # the canonical encoding its new blocks use (docs/design.md 1)
    magic_length: ClassVar[int]  # how many leading bytes ``recognises`` needs
    forwarded: ClassVar[bool] = False  # whether DICOM peers (the --forward PACS) take its items

    @abstractmethod
    def recognises(self, head: bytes) -> bool:
        """Whether ``head`` (the first ``magic_length`` bytes, or fewer for a short file) is ours."""

    @abstractmethod
    def open(self, data: bytes) -> Carried:
        """Parse a whole file; NotDicomError (or the carrier's subclass of it) when it does not parse."""

    def open_stored(self, path: Path) -> Carried:
        """A stored file, parsed as ``open`` parses bytes; a carrier that can leave large values on
        disk (DICOM) overrides it, so that checking a large file costs no copy of it in memory."""
        return self.open(path.read_bytes())

    def confirm(self, path: Path, block: Block) -> None:
        """UnfaithfulFileError unless the file just written at ``path`` passes what ``verify``
        checks of a file: it parses, carries exactly ``block``, its content hashes to what the
        block records, and it is the item the block names. A received item can parse, hash and
        sign well and still not survive being written with its block (an element header cut
        short where the block goes, a private element of our group read as part of the block).
        Read from the file, not from the bytes handed to the store: for a large instance received
        to disk those never are in memory at once (the page cache serves the read)."""
        h = block.header
        try:
            carried = self.open_stored(path)
            found = carried.read_block()
            carried.check_content(block)
            ids = carried.identity()
        except DicomChainError as exc:
            raise UnfaithfulFileError(f"the file as stored would not verify: {exc}") from exc
        except Exception as exc:  # a parser decoding lazily may fail anywhere on garbled input
            raise UnfaithfulFileError(f"the file as stored would not read back: {exc}") from exc
        if found.to_bytes() != block.to_bytes():
            raise UnfaithfulFileError("the file as stored would carry another block than the one signed")
        if (ids.item_id, ids.group_id) != (h.item_id, h.group_id):
            raise UnfaithfulFileError("the file as stored would name another item than its block")
