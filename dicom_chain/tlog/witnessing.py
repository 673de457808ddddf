"""This node as a witness of the institutions it shares with: the pure witness (tlog/witness.py)
with its state in the database and its findings on the ledger.

The logs watched are the registered institutions': an origin ``<key ID>.dicom-chain/<name>``
names its key by ID, and the registry holds that key (the name after the slash is the log's own
choice, so it is not what we match on). What was last cosigned of each is a row
(``witnessed_logs``), read and replaced in the transaction that judges the next checkpoint, so two
requests at once cannot both advance it (c2sp.org/tlog-witness asks for that atomicity). A split
view is a ``log.split-view`` event naming the institution, with both signed checkpoints and the
proof offered as evidence; the policy's effect on the institution's score follows in the same
transaction. It is recorded once per state it departs from: a log that keeps offering checkpoints
that cannot extend what it showed is one fault, not one per request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from dicom_chain.block import utc_now
from dicom_chain.db.database import Database
from dicom_chain.db.models import WitnessedLogRow
from dicom_chain.errors import NoteError
from dicom_chain.events import EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger
from dicom_chain.sharing.policyfile import Policy
from dicom_chain.sharing.registry import Institution, Registry
from dicom_chain.sharing.service import record_fault
from dicom_chain.tlog import merkle, note
from dicom_chain.tlog.checkpoint import Checkpoint
from dicom_chain.tlog.witness import Outcome, Seen, Witness
from dicom_chain.vocab import EventType
from dicom_chain.vocab import Outcome as EventOutcome

ORIGIN_MARK = ".dicom-chain/"  # between the key ID and the name in our logs' origins (tlog/checkpoint.py)


def witness_name(key_id: str) -> str:
    """The name a node cosigns under: derived from its key alone, so the log it cosigns can find
    the witness's key in its own registry whatever either calls the other."""
    return f"{key_id}{ORIGIN_MARK}witness"


class WitnessHost(Protocol):
    """What the desk needs of a node (``node.Node`` is one)."""

    ledger: Ledger
    key: NodeKey
    db: Database
    policy: Policy


class RegisteredLogs(Mapping[str, bytes]):
    """Origin -> public key of every registered institution, found by the key ID the origin starts with."""

    def __init__(self, institutions: list[Institution]) -> None:
        self.by_key_id = {i.key_id: i for i in institutions if i.active}

    def institution(self, origin: str) -> Institution | None:
        key_id, mark, _ = origin.partition(ORIGIN_MARK)
        return self.by_key_id.get(key_id) if mark else None

    def __getitem__(self, origin: str) -> bytes:
        found = self.institution(origin)
        if found is None:
            raise KeyError(origin)
        return found.public_key

    def __iter__(self) -> Iterator[str]:
        return iter(f"{k}{ORIGIN_MARK}{i.name}" for k, i in self.by_key_id.items())

    def __len__(self) -> int:
        return len(self.by_key_id)


@dataclass(frozen=True)
class Judged:
    outcome: Outcome
    institution: str = ""  # whose log, by our registry's name ("" when not one we know)
    event_seq: int = 0  # the log.split-view event recorded, if this request caused one
    log: Institution | None = None


# Fetches a log's own signed checkpoint at a size (the edge's, over the log's API; or what a
# release carried): None when it cannot be had.
AtOld = Callable[[Institution, int], str | None]


class WitnessDesk:
    def __init__(self, host: WitnessHost) -> None:
        self.host = host

    @property
    def name(self) -> str:
        return witness_name(self.host.key.key_id)

    def seen(self, origin: str) -> Seen | None:
        with self.host.db.reading() as session:
            row = session.get(WitnessedLogRow, log_id(origin))
            return Seen(row.size, row.root, row.signed) if row is not None and row.signed else None

    def add_checkpoint(
        self,
        old_size: int,
        proof: list[bytes],
        signed: str,
        *,
        actor: str,
        at_old: AtOld | None = None,
    ) -> Judged:
        """Judge a checkpoint offered with a consistency proof from ``old_size`` (c2sp.org/tlog-
        witness add-checkpoint); cosigned, the new state is kept; a split view is recorded.

        ``at_old`` fetches the log's own signed checkpoint at a size (tlog/witness.py says why):
        asked only when a proof failed, and outside the transaction, since it may wait on the
        network; the checkpoint is then judged again, in a new one, with that answer."""
        judged, last = self._judge(old_size, proof, signed, actor, None)
        if judged.outcome.kind != "bad-proof" or at_old is None or last is None or judged.log is None:
            return judged
        again = at_old(judged.log, last)
        if not again:
            return judged
        return self._judge(old_size, proof, signed, actor, lambda size: again if size == last else None)[0]

    def _judge(
        self,
        old_size: int,
        proof: list[bytes],
        signed: str,
        actor: str,
        at_old: Callable[[int], str | None] | None,
    ) -> tuple[Judged, int | None]:
        """The judgement, and the size the witness had cosigned (None: nothing yet)."""
        logs = RegisteredLogs(Registry(self.host.ledger, None).all())
        witness = Witness(self.name, self.host.key, logs)
        origin = _origin(signed)
        institution = logs.institution(origin) if origin else None
        with self.host.db.writing() as session:
            row = _locked(session, log_id(origin), institution.name) if institution is not None else None
            seen = Seen(row.size, row.root, row.signed) if row is not None and row.signed else None
            outcome = witness.add_checkpoint(seen, old_size, proof, signed, int(time.time()), at_old)
            judged = Judged(outcome, institution.name if institution else "", log=institution)
            if outcome.kind == "cosigned" and outcome.seen is not None and row is not None:
                _keep(row, outcome.seen)
            elif outcome.kind == "split-view" and institution is not None and seen is not None:
                seq = self._split_view(session, institution.name, origin, seen, signed, outcome, actor)
                judged = Judged(outcome, institution.name, seq, institution)
        return judged, (seen.size if seen is not None else None)

    def _split_view(
        self,
        session: Session,
        institution: str,
        origin: str,
        seen: Seen,
        offered: str,
        outcome: Outcome,
        actor: str,
    ) -> int:
        departed = _departure(log_id(origin), seen)
        for earlier in self.host.ledger.events_of_types([EventType.LOG_SPLIT_VIEW]):
            if earlier.details.get("departs_from") == departed:
                return 0  # already on the record: one fault per state the log departs from
        assert outcome.evidence is not None
        draft = EventDraft(
            type=EventType.LOG_SPLIT_VIEW,
            outcome=EventOutcome.MAJOR_FAILURE,
            actor=actor,
            reason=f"{institution}: {outcome.reason}",
            details={
                "institution": institution,
                "origin": origin,
                "departs_from": departed,
                "cosigned_size": seen.size,
                # two checkpoints the log signed at one size, with two roots (log verify-proof);
                # and what it offered that could not extend the first
                "evidence": {"type": "split-view", "old": outcome.evidence[0], "new": outcome.evidence[1]},
                "offered": offered,
            },
        )
        return record_fault(self.host, draft, institution, session).seq


def log_id(origin: str) -> str:
    """The log an origin names, by its key: ``<key ID>.dicom-chain/``. The witness keeps its state
    by this, so a log cannot start afresh by signing under another name."""
    key_id, mark, _ = origin.partition(ORIGIN_MARK)
    return key_id + mark if mark else origin


def _origin(signed: str) -> str:
    try:
        text, _ = note.parse(signed)
        return Checkpoint.parse(text).origin
    except NoteError:  # the witness itself says why it is malformed
        return ""


def _departure(origin: str, seen: Seen) -> str:
    """Names the cosigned state a split view departs from (origin, size and root), for dedup."""
    return hashlib.sha256(f"{origin}\n{seen.size}\n{seen.root.hex()}".encode()).hexdigest()


def _locked(session: Session, origin: str, institution: str) -> WitnessedLogRow:
    """The log's row, locked for this transaction: made first (size 0, the empty tree, nothing
    signed) if there is none, so that two first requests at once queue on one row instead of
    both inserting it."""
    dialect = session.get_bind().dialect.name
    make = pg_insert if dialect == "postgresql" else sqlite_insert
    session.execute(
        make(WitnessedLogRow)
        .values(origin=origin, institution=institution, size=0, root=merkle.EMPTY_ROOT, signed="",
                updated_at=utc_now())
        .on_conflict_do_nothing()
    )  # fmt: skip
    stmt = select(WitnessedLogRow).where(WitnessedLogRow.origin == origin)
    if dialect == "postgresql":
        stmt = stmt.with_for_update()
    return session.scalars(stmt).one()


def _keep(row: WitnessedLogRow, seen: Seen) -> None:
    row.size, row.root, row.signed, row.updated_at = seen.size, seen.root, seen.signed, utc_now()
