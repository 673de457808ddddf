"""A whole-node verify run on the record: the report, the index states it implies, its event.

``verify.py`` says what holds; this module is what a run does about it: store each instance's
state in the query index (returned by C-FIND) and append a ``verify.node`` event signed with the
node key, so that a failed check is an alert in the audit trail and not only a line on a screen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from dicom_chain.actors import local_user
from dicom_chain.block import utc_now
from dicom_chain.config import Settings
from dicom_chain.errors import DicomChainError
from dicom_chain.events import EventDraft
from dicom_chain.findings import Report
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import Ledger
from dicom_chain.nodekey import owned_key
from dicom_chain.qr import index
from dicom_chain.storage import Storage
from dicom_chain.verify import index_states, verify_node
from dicom_chain.vocab import EventType, Outcome

MAX_PROBLEMS_IN_EVENT = 50  # the first problems name where to look; the count says how many in all

Advance = Callable[[int], None]
# Given the number of steps, a context that yields the callback verification advances (a bar).
Tracker = Callable[[int], AbstractContextManager[Advance]]


def pinned_keys(settings: Settings, given: frozenset[bytes] | None) -> frozenset[bytes] | None:
    """The signers ``verify FILES`` accepts: the keys given, else, from the ledger, the keys of the
    node's chains (the research chain has its own) and of every institution ever registered (removed ones too:
    files they signed before removal stay theirs). None when nothing is pinned: a signature then
    proves only that a file is self-consistent, not who signed it. With no ledger, the home's key."""
    if given:
        return given
    keys: set[bytes] = set()
    sqlite_file = settings.sqlite_file
    if settings.db is None and (sqlite_file is None or not sqlite_file.is_file()):
        # no ledger: the home's key file is all there is (with a ledger, its chains name the key;
        # a key file elsewhere, such as ./var beside a PostgreSQL URL, is no one's to pin)
        if settings.key_path.is_file():
            keys.add(NodeKey.load(settings.key_path).public_key)
    else:
        from dicom_chain.sharing.registry import Registry

        ledger = Ledger(settings.db_url)
        try:
            keys.update(chain.public_key for chain in ledger.chains())
            keys.update(inst.public_key for inst in Registry(ledger, None).all(include_removed=True))
        finally:
            ledger.close()
    return frozenset(keys) or None


@contextmanager
def untracked(_total: int) -> Iterator[Advance]:
    yield lambda _n: None


@dataclass(frozen=True)
class NodeVerification:
    report: Report
    not_recorded: str = ""  # why the run is not on the record as an event; "" when it is


def verify_whole_node(
    settings: Settings,
    trusted_keys: frozenset[bytes] | None = None,
    *,
    update_index: bool = False,
    track: Tracker = untracked,
) -> NodeVerification:
    """Check the ledger at ``settings.db_url`` against ``settings.storage_dir``, then put the run
    on the record (and, with ``update_index``, every instance's state in the query index)."""
    ledger = Ledger(settings.db_url)
    try:
        store = Storage(settings.storage_dir)
        with track(ledger.block_count() + ledger.event_count()) as advance:
            report = verify_node(ledger, store, trusted_keys, advance)
        if update_index:
            record_index_states(ledger, report, store)
        return NodeVerification(report, record_run(ledger, report, settings))
    finally:
        ledger.close()


def record_index_states(ledger: Ledger, report: Report, store: Storage) -> None:
    """Every indexed instance verified now, except those the report found altered or missing."""
    index.before_read(ledger.db)  # instances still pending are verified as well
    with ledger.db.writing() as session:
        index.record_verification(session, index_states(report, store), utc_now())


def verify_event(report: Report, actor: str) -> EventDraft:
    """The ``verify.node`` event of a run: outcome, counts, the first problems (a failure alerts)."""
    problems = [f"{f.kind}: {f.path or f.sop_instance_uid or f.chain_id}" for f in report.errors]
    return EventDraft(
        EventType.VERIFY_NODE,
        outcome=Outcome.SUCCESS if report.ok else Outcome.MAJOR_FAILURE,
        actor=actor,
        reason="intact" if report.ok else f"{len(problems)} problem(s) found",
        details={
            "blocks": report.blocks_checked,
            "files": report.files_checked,
            "events": report.events_checked,
            "errors": len(problems),
            "problems": problems[:MAX_PROBLEMS_IN_EVENT],
        },
    )


def record_run(ledger: Ledger, report: Report, settings: Settings) -> str:
    """Append the run's event signed with the node key; returns why it was not recorded, or "".

    Verifying never needs the key: a copy of a ledger without its key, or a read-only one, is
    still checked, and the caller is told the run left no trace. Only a key one of the ledger's
    chains records signs (``owned_key``): any other would put an event of no chain in the log."""
    try:
        key = owned_key(settings, ledger)
    except DicomChainError as exc:
        return f"{exc}; this verify run is not recorded as an event"
    try:
        ledger.record(key, verify_event(report, local_user()))
    except DicomChainError as exc:
        return f"this verify run is not recorded as an event: {exc}"
    return ""
