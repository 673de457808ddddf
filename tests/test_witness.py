"""Witnesses and cosignatures (dicom_chain/tlog/witness.py, cosignature.py): a log's growth is
cosigned, a split view or a rewritten history is caught with evidence anyone can check offline,
and three nodes witnessing each other catch one whose database is edited behind its back."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import delete, text, update

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.errors import NoteError
from dicom_chain.keys import NodeKey
from dicom_chain.node import Node
from dicom_chain.tlog import cosignature, merkle, note
from dicom_chain.tlog.checkpoint import Checkpoint, open_signed, origin_for
from dicom_chain.tlog.store import HEAD, NODES, EventTree
from dicom_chain.tlog.witness import Seen, Witness

from .conftest import SAMPLE_STUDY

LOG, WITNESS, STRANGER = NodeKey.generate(), NodeKey.generate(), NodeKey.generate()
ORIGIN = origin_for(LOG, "Hospital A")


def tree(n: int, salt: bytes = b"") -> merkle.Leaves:
    return merkle.Leaves([merkle.leaf_hash(b"event %d" % i + (salt if i == 2 else b"")) for i in range(n)])


def signed(src: merkle.Leaves, size: int, key: NodeKey = LOG) -> str:
    return Checkpoint(ORIGIN, size, merkle.root(src, size)).sign(key)


def witness() -> Witness:
    return Witness("witness.example/w1", WITNESS, {ORIGIN: LOG.public_key})


def test_a_growing_log_is_cosigned_and_the_cosignature_verifies():
    w, src = witness(), tree(12)
    first = w.add_checkpoint(None, 0, [], signed(src, 5), now=1_700_000_000)
    assert first.kind == "cosigned" and first.seen is not None and first.seen.size == 5
    later = w.add_checkpoint(
        first.seen, 5, merkle.consistency_proof(src, 5, 12), signed(src, 12), now=1_700_000_100
    )
    assert later.kind == "cosigned" and later.cosignature is not None
    cosigned = note.add_signature(signed(src, 12), later.cosignature)
    assert cosignature.verify(cosigned, "witness.example/w1", WITNESS.public_key) == 1_700_000_100
    assert open_signed(cosigned, LOG.public_key).size == 12  # the log's own signature still reads
    with pytest.raises(NoteError):
        cosignature.verify(cosigned, "witness.example/w1", STRANGER.public_key)
    forged = cosigned.replace("\n12\n", "\n13\n")
    with pytest.raises(NoteError):
        cosignature.verify(forged, "witness.example/w1", WITNESS.public_key)


def test_a_stale_old_size_is_a_conflict_and_strangers_and_older_checkpoints_are_refused():
    w, src = witness(), tree(12)
    seen = w.add_checkpoint(None, 0, [], signed(src, 8), now=1).seen
    conflict = w.add_checkpoint(seen, 5, merkle.consistency_proof(src, 5, 12), signed(src, 12), now=2)
    assert conflict.kind == "conflict" and conflict.seen == seen
    assert w.add_checkpoint(seen, 8, [], signed(src, 5), now=3).kind == "malformed"  # older than it knows
    assert (
        w.add_checkpoint(seen, 8, merkle.consistency_proof(src, 8, 12), signed(src, 12, STRANGER), now=4).kind
        == "bad-signature"
    )
    other = Checkpoint("other.example/log", 3, merkle.root(src, 3)).sign(LOG)
    assert w.add_checkpoint(None, 0, [], other, now=5).kind == "unknown-log"
    assert w.add_checkpoint(None, 0, [], "not a note", now=6).kind == "malformed"


def test_two_roots_at_one_size_or_a_rewritten_history_are_a_split_view_with_evidence():
    w, honest, forked = witness(), tree(12), tree(12, salt=b"!")
    seen = w.add_checkpoint(None, 0, [], signed(honest, 9), now=1).seen
    assert seen is not None
    same_size = w.add_checkpoint(seen, 9, [], signed(forked, 9), now=2)
    assert same_size.kind == "split-view" and same_size.evidence is not None
    a, b = (open_signed(x, LOG.public_key) for x in same_size.evidence)  # checkable offline
    assert a.size == b.size and a.root != b.root
    proof = merkle.consistency_proof(forked, 9, 12)
    # a failed proof alone accuses nobody: anyone may pair a log's checkpoint with a bad proof
    assert w.add_checkpoint(seen, 9, proof, signed(forked, 12), now=3).kind == "bad-proof"
    honest_now = w.add_checkpoint(
        seen, 9, [b"\0" * 32], signed(honest, 12), now=3, at_old=lambda n: signed(honest, n)
    )
    assert honest_now.kind == "bad-proof"  # the log still signs the root cosigned: only the proof was wrong
    rewritten = w.add_checkpoint(
        seen, 9, proof, signed(forked, 12), now=3, at_old=lambda n: signed(forked, n)
    )
    assert rewritten.kind == "split-view" and rewritten.evidence == (seen.signed, signed(forked, 9))
    old, new = (open_signed(x, LOG.public_key) for x in rewritten.evidence)
    assert old.size == new.size and old.root != new.root  # the log's own two signatures say it


def _node(home: Path, institution: str) -> Node:
    node = Node.open(Settings(home=home, institution=institution))
    for path in sorted(SAMPLE_STUDY.glob("*.dcm"))[:3]:
        node.ingest(item_from_dataset(pydicom.dcmread(path)))
    return node


def test_three_nodes_witness_each_other_and_catch_one_edited_behind_its_back(tmp_path: Path):
    nodes = {name: _node(tmp_path / name, f"Hospital {name}") for name in "ABC"}
    try:
        origins = {name: origin_for(n.key, f"Hospital {name}") for name, n in nodes.items()}
        witnesses = {}
        for name, n in nodes.items():
            watched = {origins[o]: nodes[o].key.public_key for o in nodes if o != name}
            witnesses[name] = Witness(f"{name.lower()}.witness", n.key, watched)
        seen: dict[tuple[str, str], Seen | None] = {}

        def round_(now: int) -> dict[tuple[str, str], str]:
            kinds = {}
            for log_name, log in nodes.items():
                tree_ = EventTree(log.ledger)
                cp, note_text = tree_.checkpoint(log.key, f"Hospital {log_name}")
                for wname, w in witnesses.items():
                    if wname == log_name:
                        continue
                    last = seen.get((wname, log_name))
                    old = last.size if last else 0
                    proof = tree_.consistency(old, cp.size) if old <= cp.size else []
                    at_old = lambda n, tree_=tree_, log=log, log_name=log_name: Checkpoint(  # noqa: E731
                        origin_for(log.key, f"Hospital {log_name}"), n, tree_.root(n)
                    ).sign(log.key)
                    outcome = w.add_checkpoint(last, old, proof, note_text, now, at_old)
                    kinds[(wname, log_name)] = outcome.kind
                    if outcome.kind == "cosigned":
                        seen[(wname, log_name)] = outcome.seen
            return kinds

        assert set(round_(1).values()) == {"cosigned"}
        for n in nodes.values():
            n.ingest(item_from_dataset(pydicom.dcmread(sorted(SAMPLE_STUDY.glob("*.dcm"))[4])))
        assert set(round_(2).values()) == {"cosigned"}
        a = nodes["A"]
        with a.ledger.db.writing() as session:  # an event rewritten, the tree rebuilt: history re-signed
            session.execute(text("UPDATE events SET reason = 'nothing happened' WHERE seq = 2"))
            session.execute(delete(NODES))
            session.execute(update(HEAD).values(size=0))
        a.ingest(item_from_dataset(pydicom.dcmread(sorted(SAMPLE_STUDY.glob("*.dcm"))[5])))
        kinds = round_(3)
        assert kinds[("B", "A")] == kinds[("C", "A")] == "split-view"
        assert {kinds[k] for k in kinds if k[1] != "A"} == {"cosigned"}
    finally:
        for n in nodes.values():
            n.close()


def test_a_first_checkpoint_of_size_zero_must_be_the_empty_tree():
    """c2sp.org/tlog-witness: at the old size, the roots must agree, else 409 (size 0 included)."""
    w = witness()
    empty = Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT).sign(LOG)
    assert w.add_checkpoint(None, 0, [], empty, now=1).kind == "cosigned"
    odd = Checkpoint(ORIGIN, 0, merkle.leaf_hash(b"x")).sign(LOG)
    wrong = w.add_checkpoint(None, 0, [], odd, now=1)
    assert wrong.kind == "conflict" and wrong.http_status == 409
    assert wrong.seen is not None and wrong.seen.size == 0  # the size the 409 names
