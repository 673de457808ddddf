"""Event records: sealed with links and signatures that any change breaks."""

from __future__ import annotations

import dataclasses

import pytest

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
