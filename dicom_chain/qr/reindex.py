"""Rebuild the Query/Retrieve index from the stored files the ledger knows.

For a ledger that predates the index, or an index that was lost or doubted. The newest version
of every instance is read from disk and checked against its block on the way, so the index's
verification state is fresh; an instance whose file is gone stays out of the index (a C-MOVE
could not send it) and is counted. A patient-identity conflict the rebuild meets that the ledger
has no event for (the ledger predates them) is recorded then, once; those it has are not again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from dicom_chain.actors import local_user
from dicom_chain.block import utc_now
from dicom_chain.carriers.registry import open_file
from dicom_chain.db.database import Database
from dicom_chain.errors import DicomChainError
from dicom_chain.events import EventDraft
from dicom_chain.findings import Report
from dicom_chain.ledger import Ledger, StoredBlock
from dicom_chain.qr import index
from dicom_chain.storage import Storage
from dicom_chain.verify import check_file
from dicom_chain.vocab import EventType, VerificationState

WRITE_BATCH = 500  # instances per transaction: a long rebuild never holds the writer lock for long


class ReindexHost(Protocol):
    """What a rebuild needs of the node (a ``Node`` is one): its ledger, database and store."""

    @property
    def ledger(self) -> Ledger: ...
    @property
    def db(self) -> Database: ...
    @property
    def storage(self) -> Storage: ...
    def record(self, draft: EventDraft) -> None: ...


@dataclass
class ReindexReport:
    indexed: int = 0
    altered: list[str] = field(default_factory=list)  # no longer matches its block (indexed if readable)
    missing: list[str] = field(default_factory=list)  # not indexed: the file is gone
    conflicts: list[index.IdentityConflict] = field(default_factory=list)  # recorded by this rebuild


def latest_versions(node: ReindexHost) -> list[StoredBlock]:
    """The newest stored version of every SOP Instance UID, across every chain in the ledger."""
    newest: dict[str, StoredBlock] = {}
    for chain in node.ledger.chains():
        for _height, stored in node.ledger.iter_blocks(chain.chain_id):
            if isinstance(stored, str):
                continue  # an undecodable row: verify reports it
            sop = stored.block.header.sop_instance_uid
            current = newest.get(sop)
            if current is None or (stored.block.header.timestamp, stored.version) > (
                current.block.header.timestamp,
                current.version,
            ):
                newest[sop] = stored
    return sorted(newest.values(), key=lambda s: (s.block.header.chain_id, s.block.header.height))


def reindex(node: ReindexHost, advance: Callable[[int], None] = lambda _: None) -> ReindexReport:
    report = ReindexReport()
    index.before_read(node.db)  # rows still pending here go in first, not over the rebuilt ones
    todo = latest_versions(node)
    recorded = {
        index.recorded_identity(e) for e in node.ledger.events_of_types([EventType.PATIENT_IDENTITY_CONFLICT])
    }
    unrecorded: list[tuple[index.IdentityConflict, str]] = []
    with node.db.writing() as session:
        index.clear(session)
    for start in range(0, len(todo), WRITE_BATCH):
        with node.db.writing() as session:
            for stored in todo[start : start + WRITE_BATCH]:
                path = node.storage.path(stored.path)
                advance(1)
                if not path.is_file():
                    report.missing.append(stored.path)
                    continue
                findings = Report()
                found = check_file(path, findings, None)
                intact = found is not None and found.to_bytes() == stored.block.to_bytes() and findings.ok
                try:
                    carried = open_file(path)
                    values = carried.index_values()
                    encoding = carried.identity().encoding
                except (OSError, DicomChainError):
                    values = None
                if values is None:
                    report.altered.append(stored.path)  # nothing left to index it by
                    continue
                conflicts = index.write(
                    session,
                    index.IndexRecord.from_values(values, encoding),
                    block=stored.block,
                    path=stored.path,
                    version=stored.version,
                    verification=VerificationState.VERIFIED if intact else VerificationState.ALTERED,
                    verified_at=utc_now(),
                )
                report.indexed += 1
                unrecorded += [
                    (c, stored.block.header.chain_id) for c in conflicts if c.identity not in recorded
                ]
                if not intact:
                    report.altered.append(stored.path)
    actor = local_user()
    for conflict, chain_id in unrecorded:
        node.record(conflict.draft(chain_id, actor))
        report.conflicts.append(conflict)
    return report
