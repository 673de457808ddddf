"""Event records: sealed with links and signatures that any change breaks."""

from __future__ import annotations

import dataclasses

import pytest

from dicom_chain.block import GENESIS_HASH
from dicom_chain.errors import SignatureError
from dicom_chain.events import Event, EventDraft
from dicom_chain.keys import NodeKey

KEY = NodeKey.generate()


def test_seal_links_and_signs():
    first = Event.seal(
        EventDraft("instance.received", actor="CT1", details={"height": 0}), 1, GENESIS_HASH, KEY
    )
    second = Event.seal(EventDraft("query", actor="WS1"), 2, first.hash, KEY)
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
