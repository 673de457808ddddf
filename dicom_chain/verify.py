"""Verification of files on their own, and of a whole node (ledger + store).

Every problem becomes a Finding naming the file and its item (a DICOM file's SOP Instance UID);
nothing here raises on bad input, because a verifier that stops at the first broken file hides
the others. Files are read through their carrier (``carriers.registry``), so any format a carrier
reads is verified alike. Checking files alone loads no database code: ``verify FILES`` runs where
SQLAlchemy is not even installed.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_chain.block import Block
from dicom_chain.carriers.base import Carried
from dicom_chain.carriers.registry import open_file
from dicom_chain.chain import Located, check_links
from dicom_chain.errors import (
    ContentHashError,
    DicomChainError,
    LossyReencodingError,
    MalformedBlockError,
    NoBlockError,
    NotDicomError,
    SignatureError,
    UnknownFormatError,
)
from dicom_chain.events import FIRST_PREV_HASH, FIRST_SEQ, Event
from dicom_chain.findings import Report
from dicom_chain.storage import TEMP_PREFIX
from dicom_chain.vocab import FindingKind, Severity, VerificationState

if TYPE_CHECKING:
    from dicom_chain.ledger import Ledger
    from dicom_chain.storage import Storage

ERROR = Severity.ERROR

Advance = Callable[[int], None]


def _noop(_: int) -> None:
    pass


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders walked in a stable order (our temp files left out)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                out.extend(Path(dirpath, n) for n in sorted(filenames) if not n.startswith(TEMP_PREFIX))
        else:
            out.append(path)
    return out


def check_file(path: Path, report: Report, trusted_keys: frozenset[bytes] | None) -> Block | None:
    """Check one file on its own: block decodes, signature holds, content unchanged.

    Returns the block whenever it is authentic (even on altered content), else None. What the
    parser warns about becomes information on this file instead of lines on stderr.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        block = _check_file(path, report, trusted_keys)
    said: set[str] = set()
    for warning in caught:
        text = " ".join(str(warning.message).split())
        if text not in said:
            said.add(text)
            report.add(Severity.INFO, FindingKind.PARSER_WARNING, f"parser: {text}", path=str(path))
    return block


def stored_file_fault(path: Path, block_hash: str) -> str:
    """Why the stored file at ``path`` may not leave as the instance whose block is ``block_hash``
    ("" when it may): gone, altered since it was chained, or holding another block. A release
    asks just before sending, since the last ``verify`` may be long ago: another institution
    would refuse such a file, and count it against this one's score."""
    report = Report()
    found = _stored_file_block(path, report, {})
    errors = [f"{f.kind}: {f.message}" for f in report.findings if f.severity == ERROR]
    if errors:
        return "; ".join(errors)
    if found is None or found.hash != block_hash:
        return f"{FindingKind.REPLACED}: the file holds another block than the ledger's for it"
    return ""


def _check_file(path: Path, report: Report, trusted_keys: frozenset[bytes] | None) -> Block | None:
    where = str(path)
    try:
        carried = open_file(path)
    except UnknownFormatError:
        report.add(ERROR, FindingKind.NOT_DICOM, "not DICOM, nor any format a carrier reads", path=where)
        return None
    except NotDicomError:
        report.add(ERROR, FindingKind.NOT_DICOM, "not a DICOM file", path=where)
        return None
    except OSError as exc:
        report.add(ERROR, FindingKind.UNREADABLE, f"cannot read: {exc.strerror}", path=where)
        return None
    item_id = carried.item_id_hint
    try:
        block = carried.read_block()
    except NoBlockError:
        message = f"{carried.carrier.name.upper()} file without a DICOM_CHAIN block"
        report.add(ERROR, FindingKind.NO_BLOCK, message, path=where, sop_instance_uid=item_id)
        return None
    except MalformedBlockError as exc:
        report.add(ERROR, FindingKind.MALFORMED_BLOCK, str(exc), path=where, sop_instance_uid=item_id)
        return None
    h = block.header
    loc: dict[str, Any] = {
        "path": where,
        "sop_instance_uid": item_id or h.item_id,
        "height": h.height,
        "chain_id": h.chain_id,
    }
    if not signer_holds(block, trusted_keys, report, loc):
        return None
    try:
        carried.check_content(block)
    except LossyReencodingError as exc:  # not tampering, yet not the image chained either
        report.add(ERROR, FindingKind.LOSSY_REENCODED, str(exc), **loc)
    except ContentHashError as exc:
        report.add(ERROR, FindingKind.ALTERED, str(exc), **loc)
    except DicomChainError as exc:
        report.add(ERROR, FindingKind.ALTERED, f"content cannot be hashed: {exc}", **loc)
    else:  # the names are content too: only a block copied onto identical content gets this far
        _check_names(carried, block, report, loc)
    return block  # authentic block: it still takes part in the link checks


def signer_holds(
    block: Block, trusted_keys: frozenset[bytes] | None, report: Report, loc: dict[str, Any]
) -> bool:
    """Whether ``block``'s signature verifies and, when keys are pinned, its key is one of them;
    otherwise the finding (bad signature, untrusted key) is added at ``loc``. Every carrier's
    files are judged by this one rule (DICOM here, pictures in carriers/picture/chain.py)."""
    try:
        block.verify_signature()
    except SignatureError as exc:
        report.add(ERROR, FindingKind.BAD_SIGNATURE, str(exc), **loc)
        return False
    if trusted_keys is not None and block.public_key not in trusted_keys:
        message = (
            f"signed by an unknown key {block.header.key_id} (untrusted key: none of the pinned signers)"
        )
        report.add(ERROR, FindingKind.UNTRUSTED_KEY, message, **loc)
        return False
    return True


def _check_names(carried: Carried, block: Block, report: Report, loc: dict[str, Any]) -> None:
    """A block names its item: on another file (a block copied over) it vouches for nothing there,
    even when the two contents hash the same (docs/design.md 3)."""
    try:
        ids = carried.identity()
    except DicomChainError:
        return  # a file without names: its content check has spoken
    h = block.header
    if (ids.item_id, ids.group_id) != (h.item_id, h.group_id):
        message = (
            f"the block names instance {h.item_id} of study {h.group_id}; "
            f"the file is instance {ids.item_id} of study {ids.group_id}"
        )
        report.add(ERROR, FindingKind.ALTERED, message, **loc)


def verify_files(
    paths: Iterable[Path],
    trusted_keys: frozenset[bytes] | None = None,
    advance: Advance = _noop,
    *,
    complete: bool = False,
    ledger: Ledger | None = None,
) -> Report:
    """A set of files as a slice of a chain: each block, and every link between the files given.

    A subset of a study is not a removal: a missing index is an error only with ``complete``.
    With the node's ``ledger``, a link whose predecessor is not among the files is checked against
    the block the ledger records there instead of being left unchecked."""
    report = Report(signers_checked=trusted_keys is not None)
    if trusted_keys is None:
        report.add(
            Severity.INFO,
            FindingKind.KEY_NOT_PINNED,
            "signer not checked: each signature was checked against the key its block carries; pin "
            "the node's key (--public-key, or a node home) to check who signed",
        )
    located: list[Located] = []
    unplaced = 0  # files whose block is malformed: present, but their place in the chain is unknown
    for path in expand_paths(paths):
        before = len(report.findings)
        block = check_file(path, report, trusted_keys)
        report.files_checked += 1
        if block is not None:
            located.append(Located(block, str(path)))
            report.blocks_checked += 1
        elif any(f.kind == FindingKind.MALFORMED_BLOCK for f in report.findings[before:]):
            unplaced += 1
        advance(1)
    check_links(located, report, gaps_are_errors=False, unplaced=unplaced, complete=complete)
    if ledger is not None:
        _check_links_in_ledger(located, ledger, report)
    return report


def _check_links_in_ledger(located: list[Located], ledger: Ledger, report: Report) -> None:
    """Each link whose predecessor (height - 1, study index - 1) is not among the files given:
    the hash the block names must be the one the ledger records there. A study link that holds is
    no longer unchecked; one that does not, or names a block the ledger lacks, is broken. Blocks
    of chains the ledger does not hold (another node's) stay as they were: unchecked."""
    heights = {(f.block.header.chain_id, f.block.header.height) for f in located}
    indices = {
        (f.block.header.chain_id, f.block.header.study_instance_uid, f.block.header.study_index)
        for f in located
    }
    known = {chain.chain_id for chain in ledger.chains()}
    open_links: list[tuple[Located, bool, bool]] = []
    need_heights: dict[str, set[int]] = {}
    need_studies: dict[str, set[str]] = {}
    for found in located:
        h = found.block.header
        if h.chain_id not in known:
            continue
        by_height = h.height > 0 and (h.chain_id, h.height - 1) not in heights
        by_study = h.study_index > 0 and (h.chain_id, h.study_instance_uid, h.study_index - 1) not in indices
        if by_height:
            need_heights.setdefault(h.chain_id, set()).add(h.height - 1)
        if by_study:
            need_studies.setdefault(h.chain_id, set()).add(h.study_instance_uid)
        if by_height or by_study:
            open_links.append((found, by_height, by_study))
    at_height = {chain: ledger.block_hashes(chain, wanted) for chain, wanted in need_heights.items()}
    in_study = {chain: ledger.study_block_hashes(chain, wanted) for chain, wanted in need_studies.items()}
    settled: set[str] = set()
    for found, by_height, by_study in open_links:
        h = found.block.header
        loc = {"path": found.where, "sop_instance_uid": h.item_id, "height": h.height, "chain_id": h.chain_id}
        if by_height:
            recorded = at_height[h.chain_id].get(h.height - 1)
            if recorded != h.prev_hash:
                report.add(
                    ERROR,
                    FindingKind.BROKEN_LINK,
                    f"block {h.height} does not follow block {h.height - 1} "
                    + ("the ledger records" if recorded else "(the ledger records no such block)"),
                    **loc,
                )
        if by_study:
            recorded = in_study[h.chain_id].get((h.study_instance_uid, h.study_index - 1))
            if recorded == h.study_prev_hash:
                settled.add(found.where)
            else:
                report.add(
                    ERROR,
                    FindingKind.BROKEN_STUDY_LINK,
                    f"study {h.study_instance_uid}: index {h.study_index} does not follow index "
                    f"{h.study_index - 1} "
                    + ("the ledger records" if recorded else "(the ledger records no such block)"),
                    **loc,
                )
    report.findings = [
        f for f in report.findings if not (f.kind == FindingKind.UNCHECKED_LINK and f.path in settled)
    ]


def verify_node(
    ledger: Ledger, storage: Storage, trusted_keys: frozenset[bytes] | None = None, advance: Advance = _noop
) -> Report:
    """The whole node: ledger blocks against their files, contiguous heights, the event log."""
    report = Report()  # signers are checked: each chain's key is on the record, and pinned if given
    referenced: set[str] = set()
    known_keys: set[bytes] = set()
    received: list[Block] = []  # blocks of items another institution released to us (10.6)
    for chain in ledger.chains():
        known_keys.add(chain.public_key)
        if trusted_keys is not None and chain.public_key not in trusted_keys:
            report.add(
                ERROR,
                FindingKind.UNTRUSTED_KEY,
                f"chain {chain.chain_id} is signed by untrusted key {chain.key_id}",
                chain_id=chain.chain_id,
            )
        located = list(
            _ledger_blocks(ledger, storage, chain.chain_id, chain.public_key, report, referenced, advance)
        )
        received += [found.block for found in located if found.block.header.origin is not None]
        check_links(located, report, gaps_are_errors=True)
        last = located[-1].block if located else None
        if (last.header.height if last else -1) != chain.head_height or (
            last is not None and last.hash != chain.head_hash
        ):
            report.add(
                ERROR,
                FindingKind.HEAD_MISMATCH,
                f"chain head says height {chain.head_height}, the blocks end at "
                f"{last.header.height if last else 'nothing'}: blocks were removed or added",
                chain_id=chain.chain_id,
            )
    for rel in storage.iter_files():
        if rel not in referenced:
            report.files_checked += 1
            _report_foreign(report, storage.path(rel))
    _check_origins(ledger, received, report)
    _report_versions(ledger, report)
    _check_event_log(ledger, known_keys, report, advance)
    return report


def _report_versions(ledger: Ledger, report: Report) -> None:
    """Each instance with several versions, and who sent each (info: versions are corrections,
    but one that replaced another sender's instance is what a reader must be able to see)."""
    from sqlalchemy import func, select

    from dicom_chain.ledger import BLOCKS
    from dicom_chain.versions import versions_of

    with ledger.db.reading() as session:
        several = session.execute(
            select(BLOCKS.c.chain_id, BLOCKS.c.sop_instance_uid)
            .group_by(BLOCKS.c.chain_id, BLOCKS.c.sop_instance_uid)
            .having(func.count() > 1)
            .order_by(BLOCKS.c.chain_id, BLOCKS.c.sop_instance_uid)
        ).all()
        for chain_id, sop in several:
            versions = versions_of(session, chain_id, sop)
            made = ", ".join(f"v{v.version} by {v.sender or 'an unknown sender'}" for v in versions)
            report.add(
                Severity.INFO,
                FindingKind.VERSIONS,
                f"{len(versions)} versions: {made}",
                sop_instance_uid=sop,
                chain_id=chain_id,
            )


def _check_origins(ledger: Ledger, received: list[Block], report: Report) -> None:
    """Each block naming an ``origin`` (an item another institution released to us, 10.6): the
    sender's block kept in the ledger hashes to ``origin.block_hash``, is signed by the registered
    key of ``origin.institution`` (removed since or not) and records the same content hash."""
    if not received:
        return
    from sqlalchemy import select

    from dicom_chain.db.models import OriginBlockRow
    from dicom_chain.sharing.registry import Registry

    with ledger.db.reading() as session:
        kept = {row.block_hash: row.block for row in session.scalars(select(OriginBlockRow))}
    registry = Registry(ledger, None)
    for block in received:
        h = block.header
        origin = h.origin
        assert origin is not None  # only blocks with an origin are collected
        loc = {"sop_instance_uid": h.item_id, "height": h.height, "chain_id": h.chain_id}
        text = kept.get(block.hash)
        if text is None:
            report.add(ERROR, FindingKind.BROKEN_ORIGIN, "the sender's block is not in the ledger", **loc)
            continue
        try:
            sender = Block.from_bytes(text.encode("utf-8"))
        except MalformedBlockError as exc:
            report.add(ERROR, FindingKind.BROKEN_ORIGIN, f"the sender's block is garbled: {exc}", **loc)
            continue
        institution = registry.by_name(origin.institution, include_removed=True)
        problem = None
        if sender.hash != origin.block_hash:
            problem = "the kept sender's block does not hash to the origin's block hash"
        elif institution is None:
            problem = f"origin names {origin.institution}, never registered here"
        elif sender.header.key_id != origin.key_id or institution.key_id != origin.key_id:
            problem = f"origin key {origin.key_id} is not {origin.institution}'s registered key"
        elif sender.header.content_hash != h.content_hash:
            problem = "the sender's block records another content hash than ours"
        else:
            try:
                sender.verify_signature(frozenset({institution.public_key}))
            except SignatureError as exc:
                problem = f"the sender's block: {exc}"
        if problem is not None:
            report.add(ERROR, FindingKind.BROKEN_ORIGIN, problem, **loc)


def _ledger_blocks(
    ledger: Ledger,
    storage: Storage,
    chain_id: str,
    public_key: bytes,
    report: Report,
    referenced: set[str],
    advance: Advance,
) -> Iterator[Located]:
    for height, stored in ledger.iter_blocks(chain_id):
        advance(1)
        report.blocks_checked += 1
        if isinstance(stored, str):
            report.add(ERROR, FindingKind.LEDGER_ALTERED, stored, height=height, chain_id=chain_id)
            continue
        block = stored.block
        h = block.header
        loc = {"sop_instance_uid": h.item_id, "height": height, "chain_id": chain_id}
        if block.hash != stored.block_hash or h.height != height or h.chain_id != chain_id:
            report.add(ERROR, FindingKind.LEDGER_ALTERED, "ledger row does not match its own block", **loc)
            continue
        if block.public_key != public_key:
            report.add(
                ERROR, FindingKind.BAD_SIGNATURE, "block signed by another key than its chain's", **loc
            )
            continue
        try:
            block.verify_signature()
        except SignatureError as exc:
            report.add(ERROR, FindingKind.BAD_SIGNATURE, f"ledger block: {exc}", **loc)
            continue
        yield Located(block, f"ledger height {height}")
        _check_stored_file(storage, stored.path, block, report, loc)
        referenced.add(stored.path)


def _check_stored_file(storage: Storage, rel: str, block: Block, report: Report, loc: dict[str, Any]) -> None:
    path = storage.path(rel)
    where = {**loc, "path": str(path)}
    report.files_checked += 1
    found = _stored_file_block(path, report, where)
    if found is None:
        return
    if found.to_bytes() != block.to_bytes():
        other = found.header
        report.add(
            ERROR,
            FindingKind.RE_ORDERED if other.chain_id == block.header.chain_id else FindingKind.REPLACED,
            f"file holds block {other.height} of chain {other.chain_id[:8]}, ledger expects block "
            f"{block.header.height}",
            **where,
        )


def _stored_file_block(path: Path, report: Report, where: dict[str, Any]) -> Block | None:
    """The block in the stored file at ``path`` (None if there is none to trust), what is wrong
    with the file (missing, altered, ...) added to ``report`` at ``where``."""
    if not path.is_file():
        report.add(ERROR, FindingKind.MISSING_FILE, "file of this block is missing from the store", **where)
        return None
    file_report = Report()
    found = check_file(path, file_report, None)
    for finding in file_report.findings:
        report.add(finding.severity, finding.kind, finding.message, **where)
    return found


def _report_foreign(report: Report, path: Path) -> None:
    """A file the ledger does not know: named by path, and by its item id when it has one."""
    where = {"path": str(path)}
    try:
        carried = open_file(path)
    except (DicomChainError, OSError):
        what = "file in the store that the ledger does not know (not DICOM)"
        report.add(ERROR, FindingKind.FOREIGN_FILE, what, **where)
        return
    where["sop_instance_uid"] = carried.item_id_hint
    try:
        block = carried.read_block()
    except DicomChainError:
        what = "no valid block"
    else:
        what = f"block {block.header.height} of chain {block.header.chain_id[:8]}"
    report.add(
        ERROR, FindingKind.FOREIGN_FILE, f"file in the store that the ledger does not know ({what})", **where
    )


def _check_event_log(ledger: Ledger, known_keys: set[bytes], report: Report, advance: Advance) -> None:
    """The log up to the head read first: a live node appends while this runs, and what it appends
    meanwhile is the next run's to check (read after, it was once taken for events added)."""
    head_seq, head_hash = ledger.event_head()
    expected_seq, prev_hash = FIRST_SEQ, FIRST_PREV_HASH
    for row in ledger.iter_event_rows(max_seq=head_seq):
        event, stored_hash = Event.from_stored(row._mapping), row.hash
        advance(1)
        report.events_checked += 1
        where = {"height": None, "sop_instance_uid": event.sop_uid}
        if event.seq != expected_seq:
            report.add(
                ERROR,
                FindingKind.EVENT_GAP,
                f"event log jumps from {expected_seq - 1} to {event.seq}",
                **where,
            )
        if event.prev_hash != prev_hash:
            report.add(
                ERROR,
                FindingKind.EVENT_BROKEN_LINK,
                f"event {event.seq} does not follow its predecessor",
                **where,
            )
        if event.hash != stored_hash:
            report.add(
                ERROR,
                FindingKind.EVENT_ALTERED,
                f"event {event.seq} was changed after it was written",
                **where,
            )
        try:
            event.verify_signature()
            if event.public_key not in known_keys:
                raise SignatureError("signed by a key of no chain in this ledger")
        except (SignatureError, MalformedBlockError) as exc:
            report.add(ERROR, FindingKind.EVENT_BAD_SIGNATURE, f"event {event.seq}: {exc}", **where)
        expected_seq, prev_hash = event.seq + 1, stored_hash
    if head_seq != expected_seq - 1 or head_hash != prev_hash:
        report.add(
            ERROR,
            FindingKind.EVENT_HEAD_MISMATCH,
            f"event log head says {head_seq}, the log ends at {expected_seq - 1}: events removed or added",
        )
        return
    last_seq, now_head = _log_end(ledger)
    if last_seq > now_head:  # read in one statement: no append falls between the two
        report.add(
            ERROR,
            FindingKind.EVENT_HEAD_MISMATCH,
            f"event log head says {now_head}, the log ends at {last_seq}: events added past the head",
        )


def _log_end(ledger: Ledger) -> tuple[int, int]:
    """The last event's seq and the head's, as one statement sees them (one snapshot on any
    database: two statements at PostgreSQL's READ COMMITTED could see an append between them)."""
    from sqlalchemy import func, select  # here: verifying files alone loads no database code

    from dicom_chain.ledger import EVENT_HEAD, EVENTS

    last = select(func.coalesce(func.max(EVENTS.c.seq), 0)).scalar_subquery()
    with ledger.db.reading() as session:
        found, head = session.execute(select(last, EVENT_HEAD.c.seq).where(EVENT_HEAD.c.id == 1)).one()
    return int(found), int(head)


def index_states(report: Report, storage: Storage) -> dict[str, VerificationState]:
    """What a node report says about stored files, as index verification states by relative path."""
    root = storage.root.resolve()
    states: dict[str, VerificationState] = {}
    for finding in report.errors:
        if not finding.path:
            continue
        try:
            rel = Path(finding.path).resolve().relative_to(root).as_posix()
        except ValueError:
            continue
        missing = finding.kind == FindingKind.MISSING_FILE
        states[rel] = VerificationState.MISSING if missing else VerificationState.ALTERED
    return states
