"""The receipt of one instance as one unit of work: block, event and forward queue rows in one
transaction, guarded by a write intent noted just before it. The query index rows are derived
and follow after the response (qr/indexqueue.py).

``Receipts.open`` is what ``Node.ingest`` opens (``with ... as tx``); the ``Receipt`` it yields
composes the ledger's appender (head, blocks, events) and the outbox, each of which owns its rows.
``Receipts.recover`` undoes what receipts of dead processes left behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session

from dicom_chain import timing
from dicom_chain.block import Block
from dicom_chain.carriers import registry
from dicom_chain.db.models import OriginBlockRow
from dicom_chain.errors import DicomChainError
from dicom_chain.events import Event, EventDraft
from dicom_chain.intents import Intents
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Appender, Ledger, StoredBlock, append_event
from dicom_chain.outbox import Outbox
from dicom_chain.storage import Storage
from dicom_chain.vocab import EventType


class ItemNames(Protocol):
    """What names an item's files in the store (a carrier's ``Identity`` has it)."""

    @property
    def group_id(self) -> str: ...
    @property
    def series_id(self) -> str: ...
    @property
    def item_id(self) -> str: ...


class Receipt:
    """One open receipt transaction; the chain's head is locked until it ends."""

    def __init__(self, appender: Appender, outbox: Outbox) -> None:
        self.appender = appender
        self.outbox = outbox

    @property
    def session(self) -> Session:
        """An ORM session in the receipt's transaction, made only when first asked (rarely)."""
        return self.appender.session

    @property
    def head_height(self) -> int:
        return self.appender.head_height

    @property
    def head_hash(self) -> str:
        return self.appender.head_hash

    def latest_version(self, sop_instance_uid: str) -> StoredBlock | None:
        return self.appender.latest_version(sop_instance_uid)

    def study_head(self, study_instance_uid: str) -> tuple[int, str] | None:
        return self.appender.study_head(study_instance_uid)

    def add_block(
        self, block: Block, *, path: str, version: int, sop_class_uid: str, series_instance_uid: str
    ) -> None:
        self.appender.add_block(
            block,
            path=path,
            version=version,
            sop_class_uid=sop_class_uid,
            series_instance_uid=series_instance_uid,
        )

    def add_origin(self, block: Block, institution: str, sender_block: Block) -> None:
        """Keep the sender's block of a received item beside our block that names it (10.6)."""
        self.session.add(
            OriginBlockRow(
                block_hash=block.hash,
                institution=institution,
                sender_block_hash=sender_block.hash,
                block=sender_block.to_bytes().decode("utf-8"),
            )
        )

    def add_event(self, key: NodeKey, draft: EventDraft) -> Event:
        return self.appender.add_event(key, draft)

    def enqueue(
        self,
        destinations: Iterable[str],
        block: Block,
        *,
        path: str,
        sop_class_uid: str,
        transfer_syntax: str,
        patient_id: str,
    ) -> None:
        self.outbox.enqueue(
            None,
            destinations,
            block,
            path=path,
            sop_class_uid=sop_class_uid,
            transfer_syntax=transfer_syntax,
            patient_id=patient_id,
            cursor=self.appender.cursor,
        )


class Receipts:
    def __init__(self, ledger: Ledger, outbox: Outbox, intents: Intents, storage: Storage) -> None:
        self.ledger = ledger
        self.outbox = outbox
        self.intents = intents
        self.storage = storage

    @contextmanager
    def open(self, chain_id: str, ids: ItemNames) -> Iterator[Receipt]:
        """Note the intent (in this process's journal), then lock the chain for the receipt;
        commits on exit, then forgets the intent; on any exception rolls back, and first removes
        the uncommitted files the intent covers while the chain is still locked."""
        folder, stem = self.storage.covering(ids.group_id, ids.series_id, ids.item_id)
        intent = self.intents.note(folder, stem)
        timing.mark("intent")
        try:
            with self.ledger.append(chain_id) as appender:
                try:
                    yield Receipt(appender, self.outbox)
                except BaseException:
                    self._undo(folder, stem)
                    raise
        except BaseException:
            self.intents.failed(intent)
            raise
        self.intents.done(intent)

    def _undo(self, folder: str, stem: str) -> None:
        """Remove the files of a failing receipt that no block names: no other writer can be
        between its file and its commit while this one holds the lock, so they are this one's.
        Read on another connection, which sees what is committed, not this transaction's rows."""
        try:
            with self.ledger.db.reading() as session:
                leftovers = [
                    p for p in self.storage.versions(folder, stem) if not self.ledger.has_file(session, p)
                ]
        except DicomChainError:
            return  # the ledger cannot tell now: the caller removes the file it wrote
        for relative in leftovers:
            self.storage.remove(relative)

    def restore_names(self, key: NodeKey, chain_id: str, spares: Iterable[Path]) -> list[str]:
        """Link back in the stored files whose names a power cut took before their folders were
        synced (storage.PendingWrite.wait), from the spares a dead process left holding them
        (``Spares.leftovers``): each that carries a block the ledger has, whose file is missing at
        the path the ledger names, and that passes what ``verify`` checks of it. Each restored name
        is a ``storage.recovered`` event. A spare whose block never committed is left for its
        folder's removal. Raises if the ledger cannot be read: the caller keeps the folder then."""
        restored = []
        for spare in spares:
            try:
                carrier = registry.carrier_for(spare)
                block = carrier.open_stored(spare).read_block()
            except (OSError, DicomChainError):
                continue  # not a file any receipt finished writing
            with self.ledger.db.writing() as session:
                relative = self.ledger.path_of_block(session, block.hash)
                if relative is None or self.storage.exists(relative):
                    continue
                try:
                    carrier.confirm(spare, block)
                except DicomChainError:
                    continue
                if not self.storage.link_in(spare, relative):
                    continue
                restored.append(relative)
                append_event(
                    session,
                    key,
                    EventDraft(
                        EventType.STORAGE_RECOVERED,
                        chain_id=chain_id,
                        reason="stored file's name lost before its folder reached the disk; linked back in",
                        details={"path": relative, "block_hash": block.hash},
                    ),
                )
        return restored

    def recover(self, key: NodeKey, chain_id: str) -> list[str]:
        """Undo writes that processes now dead left between renaming a file and committing its
        block (their senders got no Success and will send again); a file whose block committed
        stays. One transaction with every chain locked, so no live writer's file can be taken for
        a leftover; each removal is a ``storage.recovered`` event, and the intents go (the journals
        read, once committed)."""
        abandoned = self.intents.abandoned()
        if not abandoned:
            return []
        removed = []
        with self.ledger.db.writing() as session:
            self.ledger.lock_heads(session)
            for intent in abandoned:
                if not intent.item:  # an empty journal: nothing to undo
                    continue
                for relative in self.storage.versions(intent.folder, intent.item):
                    if self.ledger.has_file(session, relative):
                        continue
                    self.storage.remove(relative)
                    removed.append(relative)
                    append_event(
                        session,
                        key,
                        EventDraft(
                            EventType.STORAGE_RECOVERED,
                            chain_id=chain_id,
                            reason="file written but never committed (process died); removed",
                            details={"path": relative},
                        ),
                    )
            self.intents.remove(session, abandoned)
        self.intents.retire(abandoned)
        return removed
