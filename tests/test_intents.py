"""Write intents in a per-process journal: appended before the write with no commit of their own,
forgotten after the receipt's commit (those of failed receipts with the next one), the journal cut
back when idle, and abandoned only when its owner is dead; an earlier version's rows still read."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from dicom_chain import journal
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.db import owners
from dicom_chain.db.database import Database
from dicom_chain.intents import INTENT_EXPIRY_S, INTENTS, Intents


@pytest.fixture
def intents(db_url: str, tmp_path: Path):
    db = Database(db_url)
    made = Intents(db, None, tmp_path / "storage-intents")
    yield made
    made.flush()
    db.close()


def _lines(intents: Intents) -> list[tuple[str, str]]:
    assert intents.journal is not None and intents.journal.path is not None
    found = journal.read(intents.journal.path)
    assert found is not None
    return [(e.folder, e.stem) for e in found.entries]


def leave_journal(
    folder: Path, owner: owners.Owner, entries: list[tuple[str, str]], age_s: float = 0.0
) -> Path:
    """A journal as a process cut off between its file and its commit leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{owner.pid}-{len(list(folder.iterdir()))}{journal.SUFFIX}"
    lines = "".join(f"{f}\t{s}\n" for f, s in entries)
    path.write_text(f"{journal.HEADER}{owner}\n{lines}")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_a_noted_intent_is_in_this_process_s_journal_at_once_and_in_no_table(intents: Intents):
    intents.note("1.2/1.2.3", "1.2.3.4")
    assert _lines(intents) == [("1.2/1.2.3", "1.2.3.4")]  # read back from the file, as recovery reads it
    assert intents.journal is not None and intents.journal.path is not None
    found = journal.read(intents.journal.path)
    assert found is not None and found.owner == owners.current()
    with intents.db.reading() as session:  # no commit of its own any more
        assert session.scalar(select(func.count()).select_from(INTENTS)) == 0


def test_an_idle_journal_is_cut_back_and_a_busy_one_rewritten_with_what_is_in_flight(
    intents: Intents, monkeypatch
):
    monkeypatch.setattr(journal, "JOURNAL_TRUNCATE_BYTES", 2_000)
    monkeypatch.setattr(journal, "JOURNAL_MAX_BYTES", 6_000)
    series = "1.2.840.113619.2.55.3.604688119.971.1357.1" * 2  # ~100 bytes a line, as a real one
    first = [intents.note(series, f"a{i}") for i in range(25)]
    for token in first[:-1]:
        intents.done(token)
    assert len(_lines(intents)) == 25  # one still in flight: nothing cut
    intents.done(first[-1])
    assert _lines(intents) == []  # idle and past the threshold: back to its owner line
    held = intents.note(series, "held")  # a receipt in flight while others come and go
    for i in range(100):
        intents.done(intents.note(series, f"b{i}"))
    lines = _lines(intents)
    assert (series, "held") in lines and len(lines) < 60  # rewritten, keeping the one in flight
    intents.done(held)


def test_intents_of_failed_receipts_go_with_the_next_commit(intents: Intents, monkeypatch):
    monkeypatch.setattr(journal, "JOURNAL_TRUNCATE_BYTES", 0)  # cut back whenever idle
    failed = intents.note("f", "a")
    intents.failed(failed)
    assert _lines(intents) == [("f", "a")]  # its file is being removed now: the intent stays meanwhile
    intents.done(intents.note("f", "b"))
    assert _lines(intents) == []


def test_closing_removes_an_idle_journal_and_keeps_one_with_a_receipt_in_flight(db_url: str, tmp_path: Path):
    db = Database(db_url)
    try:
        idle = Intents(db, None, tmp_path / "j")
        idle.done(idle.note("f", "a"))
        busy = Intents(db, None, tmp_path / "j")  # a second node of this process: its own journal
        busy.note("f", "b")
        assert idle.journal is not None and busy.journal is not None
        assert idle.journal.path != busy.journal.path
        idle.flush()
        busy.flush()
        assert [journal.read(p).entries for p in (tmp_path / "j").iterdir()] == [  # type: ignore[union-attr]
            (journal.Entry("f", "b"),)
        ]
    finally:
        db.close()


def test_abandoned_are_the_dead_here_and_the_expired_elsewhere(intents: Intents):
    me = owners.current()
    folder = intents.folder
    assert folder is not None
    intents.note("f", "mine")
    leave_journal(folder, replace(me, pid=999_999_999), [("f", "dead")])
    leave_journal(folder, replace(me, started=me.started + 1), [("f", "reused")])
    leave_journal(folder, replace(me, host="other-host"), [("f", "far")], age_s=INTENT_EXPIRY_S - 60)
    leave_journal(folder, replace(me, host="other-host"), [("f", "far_old")], age_s=INTENT_EXPIRY_S + 60)
    leave_journal(folder, me, [("f", "mine_old")], age_s=INTENT_EXPIRY_S + 60)  # a living owner's
    (folder / "notes.log").write_text("not a journal\n")  # no owner line: none of ours
    assert sorted(i.item for i in intents.abandoned()) == ["dead", "far_old", "reused"]


def test_an_earlier_version_s_intent_rows_are_still_abandoned_and_removed(intents: Intents):
    dead = replace(owners.current(), pid=999_999_999)
    row = {"host": dead.host, "boot": dead.boot, "pid": dead.pid, "started": dead.started}
    with intents.db.writing() as session:
        session.execute(insert(INTENTS), {**row, "folder": "f", "item": "old", "created_at": time.time()})
    abandoned = intents.abandoned()
    assert [(i.item, isinstance(i.source, int)) for i in abandoned] == [("old", True)]
    assert dead in intents.owners()
    with intents.db.writing() as session:
        intents.remove(session, abandoned)
    assert intents.abandoned() == []


def test_no_intent_is_left_after_ingests(db_url: str, tmp_path):
    from dicom_chain.config import Settings
    from dicom_chain.node import Node

    from .conftest import read

    node = Node.open(Settings(home=tmp_path / "n", db=db_url))
    try:
        node.ingest(item_from_dataset(read("CT_small.dcm")))
        node.ingest(item_from_dataset(read("CT_small.dcm")))  # duplicate: no intent left either
        assert node.intents.journal is not None and node.intents.journal.path is not None
        assert node.intents.journal.path.parent == tmp_path / "n" / "storage-intents"
        assert node.intents.abandoned() == [] and node.intents.journal._open == {}
        with node.db.reading() as session:
            assert session.scalar(select(func.count()).select_from(INTENTS)) == 0
    finally:
        node.close()
    assert list((tmp_path / "n" / "storage-intents").iterdir()) == []  # a clean close leaves none
