"""A gateway node: its key, its ledger, its store, and the one call that chains an item.

``Node.ingest`` is what the C-STORE handler calls, with an item its carrier made from what was
received: sign, embed, write durably, record, and only then return. If any step fails, the caller
gets a named error and nothing half-written remains (the file is removed when the ledger refuses
it). The node knows no file format: carriers (``dicom_chain.carriers``) do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from dicom_chain import timing
from dicom_chain.actors import local_user
from dicom_chain.block import GENESIS_HASH, ITEM_FORMAT_VERSION, Block, BlockHeader, Origin, utc_now
from dicom_chain.carriers.base import Identity, Item
from dicom_chain.carriers.registry import open_file
from dicom_chain.config import Settings
from dicom_chain.db import owners
from dicom_chain.db.database import Database
from dicom_chain.errors import (
    ContentHashError,
    DicomChainError,
    MalformedBlockError,
    NoBlockError,
    NotDicomError,
    NoteError,
    PathTakenError,
    SignatureError,
    VersionRefused,
)
from dicom_chain.events import EventDraft
from dicom_chain.intents import Intents
from dicom_chain.journal import journal_folder
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger
from dicom_chain.outbox import Destination, Outbox
from dicom_chain.qr.index import IndexRecord
from dicom_chain.qr.indexqueue import Entry as IndexEntry
from dicom_chain.qr.indexqueue import IndexQueue
from dicom_chain.receipt import Receipt, Receipts
from dicom_chain.sharing.policy import SharingPolicy
from dicom_chain.sharing.registry import Institution, Registry
from dicom_chain.sharing.service import adopt_policy, record_fault
from dicom_chain.storage import PendingWrite, Spares, Storage, relative_path
from dicom_chain.tlog import note
from dicom_chain.tlog.checkpoint import Checkpoint
from dicom_chain.versions import versions_of
from dicom_chain.vocab import EventType, IngestOutcome, Outcome

log = logging.getLogger("dicom_chain.node")
# Checkpoints carried by releases already judged, kept in memory: a study's instances all carry
# the same one, and judging it again would only ask the database what it just answered.
JUDGED_KEPT = 64


@dataclass(frozen=True)
class Sender:
    """A registered institution whose block an incoming item carries, checked (docs/design.md 10.6)."""

    institution: Institution
    block: Block


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    block: Block
    path: Path
    version: int
    anomalies: tuple[str, ...] = ()  # stored as received, not conforming: a DICOM sender gets a warning


class Node:
    def __init__(self, settings: Settings, key: NodeKey, ledger: Ledger, storage: Storage) -> None:
        self.settings = settings
        self.key = key
        self.ledger = ledger
        self.db = ledger.db
        self.storage = storage
        self.chain_id = ledger.ensure_chain(key, settings.institution)
        self.destinations = [str(Destination.parse(d)) for d in settings.forward]
        self.sharing = SharingPolicy.of(Destination.parse(text) for text in settings.move_destinations)
        # the release rules in force; a new one is recorded (policy.changed) before it decides anything
        self.policy = adopt_policy(ledger, key, settings.policy, local_user())
        self.outbox = Outbox(ledger, key, settings.forward_max_refusals)
        self.locks = owners.lock_folder(storage.root)  # liveness locks of this node's processes
        self.outbox.locks = self.locks
        self.intents = Intents(self.db, self.locks, journal_folder(storage.root))
        self.receipts = Receipts(ledger, self.outbox, self.intents, storage)
        self.index_queue = IndexQueue(self.db, key)
        self._judged: set[str] = set()  # checkpoints carried by releases, judged (_judge_checkpoint)

    @classmethod
    def open(cls, settings: Settings) -> Node:
        key = NodeKey.load_or_create(settings.key_path)
        node = cls(settings, key, Ledger(Database(settings.db_url)), Storage(settings.storage_dir))
        owners.hold_lock(node.locks)  # before this process notes any intent or takes any lease
        node.recover()
        node.index_queue.repair(node.storage)  # blocks a killed process committed, never indexed
        owners.sweep_locks(node.locks, keep=node.intents.owners())
        return node

    def recover(self) -> list[str]:
        """Undo writes a killed process left between renaming a file and committing its block
        (receipt.py); returns the files removed, each also a ``storage.recovered`` event."""
        return self.receipts.recover(self.key, self.chain_id)

    def restore_names(self, spool_folder: Path) -> list[str]:
        """Before a dead process's spool folder goes: stored files whose names a power cut took,
        linked back in from the spares it holds (receipt.py); returns the paths restored."""
        return self.receipts.restore_names(self.key, self.chain_id, Spares.leftovers(spool_folder))

    def close(self) -> None:
        self.index_queue.close()
        self.intents.flush()
        self.db.close()
        owners.release_lock(self.locks)

    def record(self, draft: EventDraft) -> None:
        self.ledger.record(self.key, draft)

    def ingest_file(self, path: Path, actor: str = "") -> IngestResult:
        """A file from disk, in any format a carrier reads (its bytes are kept as they are)."""
        try:
            carried = open_file(path)
        except OSError as exc:
            raise NotDicomError(f"{path}: cannot read ({exc.strerror})") from exc
        return self.ingest(carried.item(), actor=actor)

    def ingest(
        self, item: Item, actor: str = "", *, may_correct: bool = True, peer: str = ""
    ) -> IngestResult:
        """Chain and store one item; idempotent per content. An item carrying a registered
        institution's block is checked first (``sender``) and chained with a link to that block.

        Different content under a known item id is a new version, made only by the original's
        sender or, with ``may_correct`` (the ``correct`` permission; local callers have it), by
        anyone: otherwise ``VersionRefused``, recorded as ``instance.refused``, nothing stored.
        ``peer`` is the sender's network address (the audit's NetworkAccessPointID), if it has one."""
        try:
            return self._ingest(item, actor, may_correct, peer)
        except VersionRefused as exc:
            details = {"sop_instance_uid": item.identity.item_id, "content_hash": item.content_hash}
            if peer:
                details["peer"] = peer
            self.record(
                self._item_event(
                    EventType.INSTANCE_REFUSED, item.identity, actor, str(exc), details, Outcome.MINOR_FAILURE
                )
            )
            raise

    def _ingest(self, item: Item, actor: str, may_correct: bool, peer: str = "") -> IngestResult:
        ids = item.identity
        digest = item.content_hash
        # taken out first: the block is read strictly (nothing unsigned in it), and ours replaces it
        carried = item.carried.take_sender_checkpoint()
        sender = self.sender(item, actor)
        timing.mark("sender")
        # Before the lock (CPU), so a carrier that cannot give them fails before anything is kept;
        # formats without a query model are not in the index.
        values = item.index_values()
        record = None if values is None else IndexRecord.from_values(values, ids.encoding)
        timing.mark("index.values")
        written: str | None = None
        pending: PendingWrite | None = None
        try:
            with self.receipts.open(self.chain_id, ids) as tx:
                timing.mark("db.begin")
                latest = tx.latest_version(ids.item_id)
                if latest is not None and item.same_content(latest.block):
                    outcome = IngestOutcome.DUPLICATE
                    if not self.storage.exists(latest.path):  # the ledger has it, the disk lost it
                        self._write_confirmed(latest.path, item, latest.block).wait()
                        outcome = IngestOutcome.RESTORED
                    tx.add_event(
                        self.key,
                        self._receipt(
                            ids, latest.block, latest.version, actor, outcome, peer, item.anomalies
                        ),
                    )
                    return IngestResult(
                        outcome, latest.block, self.storage.path(latest.path), latest.version, item.anomalies
                    )
                if latest is not None and not may_correct:
                    self._may_version(tx.appender.session, ids.item_id, actor)
                version = latest.version + 1 if latest else 1
                study_head = tx.study_head(ids.group_id)
                timing.mark("db.select")
                origin = None
                if sender is not None:  # format 2 carries the link (2.4, 10.6); DICOM says so by name
                    origin = Origin(sender.institution.name, sender.block.header.key_id, sender.block.hash)
                header = BlockHeader(
                    version=item.carrier.block_format if origin is None else ITEM_FORMAT_VERSION,
                    chain_id=self.chain_id,
                    height=tx.head_height + 1,
                    prev_hash=tx.head_hash,
                    content_hash=digest,
                    canonical=item.canonical,
                    attributes_hash=item.attributes_hash,
                    timestamp=utc_now(),
                    institution=self.settings.institution,
                    key_id=self.key.key_id,
                    sop_instance_uid=ids.item_id,
                    study_instance_uid=ids.group_id,
                    study_index=study_head[0] + 1 if study_head else 0,
                    study_prev_hash=study_head[1] if study_head else GENESIS_HASH,
                    carrier=item.carrier.name,
                    origin=origin,
                )
                block = Block.sign(header, self.key)
                timing.mark("sign")
                rel = relative_path(
                    ids.group_id, ids.series_id, ids.item_id, version, suffix=item.carrier.suffix
                )
                pending = self._write_new(tx, rel, item, block)
                timing.mark("confirm")
                written = rel
                tx.add_block(
                    block,
                    path=rel,
                    version=version,
                    sop_class_uid=ids.item_class,
                    series_instance_uid=ids.series_id,
                )
                timing.mark("db.block")
                tx.enqueue(
                    self.destinations if item.carrier.forwarded else [],
                    block,
                    path=rel,
                    sop_class_uid=ids.item_class,
                    transfer_syntax=ids.encoding,
                    patient_id=ids.patient_id,
                )
                timing.mark("db.enqueue")
                outcome = IngestOutcome.STORED if version == 1 else IngestOutcome.NEW_VERSION
                tx.add_event(
                    self.key, self._receipt(ids, block, version, actor, outcome, peer, item.anomalies)
                )
                timing.mark("db.event")
                if sender is not None:
                    tx.add_origin(block, sender.institution.name, sender.block)
                    tx.add_event(self.key, self._release_received(ids, block, sender, actor))
                pending.wait()  # the file durable at its name before the ledger commits to it
            written = None  # committed: the file is the ledger's now
            timing.mark("db.commit")
            if record is not None:  # after the commit, off the response's path (indexqueue.py)
                self.index_queue.put(IndexEntry(record, block, rel, version, actor))
                timing.mark("index.queue")
            if sender is not None and carried:
                self._judge_checkpoint(carried, sender, actor)
            return IngestResult(outcome, block, self.storage.path(rel), version, item.anomalies)
        finally:
            if written is not None and pending is not None:
                pending.abandon()
            elif written is not None:
                self.storage.remove(written)

    def _write_confirmed(self, rel: str, item: Item, block: Block) -> PendingWrite:
        """Write the item's file with its block, then read it back as ``verify`` would (the
        carrier's ``confirm_written``): Success is never said of a file the node could not vouch
        for. A file that fails is removed before anything commits (UnfaithfulFileError, C000). The
        disk writes it meanwhile (Storage.start_write): ``wait`` before the commit."""
        pending = self.storage.start_write(rel, item.with_block(block))
        try:
            item.confirm_written(pending.written_at, block)
        except BaseException:
            pending.abandon()
            raise
        return pending

    def _write_new(self, tx: Receipt, rel: str, item: Item, block: Block) -> PendingWrite:
        """Write a new version's file, never over another. Names are injective, so a file already
        there is one no block names (a receipt that never committed: removed, as recovery would,
        while this receipt holds the chain's lock) or one an older naming rule gave another item:
        then PathTakenError, and it stays."""
        try:
            return self._write_confirmed(rel, item, block)
        except PathTakenError:
            if self.ledger.has_file(tx.session, rel):
                raise
            self.storage.remove(rel)
            return self._write_confirmed(rel, item, block)

    def _may_version(self, session: Session, item_id: str, actor: str) -> None:
        """Read under the chain lock, so that two senders racing for version 2 are judged in turn."""
        versions = versions_of(session, self.chain_id, item_id)
        original = versions[0].sender if versions else ""
        if actor.strip() != original:
            made = f"sent by {original}" if original else "its sender unknown"
            raise VersionRefused(f"new version refused: original {made}; needs it or 'correct'")

    def sender(self, item: Item, actor: str) -> Sender | None:
        """The registered institution whose block ``item`` carries, once that block is checked: signed
        by the institution's registered key (pinned) and recording the item's content hash. A failed
        check is recorded (``release.refused``, naming the sender) and raised as the sender's fault,
        so the item is refused and nothing is kept. Items with no block, a garbled one, or one whose
        key is no registered institution's are not anyone's release: their blocks are replaced."""
        try:
            block = item.carried.read_block()
        except (NoBlockError, MalformedBlockError):
            return None
        institution = Registry(self.ledger, None).by_key_id(block.header.key_id)
        if institution is None:
            return None
        try:
            block.verify_signature(frozenset({institution.public_key}))
            if not item.same_content(block):
                raise ContentHashError("content differs from what its block recorded (altered on the way)")
        except DicomChainError as exc:
            reason = f"block from {institution.name} refused: {exc}"
            refused = self._release_refused(item.identity, block, institution, actor, reason)
            record_fault(self, refused, institution.name)
            if isinstance(exc, SignatureError):
                raise SignatureError(reason) from exc
            raise ContentHashError(reason) from exc
        return Sender(institution, block)

    def _judge_checkpoint(self, carried: str, sender: Sender, actor: str) -> None:
        """A release's checkpoint (tlog/publishing.carried_request), judged as a witness would
        (tlog/witnessing.py): a log that shows us a history its earlier checkpoint does not extend
        is recorded, and its score falls. Only the sender's own log (its block's key) is judged: a
        release cannot speak for a third institution. Once per distinct checkpoint (a study's
        instances all carry the same); a garbled one harms nothing but itself, and the instance
        is kept either way: its block was checked already."""
        if carried in self._judged:
            return
        if len(self._judged) >= JUDGED_KEPT:
            self._judged.clear()
        self._judged.add(carried)
        from dicom_chain.tlog.witness import parse_request
        from dicom_chain.tlog.witnessing import ORIGIN_MARK, WitnessDesk

        name = sender.institution.name
        try:
            found = json.loads(carried)
            old_size, proof, signed = parse_request(str(found["request"]).encode("utf-8"))
            at_old = str(found.get("old") or "")
            origin = Checkpoint.parse(note.parse(signed)[0]).origin
        except (NoteError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("checkpoint carried by a release from %s unreadable: %s", name, exc)
            return
        if not origin.startswith(sender.block.header.key_id + ORIGIN_MARK):
            log.warning("a release from %s carried another log's checkpoint (%s): ignored", name, origin)
            return
        judged = WitnessDesk(self).add_checkpoint(
            old_size, proof, signed, actor=actor, at_old=lambda _log, _size: at_old or None
        )
        if judged.outcome.kind != "cosigned":
            log.warning("checkpoint carried by a release from %s: %s", name, judged.outcome.reason)

    def _item_event(
        self, kind: EventType, ids: Identity, actor: str, reason: str, details: dict, outcome: Outcome
    ) -> EventDraft:
        """An event about one received item: who, which patient, study and item, on our chain."""
        return EventDraft(
            type=kind,
            outcome=outcome,
            actor=actor,
            patient_id=ids.patient_id,
            study_uid=ids.group_id,
            sop_uid=ids.item_id,
            chain_id=self.chain_id,
            reason=reason,
            details=details,
        )

    def _release_refused(
        self, ids: Identity, block: Block, institution: Institution, actor: str, reason: str
    ) -> EventDraft:
        details = {
            "from": institution.name,
            "reason": reason,
            "sop_instance_uid": ids.item_id,
            "block_hash": block.hash,
        }
        return self._item_event(EventType.RELEASE_REFUSED, ids, actor, reason, details, Outcome.MAJOR_FAILURE)

    def _release_received(self, ids: Identity, block: Block, sender: Sender, actor: str) -> EventDraft:
        details = {
            "from": sender.institution.name,
            "sender_block": sender.block.hash,
            "sop_instance_uid": ids.item_id,
            "height": block.header.height,
        }
        reason = f"from {sender.institution.name}, its block verified"
        return self._item_event(EventType.RELEASE_RECEIVED, ids, actor, reason, details, Outcome.SUCCESS)

    def _receipt(
        self,
        ids: Identity,
        block: Block,
        version: int,
        actor: str,
        outcome: IngestOutcome,
        peer: str = "",
        anomalies: tuple[str, ...] = (),
    ) -> EventDraft:
        """``anomalies``, when any, go in the details: what was kept as received though it does not
        conform is on the record, not only in the sender's log."""
        details: dict = {"height": block.header.height, "block_hash": block.hash, "version": version}
        if ids.item_class:  # the audit counts a study's instances per SOP class (audit/transfers.py)
            details["sop_class"] = ids.item_class
        if peer:  # who sent it, by address: the AE title is only what the sender calls itself
            details["peer"] = peer
        if anomalies:
            details["anomalies"] = list(anomalies)
        return self._item_event(EventType.INSTANCE_RECEIVED, ids, actor, outcome, details, Outcome.SUCCESS)
