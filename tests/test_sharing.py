"""Sharing policy: pure decisions with reasons in words (today: where a C-MOVE may send)."""

from __future__ import annotations

from dicom_chain.config import Settings
from dicom_chain.node import Node
from dicom_chain.outbox import Destination
from dicom_chain.sharing.policy import SharingPolicy

WORKSTATION = Destination.parse("WS1@10.0.0.21:104")


def test_a_configured_destination_is_allowed_with_its_address():
    decision = SharingPolicy.of([WORKSTATION, Destination.parse("WS2@10.0.0.22:11112")]).move("WS1")
    assert decision.allowed and not decision.denied
    assert decision.destination == WORKSTATION
    assert decision.reasons == ("WS1 is a configured move destination",)


def test_any_other_destination_is_denied_and_says_why():
    policy = SharingPolicy.of([WORKSTATION])
    for asked in ("STRANGER", "ws1", "", "WS1 "):
        decision = policy.move(asked)
        assert decision.denied and decision.destination is None
        assert decision.reason == f"move destination {asked!r} is not configured"
    assert SharingPolicy().move("WS1").denied  # no destination configured: C-MOVE sends nowhere


def test_asking_twice_gives_the_same_answer():
    policy = SharingPolicy.of([WORKSTATION])
    assert policy.move("WS1") == policy.move("WS1")
    assert policy.move("X") == policy.move("X")


def test_the_node_builds_its_policy_from_settings(tmp_path):
    node = Node.open(Settings(home=tmp_path / "n", move_destinations=("WS1@10.0.0.21:104",)))
    try:
        assert node.sharing.move("WS1").destination == WORKSTATION
        assert node.sharing.move("WS2").denied
    finally:
        node.close()
