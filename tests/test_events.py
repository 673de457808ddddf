"""Event records: sealed with links and signatures that any change breaks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dicom_chain import canonjson
from dicom_chain.block import GENESIS_HASH
from dicom_chain.errors import SignatureError
from dicom_chain.events import Event, EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.vocab import EventType, Outcome

KEY = NodeKey.generate()


def test_seal_links_and_signs():
    first = Event.seal(
        EventDraft("instance.received", actor="CT1", details={"height": 0}), 1, GENESIS_HASH, KEY
    )
    second = Event.seal(EventDraft("query.find", actor="WS1"), 2, first.hash, KEY)
    assert second.prev_hash == first.hash
    first.verify_signature()
    second.verify_signature()


@pytest.mark.parametrize(
    "field, value",
    [
        ("type", "release"),
        ("actor", "X"),
        ("outcome", "major-failure"),
        ("seq", 9),
        ("details", {"height": 1}),
    ],
)
def test_any_change_breaks_hash_and_signature(field, value):
    event = Event.seal(
        EventDraft("instance.received", actor="CT1", details={"height": 0}), 1, GENESIS_HASH, KEY
    )
    changed = dataclasses.replace(event, **{field: value})
    assert changed.hash != event.hash
    with pytest.raises(SignatureError):
        changed.verify_signature()


def test_every_event_type_has_its_audit_codes():
    from dicom_chain.audit import codes
    from dicom_chain.vocab import EventType

    assert set(codes.KINDS) == set(EventType)
    assert all(codes.kind_of(str(t)) is codes.KINDS[t] for t in EventType)


def test_a_draft_outside_the_vocabulary_fails_where_it_is_made():
    with pytest.raises(ValueError):
        EventDraft("instance.recieved")
    with pytest.raises(ValueError):
        EventDraft("instance.received", outcome="fine")
    draft = EventDraft("instance.received", outcome="minor-failure")
    assert draft.type is EventType.INSTANCE_RECEIVED and draft.outcome is Outcome.MINOR_FAILURE


@pytest.mark.parametrize(
    "details",
    [
        {},
        {"height": 7, "block_hash": "ab" * 32, "version": 1, "peer": "10.0.0.1", "none": None},
        {"anomalies": ("a", "b"), "height": 1},  # a tuple reads back as a list
        {10: "int keys", 9: "sorted as numbers"},  # keys read back as text
        {"outcome": Outcome.SUCCESS, "n": True},  # an enum member reads back as its value
        {"nested": {"z": 1, "a": [1, {"b": 2}]}, "big": 2**70, "text": "é\u2028"},
    ],
)
def test_sealed_details_are_what_the_log_reads_back(details: dict):
    """The flat receipt details skip the JSON round trip: they must come out exactly as it would."""
    sealed = Event.seal(EventDraft(EventType.SERVICE_START, details=details), 1, "0" * 64, NodeKey.generate())
    expected = json.loads(canonjson.dumps(details))
    assert sealed.details == expected
    assert [(k, type(v)) for k, v in sealed.details.items()] == [(k, type(v)) for k, v in expected.items()]
    assert sealed.details is not details  # a copy: the caller's dict can change, the event not
    assert Event.from_stored(sealed.stored()).hash == sealed.hash
