"""A gateway node: its key, its ledger, its store, and the one call that chains an instance.

``Node.ingest`` is what the C-STORE handler calls: hash, sign, embed, write durably, record,
and only then return. If any step fails, the caller gets a named error and nothing half-written
remains (the file is removed when the ledger refuses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_chain.block import FORMAT_VERSION, GENESIS_HASH, Block, BlockHeader, utc_now
from dicom_chain.carriers.dicom.canonical import content_hash
from dicom_chain.carriers.dicom.embedding import embed_block
from dicom_chain.carriers.dicom.splice import EncodedInstance, spliced
from dicom_chain.carriers.dicom.validation import check_pixel_data
from dicom_chain.config import Settings
from dicom_chain.db.database import Database
from dicom_chain.errors import MalformedDatasetError, NotDicomError
from dicom_chain.events import EventDraft
from dicom_chain.intents import Intents
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger
from dicom_chain.outbox import Destination, Outbox
from dicom_chain.qr.index import IndexRecord
from dicom_chain.qr.query import Model
from dicom_chain.qr.runs import FindRun, RetrieveRun, start_find, start_retrieve
from dicom_chain.receipt import Receipts
from dicom_chain.storage import Storage, relative_path
from dicom_chain.vocab import EventType

UID_MAX_CHARS = 64  # PS3.5 9.1

IngestOutcome = Literal["stored", "new-version", "duplicate", "restored"]


@dataclass(frozen=True)
class InstanceIds:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str

    @classmethod
    def from_dataset(cls, ds: Dataset) -> InstanceIds:
        values = {}
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
            try:
                value = ds.get(keyword)
            except Exception as exc:
                raise MalformedDatasetError(f"{keyword} cannot be decoded: {exc}") from exc
            text = str(value).strip(" \x00") if value is not None else ""
            if not text:
                raise MalformedDatasetError(f"dataset has no {keyword}")
            if len(text) > UID_MAX_CHARS:
                raise MalformedDatasetError(f"{keyword} is longer than {UID_MAX_CHARS} characters")
            values[keyword] = text
        try:
            patient_id = str(ds.get("PatientID", "") or "")
        except Exception:
            patient_id = ""
        return cls(
            values["SOPInstanceUID"],
            values["SOPClassUID"],
            values["StudyInstanceUID"],
            values["SeriesInstanceUID"],
            patient_id,
        )


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    block: Block
    path: Path
    version: int


def read_dataset(path: Path) -> Dataset:
    """A Part 10 file, or NotDicomError naming it."""
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise NotDicomError(f"{path}: not a readable DICOM file ({exc})") from exc
    except IsADirectoryError as exc:
        raise NotDicomError(f"{path}: is a directory") from exc


class Node:
    def __init__(self, settings: Settings, key: NodeKey, ledger: Ledger, storage: Storage) -> None:
        self.settings = settings
        self.key = key
        self.ledger = ledger
        self.db = ledger.db
        self.storage = storage
        self.chain_id = ledger.ensure_chain(key, settings.institution)
        self.destinations = [str(Destination.parse(d)) for d in settings.forward]
        self.move_destinations = {
            d.ae_title: d for d in (Destination.parse(text) for text in settings.move_destinations)
        }
        self.outbox = Outbox(ledger, key)
        self.intents = Intents(self.db)
        self.receipts = Receipts(ledger, self.outbox, self.intents, storage)

    @classmethod
    def open(cls, settings: Settings) -> Node:
        key = NodeKey.load_or_create(settings.key_path)
        node = cls(settings, key, Ledger(Database(settings.db_url)), Storage(settings.storage_dir))
        node.recover()
        return node

    def recover(self) -> list[str]:
        """Undo writes a killed process left between renaming a file and committing its block
        (receipt.py); returns the files removed, each also a ``storage.recovered`` event."""
        return self.receipts.recover(self.key, self.chain_id)

    def close(self) -> None:
        self.intents.flush()
        self.db.close()

    def record(self, draft: EventDraft) -> None:
        self.ledger.record(self.key, draft)

    def ingest_file(self, path: Path, actor: str = "") -> IngestResult:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise NotDicomError(f"{path}: cannot read ({exc.strerror})") from exc
        try:
            ds, encoded = EncodedInstance.from_part10(data)
        except NotDicomError as exc:
            raise NotDicomError(f"{path}: {exc}") from exc
        return self.ingest(ds, actor=actor, encoded=encoded)

    def ingest(self, ds: Dataset, actor: str = "", encoded: EncodedInstance | None = None) -> IngestResult:
        """Chain and store one instance; idempotent per content.

        With ``encoded`` (the bytes ``ds`` was parsed from) the file is those bytes plus our block;
        without, pydicom writes ``ds``, which then carries our block.
        """
        digest = content_hash(ds)  # first, while every element is still raw (decoding costs)
        ids = InstanceIds.from_dataset(ds)
        check_pixel_data(ds)
        written: str | None = None
        try:
            with self.receipts.open(self.chain_id, ids) as tx:
                latest = tx.latest_version(ids.sop_instance_uid)
                if latest is not None and latest.block.header.content_hash == digest:
                    outcome: IngestOutcome = "duplicate"
                    if not self.storage.exists(latest.path):
                        embed_block(ds, latest.block)  # the ledger has it, the disk lost it: put it back
                        self.storage.write(ds, latest.path)
                        outcome = "restored"
                    tx.add_event(self.key, self._receipt(ids, latest.block, latest.version, actor, outcome))
                    return IngestResult(outcome, latest.block, self.storage.path(latest.path), latest.version)
                version = latest.version + 1 if latest else 1
                study_head = tx.study_head(ids.study_instance_uid)
                header = BlockHeader(
                    version=FORMAT_VERSION,
                    chain_id=self.chain_id,
                    height=tx.head_height + 1,
                    prev_hash=tx.head_hash,
                    content_hash=digest,
                    timestamp=utc_now(),
                    institution=self.settings.institution,
                    key_id=self.key.key_id,
                    sop_instance_uid=ids.sop_instance_uid,
                    study_instance_uid=ids.study_instance_uid,
                    study_index=study_head[0] + 1 if study_head else 0,
                    study_prev_hash=study_head[1] if study_head else GENESIS_HASH,
                )
                block = Block.sign(header, self.key)
                rel = relative_path(
                    ids.study_instance_uid, ids.series_instance_uid, ids.sop_instance_uid, version
                )
                pieces = spliced(ds, encoded, block) if encoded is not None else None
                written = rel
                if pieces is not None:
                    self.storage.write_pieces(rel, pieces)
                else:
                    embed_block(ds, block)
                    self.storage.write(ds, rel)
                tx.add_block(
                    block,
                    path=rel,
                    version=version,
                    sop_class_uid=ids.sop_class_uid,
                    series_instance_uid=ids.series_instance_uid,
                )
                transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
                tx.enqueue(
                    self.destinations,
                    block,
                    path=rel,
                    sop_class_uid=ids.sop_class_uid,
                    transfer_syntax=transfer_syntax,
                    patient_id=ids.patient_id,
                )
                tx.add_to_index(
                    IndexRecord.from_dataset(ds, transfer_syntax), block, path=rel, version=version
                )
                outcome = "stored" if version == 1 else "new-version"
                tx.add_event(self.key, self._receipt(ids, block, version, actor, outcome))
            written = None  # committed: the file is the ledger's now
            return IngestResult(outcome, block, self.storage.path(rel), version)
        finally:
            if written is not None:
                self.storage.remove(written)

    def find(self, identifier: Dataset, model: Model, actor: str, retrieve_ae_title: str) -> FindRun:
        """A C-FIND over the index; IdentifierError / MalformedDatasetError before anything runs."""
        return start_find(self, identifier, model, actor, retrieve_ae_title)

    def retrieve(
        self, identifier: Dataset, model: Model, kind: Literal["move", "get"], actor: str, destination: str
    ) -> RetrieveRun:
        """A C-MOVE or C-GET: call ``plan()`` for the instances, ``sent`` per sub-operation, ``finish``."""
        return start_retrieve(self, identifier, model, kind, actor, destination)

    def _receipt(
        self, ids: InstanceIds, block: Block, version: int, actor: str, outcome: IngestOutcome
    ) -> EventDraft:
        return EventDraft(
            type=EventType.INSTANCE_RECEIVED,
            actor=actor,
            patient_id=ids.patient_id,
            study_uid=ids.study_instance_uid,
            sop_uid=ids.sop_instance_uid,
            chain_id=self.chain_id,
            reason=outcome,
            details={"height": block.header.height, "block_hash": block.hash, "version": version},
        )
