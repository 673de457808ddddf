"""A whole-node verify run goes on the record: its event, and the index states it implies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
from sqlalchemy import select

from dicom_chain.actors import local_user
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.qr.index import INSTANCES
from dicom_chain.verifyrun import verify_whole_node
from dicom_chain.vocab import EventType, Outcome

from .conftest import read


def _states(settings: Settings) -> dict[str, str]:
    node = Node.open(settings)
    try:
        with node.db.writing() as session:
            rows = session.execute(select(INSTANCES.c.path, INSTANCES.c.verification)).all()
        return {path: state for path, state in rows}
    finally:
        node.close()


def _verify_events(settings: Settings) -> list:
    node = Node.open(settings)
    try:
        return [e for e in node.ledger.iter_events() if e.type == EventType.VERIFY_NODE]
    finally:
        node.close()


def test_an_intact_node_records_success_as_the_local_user(node: Node, settings: Settings):
    node.ingest(item_from_dataset(read("CT_small.dcm")))
    steps: list[int] = []

    def track(total: int):
        import contextlib

        steps.append(total)
        return contextlib.nullcontext(lambda n: steps.append(-n))

    run = verify_whole_node(settings, track=track)
    assert run.report.ok and run.not_recorded == ""
    assert steps[0] == 2 and len(steps) > 1  # one block and one event, and it advanced
    [event] = _verify_events(settings)
    assert event.outcome == Outcome.SUCCESS and event.actor == local_user()
    assert event.details["blocks"] == 1 and event.details["problems"] == []


def test_an_altered_file_is_a_failure_event_and_an_altered_index_state(node: Node, settings: Settings):
    altered = node.ingest(item_from_dataset(read("CT_small.dcm"))).path
    kept = node.ingest(item_from_dataset(read("MR_small.dcm"))).path
    ds = pydicom.dcmread(altered)
    ds.PatientName = "SOMEONE^ELSE"
    ds.save_as(altered)
    run = verify_whole_node(settings, update_index=True)
    assert not run.report.ok
    [event] = _verify_events(settings)
    assert event.outcome == Outcome.MAJOR_FAILURE and event.details["errors"] == len(run.report.errors)
    assert any(str(altered) in problem for problem in event.details["problems"])
    states = _states(settings)
    root = settings.storage_dir.resolve()
    assert states[Path(altered).resolve().relative_to(root).as_posix()] == "altered"
    assert states[Path(kept).resolve().relative_to(root).as_posix()] == "verified"


def test_without_the_node_key_the_run_is_checked_but_not_recorded(node: Node, settings: Settings):
    node.ingest(item_from_dataset(read("CT_small.dcm")))
    elsewhere = dataclasses.replace(settings, key_file=settings.home / "absent.key")
    run = verify_whole_node(elsewhere)
    assert run.report.ok and "no node key" in run.not_recorded
    assert _verify_events(settings) == []


def test_pinned_keys_are_the_node_its_chains_and_its_registered_institutions(settings, tmp_path):
    from dicom_chain.keys import NodeKey
    from dicom_chain.sharing.registry import Registry
    from dicom_chain.verifyrun import pinned_keys

    assert pinned_keys(Settings(home=tmp_path / "no-node"), None) is None  # nothing to pin
    partner = NodeKey.generate()
    (tmp_path / "partner.pub").write_text(partner.public_pem())
    node = Node.open(settings)
    try:
        node.ingest(item_from_dataset(read("CT_small.dcm")))
        Registry(node.ledger, node.key).add(
            "Partner",
            ae_title="PARTNER",
            host="127.0.0.1",
            port=11112,
            public_key_file=tmp_path / "partner.pub",
            actor="test",
            now="2026-01-01T00:00:00Z",
        )
        own = node.key.public_key
    finally:
        node.close()
    pinned = pinned_keys(settings, None)
    assert pinned is not None and {own, partner.public_key} <= pinned
    given = frozenset({b"k" * 32})
    assert pinned_keys(settings, given) == given  # keys given replace the defaults, as before
