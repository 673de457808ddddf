"""Institutions: registered with their event in one transaction, looked up, removed with history kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_chain.config import Settings
from dicom_chain.errors import KeyFileError, SharingError
from dicom_chain.keys import NodeKey
from dicom_chain.node import Node
from dicom_chain.sharing.registry import Registry
from dicom_chain.vocab import EventType

NOW = "2026-11-29T10:00:00.000000Z"


def key_file(tmp_path: Path, name: str, pem: bool = True) -> tuple[NodeKey, Path]:
    key = NodeKey.generate()
    path = tmp_path / f"{name}.{'pem' if pem else 'hex'}"
    path.write_text(key.public_pem() if pem else key.public_key.hex() + "\n")
    return key, path


@pytest.fixture
def shared_node(tmp_path: Path, db_url: str):
    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    yield node
    node.close()


def test_add_look_up_and_remove_keep_table_and_ledger_together(tmp_path, shared_node):
    registry = Registry(shared_node.ledger, shared_node.key)
    key_b, pem = key_file(tmp_path, "b")
    key_c, hexfile = key_file(tmp_path, "c", pem=False)
    b = registry.add(
        "HOSPITAL_B",
        ae_title="HB_GW",
        host="10.0.0.2",
        port=11112,
        public_key_file=pem,
        actor="admin@a",
        now=NOW,
    )
    registry.add(
        "HOSPITAL_C",
        ae_title="HC_GW",
        host="10.0.0.3",
        port=104,
        public_key_file=hexfile,
        actor="admin@a",
        now=NOW,
    )
    assert b.public_key == key_b.public_key and b.key_id == key_b.key_id
    assert registry.by_ae_title("HC_GW").name == "HOSPITAL_C"
    assert registry.by_key_id(key_c.key_id).name == "HOSPITAL_C"
    assert registry.by_ae_title("NOBODY") is None
    assert [i.name for i in registry.all()] == ["HOSPITAL_B", "HOSPITAL_C"]
    [added_b, _] = [e for e in shared_node.ledger.iter_events() if e.type == EventType.INSTITUTION_ADDED]
    assert added_b.actor == "admin@a"
    assert added_b.details == {
        "name": "HOSPITAL_B",
        "ae_title": "HB_GW",
        "host": "10.0.0.2",
        "port": 11112,
        "key_id": key_b.key_id,
        "public_key": key_b.public_key.hex(),
        "tls_cert": "",
    }

    registry.remove("HOSPITAL_B", actor="admin@a", now=NOW)
    assert registry.by_name("HOSPITAL_B") is None and registry.by_key_id(key_b.key_id) is None
    assert registry.by_name("HOSPITAL_B", include_removed=True).removed_at == NOW  # history keeps it
    assert [i.name for i in registry.all(include_removed=True)] == ["HOSPITAL_B", "HOSPITAL_C"]
    types = [e.type for e in shared_node.ledger.iter_events() if e.type.startswith("institution.")]
    assert types == ["institution.added", "institution.added", "institution.removed"]
    with pytest.raises(SharingError, match="already registered"):  # a name keeps meaning one party
        registry.add("HOSPITAL_B", ae_title="HB2", host="h", port=1, public_key_file=pem, actor="a", now=NOW)


def test_a_refused_registration_records_nothing(tmp_path, shared_node):
    registry = Registry(shared_node.ledger, shared_node.key)
    _, pem = key_file(tmp_path, "b")
    registry.add("HOSPITAL_B", ae_title="HB", host="h", port=104, public_key_file=pem, actor="a", now=NOW)
    before = shared_node.ledger.event_count()
    with pytest.raises(SharingError, match="already HOSPITAL_B's"):
        registry.add(
            "HOSPITAL_X",
            ae_title="HB",
            host="h",
            port=104,
            public_key_file=key_file(tmp_path, "x")[1],
            actor="a",
            now=NOW,
        )
    with pytest.raises(SharingError, match=r"key .* is already HOSPITAL_B.s"):
        registry.add("HOSPITAL_Y", ae_title="HY", host="h", port=104, public_key_file=pem, actor="a", now=NOW)
    with pytest.raises(SharingError, match="AE title"):
        registry.add(
            "HOSPITAL_Z", ae_title="A" * 17, host="h", port=104, public_key_file=pem, actor="a", now=NOW
        )
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(KeyFileError):
        registry.add("HOSPITAL_Z", ae_title="HZ", host="h", port=104, public_key_file=bad, actor="a", now=NOW)
    with pytest.raises(SharingError, match="not a PEM certificate"):
        registry.add(
            "HOSPITAL_Z",
            ae_title="HZ",
            host="h",
            port=104,
            public_key_file=key_file(tmp_path, "z")[1],
            tls_cert=bad,
            actor="a",
            now=NOW,
        )
    with pytest.raises(SharingError, match="no registered institution NOBODY"):
        registry.remove("NOBODY", actor="a", now=NOW)
    assert shared_node.ledger.event_count() == before
    assert [i.name for i in registry.all()] == ["HOSPITAL_B"]


def test_an_institution_is_given_its_log_address_later_with_an_event(tmp_path, shared_node):
    registry = Registry(shared_node.ledger, shared_node.key)
    _, pem = key_file(tmp_path, "b")
    registry.add(
        "HOSPITAL_B", ae_title="HB_GW", host="10.0.0.2", port=104, public_key_file=pem, actor="a", now=NOW
    )
    updated = registry.update("HOSPITAL_B", log_url="https://hb.example:8443/", actor="admin@a")
    assert (
        updated.log_url == "https://hb.example:8443" and registry.get("HOSPITAL_B").log_url == updated.log_url
    )
    [event] = [e for e in shared_node.ledger.iter_events() if e.type == EventType.INSTITUTION_UPDATED]
    assert event.details["log_url"] == "https://hb.example:8443" and event.actor == "admin@a"
    with pytest.raises(SharingError):
        registry.update("HOSPITAL_B", log_url="ftp://nope", actor="a")
    with pytest.raises(SharingError):
        registry.update("NOBODY", log_url="https://x", actor="a")
    assert len([e for e in shared_node.ledger.iter_events() if e.type == EventType.INSTITUTION_UPDATED]) == 1
