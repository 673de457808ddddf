"""The event log's Merkle tree, kept in the node's database and grown from the events it lacks.

Leaf i is event seq i + 1, its canonical bytes (the bytes its hash covers, events.py). The tree
is derived data: nothing on the ingest path writes it. ``grow`` appends the events committed
since it last ran, storing each perfect subtree once (``merkle_nodes``: the leaf, and each node
its leaf completes), so a root or a proof at any size reads O(log n) rows. ``merkle_head`` holds
the size, locked while the tree grows, so two processes never write the same nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from dicom_chain.db.models import MerkleHeadRow, MerkleNodeRow
from dicom_chain.errors import LedgerError
from dicom_chain.events import Event
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger
from dicom_chain.tlog import merkle
from dicom_chain.tlog.checkpoint import Checkpoint, origin_for

NODES = MerkleNodeRow.__table__
HEAD = MerkleHeadRow.__table__
# Events read and appended per transaction while the tree grows: a few MB of rows at most, and
# a write lock held a fraction of a second at a time.
GROW_BATCH = 5000


@dataclass(frozen=True)
class Inclusion:
    index: int
    size: int
    leaf: bytes  # the event's canonical bytes
    proof: list[bytes]


class StoredTree:
    """Subtree hashes read from the database (merkle.Subtrees)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._cache: dict[tuple[int, int], bytes] = {}

    def perfect(self, level: int, index: int) -> bytes:
        found = self._cache.get((level, index))
        if found is None:
            found = self.session.scalar(
                select(NODES.c.hash).where(NODES.c.level == level, NODES.c.idx == index)
            )
            if found is None:
                raise LedgerError(f"the Merkle tree lacks subtree {level}/{index}: grow it first")
            self._cache[(level, index)] = found
        return found


class EventTree:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def size(self) -> int:
        with self.ledger.db.reading() as session:
            return int(session.scalar(select(HEAD.c.size).where(HEAD.c.id == 1)) or 0)

    def grow(self) -> int:
        """Append every committed event the tree lacks; the new size."""
        while True:
            with self.ledger.db.writing() as session:
                size = _locked_size(session)
                rows = self.ledger.events_after(size, GROW_BATCH)
                if not rows:
                    return size
                tree = StoredTree(session)
                values = []
                for row in rows:
                    if row.seq != size + 1:
                        raise LedgerError(
                            f"event log has a gap before seq {row.seq}: the tree stops at {size}"
                        )
                    index, leaf = size, merkle.leaf_hash(Event.from_stored(row._mapping).canonical_bytes())
                    values.append({"level": 0, "idx": index, "hash": leaf})
                    tree._cache[(0, index)] = leaf
                    level, node = 0, leaf
                    while (index >> level) & 1:  # this leaf completes the subtree above: store it
                        left = tree.perfect(level, (index >> level) - 1)
                        node = merkle.node_hash(left, node)
                        level += 1
                        values.append({"level": level, "idx": index >> level, "hash": node})
                        tree._cache[(level, index >> level)] = node
                    size += 1
                session.execute(insert(NODES), values)
                session.execute(update(HEAD).where(HEAD.c.id == 1).values(size=size))

    def root(self, size: int) -> bytes:
        with self.ledger.db.reading() as session:
            return merkle.root(StoredTree(session), size)

    def checkpoint(self, key: NodeKey, institution: str) -> tuple[Checkpoint, str]:
        """The tree grown to the log's end, as a checkpoint and its signed note."""
        size = self.grow()
        cp = Checkpoint(origin_for(key, institution), size, self.root(size))
        return cp, cp.sign(key)

    def inclusion(self, seq: int, size: int) -> Inclusion:
        """The proof that event ``seq`` is in the tree of ``size`` events."""
        if not 1 <= seq <= size:
            raise LedgerError(f"event {seq} is not in a log of {size} events")
        rows = self.ledger.events_after(seq - 1, 1)
        if not rows or rows[0].seq != seq:
            raise LedgerError(f"no event {seq}")
        leaf = Event.from_stored(rows[0]._mapping).canonical_bytes()
        with self.ledger.db.reading() as session:
            proof = merkle.inclusion_proof(StoredTree(session), seq - 1, size)
        return Inclusion(seq - 1, size, leaf, proof)

    def consistency(self, first: int, second: int) -> list[bytes]:
        with self.ledger.db.reading() as session:
            return merkle.consistency_proof(StoredTree(session), first, second)


def _locked_size(session: Session) -> int:
    """The tree's size, its head row locked for this transaction (made if the schema was created
    without the migration's row)."""
    stmt = select(HEAD.c.size).where(HEAD.c.id == 1)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    size = session.scalar(stmt)
    if size is None:  # two processes may both find none: the second's insert does nothing
        dialect = session.get_bind().dialect.name
        make = pg_insert if dialect == "postgresql" else sqlite_insert
        session.execute(make(HEAD).values(id=1, size=0).on_conflict_do_nothing())
        size = session.scalar(stmt)
    return int(size or 0)
