"""The event log's stored Merkle tree (dicom_chain/tlog/store.py), its proofs checked offline
(tlog/proofs.py), and ``dicom-chain log``: a rewritten history is caught by the old checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, text, update

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.cli import main
from dicom_chain.config import Settings
from dicom_chain.errors import ProofError
from dicom_chain.events import EventDraft
from dicom_chain.node import Node
from dicom_chain.tlog import merkle
from dicom_chain.tlog.checkpoint import open_signed
from dicom_chain.tlog.proofs import check_proof
from dicom_chain.tlog.store import HEAD, NODES, EventTree
from dicom_chain.vocab import EventType

from .conftest import SAMPLE_STUDY, TEST_FILES


@pytest.fixture
def logged(db_url: str, tmp_path: Path):
    node = Node.open(Settings(home=tmp_path / "n", db=db_url, institution="St. Log"))
    for path in sorted(SAMPLE_STUDY.glob("*.dcm"))[:5]:
        import pydicom

        node.ingest(item_from_dataset(pydicom.dcmread(path)))
    yield node
    node.close()


def leaves(node: Node) -> merkle.Leaves:
    return merkle.Leaves([merkle.leaf_hash(e.canonical_bytes()) for e in node.ledger.iter_events()])


def test_the_stored_tree_is_the_tree_of_the_events_and_grows_by_what_it_lacks(logged: Node):
    tree = EventTree(logged.ledger)
    n = logged.ledger.event_count()
    assert tree.size() == 0 and tree.grow() == n and tree.grow() == n
    reference = leaves(logged)
    for size in range(1, n + 1):
        assert tree.root(size) == merkle.root(reference, size)
    logged.record(EventDraft(type=EventType.AUDIT_EXPORT, actor="officer", reason="test"))
    assert tree.grow() == n + 1 and tree.root(n + 1) == merkle.root(leaves(logged), n + 1)
    for seq in range(1, n + 2):
        inclusion = tree.inclusion(seq, n + 1)
        assert merkle.verify_inclusion(seq - 1, n + 1, merkle.leaf_hash(inclusion.leaf), inclusion.proof,
                                       tree.root(n + 1))  # fmt: skip
    for first in range(0, n + 2):
        proof = tree.consistency(first, n + 1)
        assert merkle.verify_consistency(first, n + 1, proof, tree.root(first), tree.root(n + 1))


def test_a_checkpoint_and_its_proofs_check_offline_with_only_the_public_key(logged: Node):
    tree = EventTree(logged.ledger)
    cp, signed = tree.checkpoint(logged.key, "St. Log")
    assert open_signed(signed, logged.key.public_key) == cp and cp.size == logged.ledger.event_count()
    inclusion = tree.inclusion(2, cp.size)
    document = {"type": "inclusion", "checkpoint": signed, "index": inclusion.index, "size": inclusion.size,
                "event": _b64(inclusion.leaf), "proof": [_b64(p) for p in inclusion.proof]}  # fmt: skip
    assert "event 2" in check_proof(document, logged.key.public_key)
    forged = dict(document, event=_b64(inclusion.leaf.replace(b"instance", b"instanca")))
    with pytest.raises(ProofError):
        check_proof(forged, logged.key.public_key)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_a_history_rewritten_behind_the_nodes_back_fails_the_old_checkpoint(logged: Node, tmp_path: Path):
    """An event rewritten in the database and the tree rebuilt from the new history: the new
    checkpoint is well signed, but no consistency proof links it to the one published before."""
    tree = EventTree(logged.ledger)
    old, old_signed = tree.checkpoint(logged.key, "St. Log")
    with logged.ledger.db.writing() as session:
        session.execute(text("UPDATE events SET actor = 'nobody' WHERE seq = 2"))
        session.execute(delete(NODES))
        session.execute(update(HEAD).values(size=0))
    new, new_signed = tree.checkpoint(logged.key, "St. Log")
    assert new.size == old.size and new.root != old.root  # two histories of one size: the evidence
    document = {"type": "consistency", "old": old_signed, "new": new_signed,
                "proof": [_b64(p) for p in tree.consistency(old.size, new.size)]}  # fmt: skip
    with pytest.raises(ProofError, match="history was rewritten"):
        check_proof(document, logged.key.public_key)


def test_the_log_commands(tmp_path: Path):
    home = tmp_path / "home"
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", "--home", str(home), str(SAMPLE_STUDY)]).exit_code == 0
    first = tmp_path / "cp1"
    assert (
        runner.invoke(main, ["log", "checkpoint", "--home", str(home), "--output", str(first)]).exit_code == 0
    )
    pub = tmp_path / "pub.pem"
    assert runner.invoke(main, ["keys", "export", "--home", str(home), "--output", str(pub)]).exit_code == 0
    node = Node.open(Settings(home=home))
    block_hash = next(
        b for _, b in node.ledger.iter_blocks(node.chain_id) if not isinstance(b, str)
    ).block_hash
    events = node.ledger.event_count()
    node.close()
    assert first.read_text().splitlines()[1] == str(events)  # the tree grown to the log's end
    proof = tmp_path / "inc.json"
    made = runner.invoke(main, ["log", "prove-inclusion", "--home", str(home), "--block", block_hash,
                                "--checkpoint", str(first), "--output", str(proof)])  # fmt: skip
    assert made.exit_code == 0, made.output
    ok = runner.invoke(main, ["log", "verify-proof", str(proof), "--public-key", str(pub)])
    assert ok.exit_code == 0 and "instance.received" in ok.output, ok.output
    assert (
        runner.invoke(main, ["ingest", "--home", str(home), str(TEST_FILES / "CT_small.dcm")]).exit_code == 0
    )
    cons = tmp_path / "cons.json"
    made = runner.invoke(
        main, ["log", "prove-consistency", "--home", str(home), str(first), "--output", str(cons)]
    )
    assert made.exit_code == 0, made.output
    ok = runner.invoke(main, ["log", "verify-proof", str(cons), "--public-key", str(pub)])
    assert ok.exit_code == 0 and "extends it" in ok.output
    document = json.loads(cons.read_text())
    document["proof"] = document["proof"][:-1]
    cons.write_text(json.dumps(document))
    broken = runner.invoke(main, ["log", "verify-proof", str(cons), "--public-key", str(pub)])
    assert broken.exit_code == 1 and broken.output.startswith("BROKEN")
