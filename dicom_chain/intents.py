"""Write intents: "this process is about to write a file of this instance", kept in the database.

An intent names the instance's folder and file stem, so it covers whichever version's file gets
written, and its owner (db/owners.py): host, boot, pid and start time. It is noted in a short
transaction of its own *before* the receipt's transaction (on SQLite that one holds the write
lock from the head read to the commit, so nothing could be inserted meanwhile), with relaxed
durability: like the page cache of the file it guards, it survives a killed process, not a power
cut. The receipt's transaction deletes it, so a committed receipt never leaves one behind; what
is left belongs to a process that died between its file and its commit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.orm import Session

from dicom_chain.db import owners
from dicom_chain.db.database import Database
from dicom_chain.db.models import IntentRow
from dicom_chain.errors import DicomChainError

# An intent lives for a write and a commit: seconds, two minutes at the very worst (the pool's and
# the lock's timeouts). One a day old belongs to a process that died where nobody can judge it (a
# host that is gone, an earlier boot): only then does another host, or a new boot, take it over.
INTENT_EXPIRY_S = 24 * 3600.0

INTENTS = IntentRow.__table__
_DROP = delete(INTENTS).where(INTENTS.c.id.in_(bindparam("ids", expanding=True)))
_DROP_ONE = delete(INTENTS).where(INTENTS.c.id == bindparam("id"))  # the usual case, once per instance


@dataclass(frozen=True)
class Intent:
    id: int
    owner: owners.Owner
    folder: str
    item: str
    created_at: float


class Intents:
    def __init__(self, db: Database, locks: Path | None = None) -> None:
        """``locks``: the node's liveness-lock folder (owners.py), to judge owners in another pid
        namespace on this host, such as a restarted container's PID 1."""
        self.db = db
        self.locks = locks
        self._lock = threading.Lock()
        self._stale: set[int] = set()  # intents of failed receipts, deleted with the next receipt

    def note(self, folder: str, item: str) -> int:
        """Record, and commit, that this process is about to write a file of ``folder``/``item``."""
        me = owners.current()
        with self.db.writing_connection(durable=False) as conn:
            result = conn.execute(
                insert(INTENTS),
                {
                    "host": me.host,
                    "boot": me.boot,
                    "pid": me.pid,
                    "started": me.started,
                    "folder": folder,
                    "item": item,
                    "created_at": time.time(),
                },
            )
            return int(result.inserted_primary_key[0])

    def drop(self, session: Session, intent_id: int) -> list[int]:
        """Delete the intent inside the receipt's transaction, with any left by failed receipts;
        returns the ids deleted, to give back (``forget``) if that transaction fails."""
        with self._lock:
            ids = [intent_id, *self._stale]
            self._stale.clear()
        if len(ids) == 1:
            session.connection().execute(_DROP_ONE, {"id": intent_id})
        else:
            session.execute(_DROP, {"ids": ids})
        return ids

    def forget(self, *intent_ids: int) -> None:
        """Intents of receipts that failed (their files are already undone): deleted later, in the
        next receipt's transaction, rather than waiting for the lock again now."""
        with self._lock:
            self._stale.update(intent_ids)

    def flush(self) -> None:
        """Delete the intents of failed receipts now (closing): best effort, for whatever is left
        is only a row that recovery drops once this process is gone."""
        with self._lock:
            ids, self._stale = list(self._stale), set()
        if not ids:
            return
        try:
            with self.db.writing(durable=False) as session:
                self.remove(session, ids)
        except DicomChainError:
            pass

    def remove(self, session: Session, intent_ids: list[int]) -> None:
        session.execute(_DROP, {"ids": intent_ids})

    def owners(self) -> set[owners.Owner]:
        """The owners of every intent there is (whose liveness locks must be kept)."""
        with self.db.reading() as session:
            rows = session.execute(select(INTENTS.c.host, INTENTS.c.boot, INTENTS.c.pid, INTENTS.c.started))
            return {owners.Owner(*row) for row in rows}

    def abandoned(self, now: float | None = None) -> list[Intent]:
        """Intents whose owner is judged dead from here (this host and boot), and intents past
        INTENT_EXPIRY_S whose owner cannot be judged; a living owner's are never among them."""
        now = time.time() if now is None else now
        with self.db.reading() as session:
            rows = session.execute(select(INTENTS).order_by(INTENTS.c.id)).all()
        out = []
        for row in rows:
            owner = owners.Owner(row.host, row.boot, row.pid, row.started)
            verdict = owners.alive(owner, self.locks)
            if verdict is False or (verdict is None and now - row.created_at > INTENT_EXPIRY_S):
                out.append(Intent(row.id, owner, row.folder, row.item, row.created_at))
        return out
