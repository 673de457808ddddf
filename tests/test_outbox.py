"""The forward queue on SQLite and PostgreSQL: leases per study, back-off, final failures, events."""

from __future__ import annotations

import os
import random
import threading
from dataclasses import replace

import pytest
from sqlalchemy import event

from dicom_chain import outbox as outbox_module
from dicom_chain.carriers.dicom.carrier import item_from_dataset
from dicom_chain.config import Settings
from dicom_chain.db import owners
from dicom_chain.errors import ConfigError
from dicom_chain.node import Node
from dicom_chain.outbox import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    LEASE_S,
    MAX_REFUSED_ATTEMPTS,
    Destination,
    Settled,
    backoff_delay,
)
from dicom_chain.synthetic import StudySpec, ct_study
from dicom_chain.vocab import ForwardVerdict

PACS_A, PACS_B = "PACS_A@127.0.0.1:104", "PACS_B@10.0.0.9:11112"


@pytest.fixture
def queued(db_url, tmp_path):
    """A node forwarding to two PACS that received two studies of 3 instances, interleaved."""
    node = Node.open(Settings(home=tmp_path / "n", db=db_url, forward=(PACS_A, PACS_B)))
    studies = [list(ct_study(StudySpec(seed=s, instances=3, rows=8, columns=8))) for s in (1, 2)]
    for i in range(3):
        for study in studies:
            node.ingest(item_from_dataset(study[i]))
    yield node
    node.close()


def test_every_stored_instance_is_queued_for_every_destination(queued):
    stats = {s.destination: s for s in queued.outbox.stats()}
    assert {d: s.pending for d, s in stats.items()} == {PACS_A: 6, PACS_B: 6}


def test_duplicates_are_not_queued_again(queued):
    again = next(ct_study(StudySpec(seed=1, instances=3, rows=8, columns=8)))
    assert queued.ingest(item_from_dataset(again)).outcome == "duplicate"
    assert queued.outbox.pending_count() == 12


def test_a_claim_is_one_study_and_leased(queued):
    now = 1e12
    first = queued.outbox.claim(PACS_A, limit=10, now=now)
    assert len(first) == 3 and len({i.study_instance_uid for i in first}) == 1
    second = queued.outbox.claim(PACS_A, limit=10, now=now)
    assert len(second) == 3 and second[0].study_instance_uid != first[0].study_instance_uid
    assert queued.outbox.claim(PACS_A, limit=10, now=now) == []  # all leased
    assert (
        len(queued.outbox.claim(PACS_A, limit=10, now=now + LEASE_S + 1)) == 3
    )  # a dead worker's lease ran out


def test_destinations_have_separate_queues(queued):
    now = 1e12
    items = queued.outbox.claim(PACS_A, limit=10, now=now)
    queued.outbox.settle([Settled(i, None, "down", "retry") for i in items], now=now)
    assert len(queued.outbox.claim(PACS_B, limit=10, now=now)) == 3


def test_done_is_final_and_recorded(queued):
    now = 1e12
    items = queued.outbox.claim(PACS_A, limit=10, now=now)
    queued.outbox.settle([Settled(i, 0x0000, "", "done") for i in items], now=now)
    events = [e for e in queued.ledger.iter_events() if e.type == "instance.forwarded"]
    assert [(e.outcome, e.actor) for e in events] == [("success", PACS_A)] * 3
    assert {e.sop_uid for e in events} == {i.sop_instance_uid for i in items}
    stats = {s.destination: s for s in queued.outbox.stats()}
    assert (stats[PACS_A].done, stats[PACS_A].pending) == (3, 3)


def test_retry_waits_with_back_off_and_never_gives_up(queued):
    now = 1e12
    items = queued.outbox.claim(PACS_A, limit=10, now=now)
    ids = {i.id for i in items}
    for _ in range(12):  # far more than MAX_REFUSED_ATTEMPTS: busy or down is never final
        queued.outbox.settle([Settled(i, 0xA700, "busy", "retry") for i in items], now=now)
        soon = queued.outbox.claim(PACS_A, limit=10, now=now + 0.5)
        assert not ids & {i.id for i in soon}  # not before its back-off
        queued.outbox.release(soon)
        now += BACKOFF_MAX_S * 2
        items = queued.outbox.claim(PACS_A, limit=10, now=now)
        assert {i.id for i in items} == ids
    assert not [e for e in queued.ledger.iter_events() if e.type == "instance.forwarded"]
    assert {s.destination: s.failed for s in queued.outbox.stats()}[PACS_A] == 0


def test_refusal_fails_for_good_after_a_few_attempts(queued):
    now = 1e12
    items = queued.outbox.claim(PACS_A, limit=1, now=now)
    for _ in range(MAX_REFUSED_ATTEMPTS):
        queued.outbox.settle([Settled(items[0], 0xC000, "refused with 0xC000", "refused")], now=now)
        now += BACKOFF_MAX_S * 2
        retry = queued.outbox.claim(PACS_A, limit=1, now=now)
        if retry and retry[0].id == items[0].id:
            items = retry
    stats = {s.destination: s for s in queued.outbox.stats()}
    assert stats[PACS_A].failed == 1 and "0xC000" in stats[PACS_A].last_error
    [event] = [e for e in queued.ledger.iter_events() if e.type == "instance.forwarded"]
    assert event.outcome == "major-failure" and event.details["status"] == "0xC000"


def test_only_refusals_count_towards_the_dead_letter(queued):
    """Retries while a PACS is down are not refusals: one refusal after many of them leaves the
    instance pending (it used to be final once all attempts reached the bound)."""
    now = 1e12
    [item] = queued.outbox.claim(PACS_A, limit=1, now=now)
    for _ in range(MAX_REFUSED_ATTEMPTS * 2):
        queued.outbox.settle([Settled(item, None, "no association", "retry")], now=now)
        now += BACKOFF_MAX_S * 2
    queued.outbox.settle([Settled(item, 0xC000, "refused with 0xC000", "refused")], now=now)
    stats = {s.destination: s for s in queued.outbox.stats()}
    assert stats[PACS_A].failed == 0 and queued.outbox.dead_letters() == []


def test_a_row_refused_before_is_claimed_alone(queued):
    """So that it never again holds up the rest of its study: the others go in a batch of their
    own, and the suspect on its own."""
    now = 1e12
    study = queued.outbox.claim(PACS_A, limit=10, now=now)
    assert len(study) == 3
    suspect = study[0]
    queued.outbox.settle([Settled(suspect, 0xC000, "refused", "refused")], now=now)
    queued.outbox.release(study[1:])
    now += BACKOFF_MAX_S * 2  # the suspect is due again, first by id
    alone = queued.outbox.claim(PACS_A, limit=10, now=now)
    assert [i.id for i in alone] == [suspect.id]
    batches = [queued.outbox.claim(PACS_A, limit=10, now=now) for _ in range(2)]  # the other study too
    [rest] = [b for b in batches if b[0].study_instance_uid == suspect.study_instance_uid]
    assert {i.id for i in rest} == {i.id for i in study[1:]}


def test_replay_queues_dead_letters_again_with_an_event(queued):
    now = 1e12
    [item] = queued.outbox.claim(PACS_A, limit=1, now=now)
    for _ in range(MAX_REFUSED_ATTEMPTS):
        queued.outbox.settle([Settled(item, 0xC000, "refused with 0xC000", "refused")], now=now)
    assert [d.id for d in queued.outbox.dead_letters(PACS_A)] == [item.id]
    assert queued.outbox.replay("operator@host", PACS_B) == 0  # another destination's: none
    assert queued.outbox.replay("operator@host", sop_instance_uid=item.sop_instance_uid) == 1
    assert queued.outbox.dead_letters() == []
    again = queued.outbox.claim(PACS_A, limit=10)  # due now, refusals reset: with its study
    assert item.id in {i.id for i in again} and len(again) == 3
    [event] = [e for e in queued.ledger.iter_events() if e.type == "forward.replayed"]
    assert (event.actor, event.sop_uid, event.details["destination"]) == (
        "operator@host",
        item.sop_instance_uid,
        PACS_A,
    )


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter():
    rng = random.Random(7)
    delays = [backoff_delay(n, rng) for n in range(1, 15)]
    assert BACKOFF_FIRST_S * 0.8 <= delays[0] <= BACKOFF_FIRST_S * 1.2
    assert all(d <= BACKOFF_MAX_S * 1.2 for d in delays)
    assert delays[-1] >= BACKOFF_MAX_S * 0.8
    assert delays[3] > delays[0] * 4


@pytest.mark.parametrize(
    "text", ["PACS@host:104", "A@10.0.0.1:11112", " LONG_AE_TITLE_16@pacs.example.org:4242 "]
)
def test_destination_round_trip(text):
    assert str(Destination.parse(text)) == text.strip()


@pytest.mark.parametrize(
    "text", ["PACS", "PACS@host", "@host:104", "PACS@host:0", "PACS@host:99999", "A" * 17 + "@h:1"]
)
def test_bad_destinations_are_config_errors(text):
    with pytest.raises(ConfigError):
        Destination.parse(text)


def _lease_to(node, owner: str, items) -> None:
    from sqlalchemy import update

    from dicom_chain.db.models import OutboxRow

    with node.db.writing() as session:
        session.execute(
            update(OutboxRow).where(OutboxRow.id.in_([i.id for i in items])).values(lease_owner=owner)
        )


def test_leases_of_a_dead_process_on_this_host_are_freed(queued):
    now = 1e12
    me = owners.current()
    items = queued.outbox.claim(PACS_A, limit=10, now=now)
    _lease_to(queued, str(replace(me, pid=999_999_999)), items)  # no such pid
    other = queued.outbox.claim(PACS_A, limit=10, now=now + 1)  # leased by this (living) process
    assert other[0].study_instance_uid != items[0].study_instance_uid
    assert queued.outbox.free_dead_leases() == len(items)  # only the dead pid's rows
    again = queued.outbox.claim(PACS_A, limit=10, now=now + 2)
    assert {i.id for i in again} == {i.id for i in items}


def test_a_reused_pid_does_not_keep_a_dead_owner_s_lease(queued):
    me = owners.current()
    items = queued.outbox.claim(PACS_A, limit=10, now=1e12)
    _lease_to(queued, str(replace(me, started=me.started + 1)), items)  # our pid, an earlier process
    assert queued.outbox.free_dead_leases() == len(items)


def test_leases_of_other_hosts_and_of_the_living_are_left_to_expire(queued):
    me = owners.current()
    first = queued.outbox.claim(PACS_A, limit=10, now=1e12)
    _lease_to(queued, str(replace(me, host="other-host", pid=999_999_999)), first)
    queued.outbox.claim(PACS_A, limit=10, now=1e12)  # ours
    assert queued.outbox.free_dead_leases() == 0


def _claim_in_child(node, destination: str) -> None:
    code = 1
    try:
        code = 0 if node.outbox.claim(destination, limit=10) else 2
    finally:
        os._exit(code)


def test_a_forked_child_leases_under_its_own_name(queued):
    """The lease owner is computed per process, not at import: a forked worker's rows are its own,
    and given back once it is gone."""
    from sqlalchemy import select

    from dicom_chain.db.models import OutboxRow

    pid = os.fork()
    if pid == 0:
        _claim_in_child(queued, PACS_B)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with queued.db.reading() as session:
        holders = set(session.scalars(select(OutboxRow.lease_owner).where(OutboxRow.lease_owner != "")))
    [holder] = [owners.Owner.parse(h) for h in holders]
    assert holder is not None and holder.pid == pid != owners.current().pid
    assert queued.outbox.free_dead_leases() == 3  # the child has exited: its study comes back


def test_a_settle_is_one_transaction_of_the_same_few_statements_whatever_the_batch(queued):
    """The settle holds the write lock every receipt needs: its statements must not grow with the batch."""
    statements: list[str] = []
    commits: list[int] = []
    engines = {queued.db.writer, queued.db.relaxed}
    me = threading.get_ident()  # not the index writer's statements, which may run meanwhile

    def on_statement(_c, _cur, statement, *_) -> None:
        if threading.get_ident() == me:
            statements.append(statement)

    def on_commit(_conn) -> None:
        if threading.get_ident() == me:
            commits.append(1)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", on_statement)
        event.listen(engine, "commit", on_commit)
    try:
        counts = []
        for destination, take in ((PACS_A, 1), (PACS_B, 3)):
            items = queued.outbox.claim(destination, limit=10)[:take]
            statements.clear()
            commits.clear()
            verdicts = [ForwardVerdict.DONE, ForwardVerdict.RETRY, ForwardVerdict.REFUSED][:take]
            queued.outbox.settle([Settled(i, 0, "", v) for i, v in zip(items, verdicts, strict=True)])
            assert len(commits) == 1
            counts.append(len([s for s in statements if not s.startswith("BEGIN")]))
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", on_statement)
            event.remove(engine, "commit", on_commit)
    assert counts[0] == counts[1] <= 5  # rows read, rows written, event head, events, head moved
    states = {s.destination: (s.pending, s.done) for s in queued.outbox.stats()}
    assert states == {PACS_A: (5, 1), PACS_B: (5, 1)}


def test_a_large_batch_is_settled_in_chunks_so_no_receipt_waits_for_all_of_it(queued, monkeypatch):
    monkeypatch.setattr(outbox_module, "SETTLE_CHUNK", 2)
    commits: list[int] = []
    on_commit = lambda _conn: commits.append(1)  # noqa: E731
    items = queued.outbox.claim(PACS_A, limit=10)
    items += queued.outbox.claim(PACS_A, limit=10)
    engines = {queued.db.writer, queued.db.relaxed}
    for engine in engines:
        event.listen(engine, "commit", on_commit)
    try:
        queued.outbox.settle([Settled(i, 0, "", ForwardVerdict.DONE) for i in items])
    finally:
        for engine in engines:
            event.remove(engine, "commit", on_commit)
    assert len(items) == 6 and len(commits) == 3
    forwarded = [e for e in queued.ledger.iter_events() if e.type == "instance.forwarded"]
    assert sorted(e.sop_uid for e in forwarded) == sorted(i.sop_instance_uid for i in items)
