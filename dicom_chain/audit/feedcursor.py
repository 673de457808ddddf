"""Where the live audit feed to one target stands, shared by every process on the database.

One row per target: the last event sent and a lease naming the process that sends. Only the
holder sends, so N gateway processes on one database send each event once, not N times; the
others poll, and take over when the lease runs out, or at once when the holder is judged dead
on their own host and boot (db/owners.py), or gives the lease back on stopping.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from sqlalchemy import bindparam, insert, select, update

from dicom_chain.db import owners
from dicom_chain.db.database import Database
from dicom_chain.db.models import FeedCursorRow
from dicom_chain.errors import LedgerConflict

# The holder renews at every poll (twice a second) and every batch; a holder gone without a word
# (a host that died) is replaced after this. Longer than a batch can take to send (a repository
# that stops answering fails the send after its socket timeout, 10 s), so a slow but living
# holder is not replaced mid-batch.
FEED_LEASE_S = 30.0

CURSORS = FeedCursorRow.__table__
_ADVANCE = (
    update(CURSORS)
    .where(CURSORS.c.target == bindparam("t"), CURSORS.c.lease_owner == bindparam("me"))
    .values(seq=bindparam("seq"), lease_until=bindparam("until"))
)


class FeedCursor:
    def __init__(self, db: Database, target: str) -> None:
        self.db = db
        self.target = target
        # This feed in this process: two feeds of one process are two senders too (tests).
        self.instance = uuid.uuid4().hex[:8]

    @property
    def holder(self) -> str:
        return f"{owners.current()}/{self.instance}"  # per call: a forked child is another holder

    def acquire(self, start: Callable[[], int], now: float | None = None) -> int | None:
        """Take or renew the lease; the last event sent, from which to go on, or None while another
        living process sends. A target seen for the first time starts at ``start()``."""
        now = time.time() if now is None else now
        me = self.holder
        try:
            with self.db.writing(durable=False) as session:
                row = session.execute(
                    select(CURSORS).where(CURSORS.c.target == self.target).with_for_update()
                ).first()
                if row is None:
                    seq = start()
                    session.execute(
                        insert(CURSORS),
                        {
                            "target": self.target,
                            "seq": seq,
                            "lease_owner": me,
                            "lease_until": now + FEED_LEASE_S,
                        },
                    )
                    return seq
                if (
                    row.lease_owner not in ("", me)
                    and row.lease_until > now
                    and not _holder_dead(row.lease_owner)
                ):
                    return None
                session.execute(
                    update(CURSORS)
                    .where(CURSORS.c.target == self.target)
                    .values(lease_owner=me, lease_until=now + FEED_LEASE_S)
                )
                return int(row.seq)
        except LedgerConflict:  # another process made the row first: it holds the lease
            return None

    def advance(self, seq: int, now: float | None = None) -> bool:
        """Record ``seq`` as sent and renew the lease; False when the lease was lost meanwhile
        (the new holder goes on from where it found the cursor)."""
        now = time.time() if now is None else now
        with self.db.writing(durable=False) as session:
            result = session.execute(
                _ADVANCE, {"t": self.target, "me": self.holder, "seq": seq, "until": now + FEED_LEASE_S}
            )
            return bool(result.rowcount)

    def release(self) -> None:
        """Give the lease back (stopping): another process takes over at its next poll."""
        with self.db.writing(durable=False) as session:
            session.execute(
                update(CURSORS)
                .where(CURSORS.c.target == self.target, CURSORS.c.lease_owner == self.holder)
                .values(lease_owner="", lease_until=0.0)
            )

    def position(self) -> int | None:
        """The last event sent to this target, None before the feed first ran."""
        with self.db.reading() as session:
            return session.scalar(select(CURSORS.c.seq).where(CURSORS.c.target == self.target))


def _holder_dead(holder: str) -> bool:
    owner = owners.Owner.parse(holder.rsplit("/", 1)[0])
    return owner is not None and owners.dead(owner)
