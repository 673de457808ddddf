"""Proofs of an image's state (dicom_chain/tlog/bundle.py, ``prove``): a bundle for an instance
received, forwarded to a PACS and released to another institution verifies offline against the
image file, and a change to the file, an event or a block in the bundle is caught."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner

from dicom_chain.block import utc_now
from dicom_chain.carriers.registry import open_file
from dicom_chain.cli import main
from dicom_chain.config import Settings
from dicom_chain.keys import NodeKey
from dicom_chain.node import Node
from dicom_chain.sharing.registry import Registry
from dicom_chain.sharing.service import grant_consent
from dicom_chain.tlog import bundle, cosignature, note
from dicom_chain.tlog.publishing import Publisher
from dicom_chain.tlog.witnessing import WitnessDesk, witness_name
from dicom_chain.vocab import EventType
from scp.release import release_study

from .gateways import InProcessGateway
from .peers import free_port
from .test_forwarder import ScriptedPacs, store_one_through, wait_until


@dataclass
class World:
    a: InProcessGateway  # the hospital, forwarding to a PACS
    b: InProcessGateway  # another institution, receiving a release, witnessing A's log
    pacs: ScriptedPacs
    sop_uid: str
    study_uid: str
    stored: Path
    key: Path  # A's public key file


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    pacs = ScriptedPacs([])
    a = InProcessGateway(Node.open(Settings(
        home=tmp_path / "a", institution="Hospital A", forward=(pacs.destination,), host="127.0.0.1",
        port=free_port(), forward_workers=1,
    )))  # fmt: skip
    b = InProcessGateway(Node.open(Settings(
        home=tmp_path / "b", institution="Hospital B", host="127.0.0.1", port=free_port(), ae_title="HOSP_B",
    )))  # fmt: skip
    a.start()
    b.start()
    try:
        ds = store_one_through(a, pacs, seed=11)  # received, then forwarded (the PACS said success)
        assert wait_until(
            lambda: any(e.type == EventType.INSTANCE_FORWARDED for e in a.node.ledger.iter_events())
        )
        keys = {}
        for me, other in ((a, b), (b, a)):
            keys[other] = tmp_path / f"{other.node.settings.institution}.pub"
            keys[other].write_text(other.node.key.public_key.hex())
            Registry(me.node.ledger, me.node.key).add(
                other.node.settings.institution, ae_title=other.settings.ae_title, host="127.0.0.1",
                port=other.settings.port, public_key_file=keys[other], actor="test", now=utc_now(),
            )  # fmt: skip
        grant_consent(
            a.node, patient_id=ds.PatientID, to="Hospital B", until="2099-01-01", actor="test", now=utc_now()
        )
        released = release_study(a.node, ds.StudyInstanceUID, "Hospital B", purpose="treatment", actor="test")
        assert released.decision.allowed and all(s.status == 0 for s in released.sent)
        receipt = next(e for e in a.node.ledger.iter_events() if e.type == EventType.INSTANCE_RECEIVED)
        with a.node.db.reading() as session:
            stored = a.node.storage.root / str(
                a.node.ledger.path_of_block(session, receipt.details["block_hash"])
            )
        yield World(a, b, pacs, ds.SOPInstanceUID, ds.StudyInstanceUID, stored, keys[a])
    finally:
        for g in (a, b):
            g.stop()
            g.node.close()
        pacs.ae.shutdown()


def _cosign(world: World) -> None:
    """B witnesses A's log; A publishes the checkpoint B cosigned."""
    publisher = Publisher(world.a.node, "Hospital A", quorum=1)
    cp, signed = publisher.checkpoint()
    [witness] = [i for i in Registry(world.a.node.ledger, None).all() if i.name == "Hospital B"]
    old = publisher.last_cosigned(witness)  # B saw A's log at this size: the release carried it
    assert old > 0
    proof = publisher.tree.consistency(old, cp.size)
    judged = WitnessDesk(world.b.node).add_checkpoint(old, proof, signed, actor="test")
    assert judged.outcome.kind == "cosigned" and judged.outcome.cosignature is not None
    line = publisher.accept(witness, cp, signed, judged.outcome.cosignature.line())
    assert publisher.publish(cp, signed, [line]) is not None


def test_a_bundle_shows_receipt_forward_and_release_and_checks_against_the_image(world: World):
    _cosign(world)
    doc = bundle.build(world.a.node, "Hospital A", world.sop_uid)
    key, b_key = world.a.node.key.public_key, world.b.node.key.public_key
    checked = bundle.check(doc, key, open_file(world.stored), witnesses=[b_key], quorum=1)
    assert checked.ok, checked.problems
    text = "\n".join(checked.lines)
    assert "cosigned by Hospital B" in text
    assert "instance.received" in text and "instance.forwarded" in text and "release.granted" in text
    assert "the image file is the content of block" in text
    kinds = [json.loads(base64.b64decode(e["event"]))["type"] for e in doc["events"]]
    assert kinds.index("instance.received") < kinds.index("instance.forwarded")

    altered = pydicom.dcmread(world.stored)  # the image changed after the fact
    pixels = bytearray(altered.PixelData)
    pixels[0] ^= 0xFF
    altered.PixelData = bytes(pixels)
    copy = world.stored.parent / "altered.dcm"
    altered.save_as(copy)
    assert any("not the content" in p for p in bundle.check(doc, key, open_file(copy)).problems)

    for i, entry in enumerate(doc["events"]):  # any event changed in the bundle
        event = json.loads(base64.b64decode(entry["event"]))
        event["reason"] = event["reason"] + "."
        forged = json.loads(json.dumps(doc))
        forged["events"][i]["event"] = base64.b64encode(json.dumps(event).encode()).decode()
        assert not bundle.check(forged, key).ok
    forged = json.loads(json.dumps(doc))
    forged["blocks"][0] = forged["blocks"][0].replace('"height":', '"height":1', 1)
    assert not bundle.check(forged, key).ok
    for i in range(len(doc["events"])):  # any event left out: the log's signed manifest lists it
        forged = json.loads(json.dumps(doc))
        del forged["events"][i]
        assert any("manifest" in p for p in bundle.check(forged, key).problems)
    forged = json.loads(json.dumps(doc))
    forged["subject"] = world.study_uid  # the same events claimed as the whole study's
    assert not bundle.check(forged, key).ok
    assert not bundle.check(doc, b_key).ok  # another log's key
    # witnesses count only when the verifier pins them: a key the bundle names proves nothing
    stranger = NodeKey.generate()
    dressed = json.loads(json.dumps(doc))
    dressed["checkpoint"] = note.add_signature(
        doc["checkpoint"],
        cosignature.cosign(
            note.parse(doc["checkpoint"])[0], witness_name(stranger.key_id), stranger, 2**63 - 1
        ),
    )
    dressed["witnesses"].append(
        {
            "institution": "Ministry of Health",
            "name": witness_name(stranger.key_id),
            "public_key": stranger.public_key.hex(),
        }
    )
    unpinned = bundle.check(dressed, key, witnesses=[b_key], quorum=2)
    assert not unpinned.ok and "Ministry of Health" not in "\n".join(unpinned.lines)
    assert bundle.check(
        dressed, key, witnesses=[b_key, stranger.public_key], quorum=2
    ).ok  # far-future time: no crash


def test_prove_commands_write_and_verify_a_bundle_with_verify_like_exit_codes(world: World, tmp_path: Path):
    home = ["--home", str(world.a.node.settings.home), "--institution", "Hospital A"]
    out = tmp_path / "proof.json"
    runner = CliRunner()
    made = runner.invoke(main, ["prove", world.study_uid, *home, "--output", str(out)])
    assert made.exit_code == 0, made.output
    assert "not yet witnessed" in made.output  # nothing published: a fresh checkpoint of A's own
    pinned = runner.invoke(
        main, ["prove", "verify", str(out), "--public-key", str(world.key), "--image", str(world.stored)]
    )
    assert pinned.exit_code == 0, pinned.output
    unpinned = runner.invoke(main, ["prove", "verify", str(out)])
    assert unpinned.exit_code == 3, unpinned.output
    broken = json.loads(out.read_text())
    broken["events"][-1]["proof"] = broken["events"][-1]["proof"][:-1] or ["AAAA"]
    out.write_text(json.dumps(broken))
    assert runner.invoke(main, ["prove", "verify", str(out), "--public-key", str(world.key)]).exit_code == 1
    early = runner.invoke(
        main, ["prove", world.sop_uid, *home, "--at", "2000-01-01T00:00:00Z", "--output", str(out)]
    )
    assert early.exit_code != 0 and "no receipt" in early.output


def test_a_bundle_as_at_a_time_holds_only_what_the_log_held_then(world: World):
    events = list(world.a.node.ledger.iter_events())
    received = next(e for e in events if e.type == EventType.INSTANCE_RECEIVED)
    forwarded = next(e for e in events if e.type == EventType.INSTANCE_FORWARDED)
    doc = bundle.build(world.a.node, "Hospital A", world.sop_uid, at=received.time)
    seqs = [e["seq"] for e in doc["events"]]
    assert received.seq in seqs and forwarded.seq not in seqs
    assert bundle.check(doc, world.a.node.key.public_key).ok
