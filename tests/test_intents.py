"""Write intents in the database: noted and committed on their own, deleted inside the receipt's
transaction, those of failed receipts deleted with the next one; abandoned only when dead."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from sqlalchemy import func, select, update

from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.db import owners
from dicom_chain.db.database import Database
from dicom_chain.intents import INTENT_EXPIRY_S, INTENTS, Intents


@pytest.fixture
def intents(db_url: str):
    db = Database(db_url)
    yield Intents(db)
    db.close()


def _ids(intents: Intents) -> list[int]:
    with intents.db.reading() as session:
        return list(session.scalars(select(INTENTS.c.id).order_by(INTENTS.c.id)))


def _owned_by(intents: Intents, intent_id: int, owner: owners.Owner, age_s: float = 0.0) -> None:
    with intents.db.writing() as session:
        session.execute(
            update(INTENTS)
            .where(INTENTS.c.id == intent_id)
            .values(
                host=owner.host,
                boot=owner.boot,
                pid=owner.pid,
                started=owner.started,
                created_at=time.time() - age_s,
            )
        )


def test_a_noted_intent_is_committed_at_once_and_names_this_process(intents: Intents):
    intent = intents.note("1.2/1.2.3", "1.2.3.4")
    other = Database(intents.db.url)  # another connection sees it: it survives this process
    with other.reading() as session:
        row = session.execute(select(INTENTS)).one()
    other.close()
    me = owners.current()
    assert (row.id, row.folder, row.item) == (intent, "1.2/1.2.3", "1.2.3.4")
    assert (row.host, row.boot, row.pid, row.started) == (me.host, me.boot, me.pid, me.started)


def test_dropping_happens_in_the_caller_s_transaction(intents: Intents):
    intent = intents.note("f", "s")
    with pytest.raises(RuntimeError), intents.db.writing() as session:
        intents.drop(session, intent)
        raise RuntimeError("the receipt failed")
    assert _ids(intents) == [intent]  # rolled back with the receipt
    with intents.db.writing() as session:
        intents.drop(session, intent)
    assert _ids(intents) == []


def test_intents_of_failed_receipts_go_with_the_next_receipt(intents: Intents):
    failed = intents.note("f", "a")
    intents.forget(failed)
    assert _ids(intents) == [failed]  # no extra transaction now
    nxt = intents.note("f", "b")
    with intents.db.writing() as session:
        assert sorted(intents.drop(session, nxt)) == [failed, nxt]
    assert _ids(intents) == []


def test_abandoned_are_the_dead_here_and_the_expired_elsewhere(intents: Intents):
    me = owners.current()
    mine, dead, reused, far, far_old, mine_old = (intents.note("f", str(i)) for i in range(6))
    _owned_by(intents, dead, replace(me, pid=999_999_999))
    _owned_by(intents, reused, replace(me, started=me.started + 1))
    _owned_by(intents, far, replace(me, host="other-host"), age_s=INTENT_EXPIRY_S - 60)
    _owned_by(intents, far_old, replace(me, host="other-host"), age_s=INTENT_EXPIRY_S + 60)
    _owned_by(intents, mine_old, me, age_s=INTENT_EXPIRY_S + 60)  # a living owner's, however old
    assert [i.id for i in intents.abandoned()] == [dead, reused, far_old]
    assert mine in _ids(intents)


def test_the_intents_table_is_empty_after_ingests(db_url: str, tmp_path):
    from dicom_chain.config import Settings
    from dicom_chain.node import Node

    from .conftest import read

    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    try:
        node.ingest(item_from_dataset(read("CT_small.dcm")))
        node.ingest(item_from_dataset(read("CT_small.dcm")))  # duplicate: the intent goes too
        with node.db.reading() as session:
            assert session.scalar(select(func.count()).select_from(INTENTS)) == 0
    finally:
        node.close()
