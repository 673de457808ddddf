"""Write intents: "this process is about to write a file of this instance", in its journal.

An intent names the instance's folder and file stem, so it covers whichever version's file gets
written. It is appended to this process's journal (journal.py: one file per process, its owner
in its first line, db/owners.py) before the receipt's transaction, and forgotten once that
transaction ends: committed, the file is the ledger's; failed, the file is removed. No commit of
its own: it needs to survive a killed process, not a power cut, like the page cache of the file it
guards. What is left in a dead process's journal is judged by recovery (receipt.py).

Rows of the ``intents`` table are what an earlier version noted in the database: still read, and
undone the same way, so that a gateway killed before an upgrade is repaired after it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from dicom_chain import journal
from dicom_chain.db import owners
from dicom_chain.db.database import Database
from dicom_chain.db.models import IntentRow
from dicom_chain.errors import StorageError

# An intent lives for a write and a commit: seconds, two minutes at the very worst (the pool's and
# the lock's timeouts). One a day old belongs to a process that died where nobody can judge it (a
# host that is gone, an earlier boot): only then does another host, or a new boot, take it over.
INTENT_EXPIRY_S = 24 * 3600.0

INTENTS = IntentRow.__table__  # an earlier version's intents
_DROP = delete(INTENTS).where(INTENTS.c.id.in_(bindparam("ids", expanding=True)))


@dataclass(frozen=True)
class Intent:
    owner: owners.Owner
    folder: str
    item: str
    created_at: float  # for a journal's, when its last line was written
    source: int | Path  # the row id of an earlier version's, or the journal that holds it


class Intents:
    def __init__(self, db: Database, locks: Path | None = None, folder: Path | None = None) -> None:
        """``locks``: the node's liveness-lock folder (owners.py), to judge owners in another pid
        namespace on this host, such as a restarted container's PID 1. ``folder``: where the
        node's journals are (journal.journal_folder)."""
        self.db = db
        self.locks = locks
        self.folder = folder
        self.journal = journal.Journal(folder) if folder is not None else None
        self._lock = threading.Lock()
        self._stale: list[int] = []  # intents of failed receipts, forgotten with the next receipt

    def note(self, folder: str, item: str) -> int:
        """Record that this process is about to write a file of ``folder``/``item``: in the
        kernel when this returns, so a kill after it leaves it for recovery."""
        if self.journal is None:
            raise StorageError("no intent journal: this node cannot write")
        try:
            return self.journal.note(folder, item)
        except OSError as exc:
            raise StorageError(f"cannot note the write intent: {exc.strerror or exc}") from exc

    def done(self, intent: int) -> None:
        """The receipt committed: its intent, and those of receipts that failed before it, go."""
        with self._lock:
            tokens, self._stale = [intent, *self._stale], []
        self._forget(tokens)

    def failed(self, intent: int) -> None:
        """The receipt failed: its file is removed by the caller after this, so the intent stays
        until the next receipt commits (or the node closes)."""
        with self._lock:
            self._stale.append(intent)

    def _forget(self, tokens: list[int]) -> None:
        if self.journal is not None:
            with contextlib.suppress(OSError):  # cutting the journal back: tried again next time
                self.journal.done(*tokens)

    def flush(self) -> None:
        """Closing: forget failed receipts' intents and close the journal (removed when empty)."""
        with self._lock:
            tokens, self._stale = self._stale, []
        self._forget(tokens)
        if self.journal is not None:
            self.journal.close()

    def owners(self) -> set[owners.Owner]:
        """The owners of every intent there is (whose liveness locks must be kept)."""
        found = {f.owner for f in journal.read_all(self.folder)} if self.folder is not None else set()
        with self.db.reading() as session:
            rows = session.execute(select(INTENTS.c.host, INTENTS.c.boot, INTENTS.c.pid, INTENTS.c.started))
            return found | {owners.Owner(*row) for row in rows}

    def abandoned(self, now: float | None = None) -> list[Intent]:
        """Intents whose owner is judged dead from here (this host and boot), and intents past
        INTENT_EXPIRY_S whose owner cannot be judged; a living owner's are never among them."""
        now = time.time() if now is None else now
        out = []
        for found in journal.read_all(self.folder) if self.folder is not None else ():
            if self._given_up(found.owner, found.modified, now):
                at = found.modified
                out += [Intent(found.owner, e.folder, e.stem, at, found.path) for e in found.entries]
                if not found.entries:  # nothing to undo: the journal goes with the others
                    out.append(Intent(found.owner, "", "", found.modified, found.path))
        with self.db.reading() as session:
            rows = session.execute(select(INTENTS).order_by(INTENTS.c.id)).all()
        for row in rows:
            owner = owners.Owner(row.host, row.boot, row.pid, row.started)
            if self._given_up(owner, row.created_at, now):
                out.append(Intent(owner, row.folder, row.item, row.created_at, row.id))
        return out

    def _given_up(self, owner: owners.Owner, since: float, now: float) -> bool:
        verdict = owners.alive(owner, self.locks)
        return verdict is False or (verdict is None and now - since > INTENT_EXPIRY_S)

    def remove(self, session: Session, intents: list[Intent]) -> None:
        """Inside recovery's transaction: the rows of an earlier version's intents."""
        ids = [i.source for i in intents if isinstance(i.source, int)]
        if ids:
            session.execute(_DROP, {"ids": ids})

    def retire(self, intents: list[Intent]) -> None:
        """After recovery's commit: the journals it read. A kill before this only repeats the
        recovery, which finds nothing left to undo."""
        for path in {i.source for i in intents if isinstance(i.source, Path)}:
            journal.remove(path)
