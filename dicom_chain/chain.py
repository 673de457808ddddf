"""Link rules over a set of blocks, wherever they came from (files, ledger rows). Pure.

Two chains of links: by height across the node, and by index within each study. A missing
height is a gap (an error when the whole node is checked, information for a slice of files);
a missing study index is an error, since a study's files alone must reveal a removal, unless
files whose block could not be read (``unplaced``) may fill it: their block is already an error,
and calling a present file "missing" would name the wrong problem.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from dicom_chain.block import GENESIS_HASH, Block
from dicom_chain.findings import Report
from dicom_chain.vocab import FindingKind, Severity


@dataclass(frozen=True)
class Located:
    block: Block
    where: str  # a file path, or "ledger"


def _span(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}..{hi}"


def check_links(
    items: Iterable[Located],
    report: Report,
    *,
    gaps_are_errors: bool,
    unplaced: int = 0,
    complete: bool = True,
) -> None:
    """``complete`` False: the items are part of a study (one instance from a PACS, the newest
    versions after a re-send), so an index whose predecessor is absent is an unchecked link (info),
    not a removal."""
    by_chain: dict[str, dict[int, list[Located]]] = defaultdict(lambda: defaultdict(list))
    by_study: dict[tuple[str, str], dict[int, list[Located]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        h = item.block.header
        by_chain[h.chain_id][h.height].append(item)
        by_study[(h.chain_id, h.study_instance_uid)][h.study_index].append(item)
    for chain_id, heights in by_chain.items():
        _check_sequence(chain_id, heights, report, gaps_are_errors=gaps_are_errors)
    for (chain_id, study_uid), indices in by_study.items():
        _check_study(chain_id, study_uid, indices, report, unplaced, complete)


def _distinct(items: list[Located], report: Report, what: str, chain_id: str) -> Located:
    """One block per position; two different blocks at one position is a fork, the same one a copy.

    A fork is reported once per file that claims the position, so that each file is named."""
    first = items[0]
    for other in items[1:]:
        fork = other.block.hash != first.block.hash
        if fork and other is items[1]:
            report.add(
                Severity.ERROR,
                FindingKind.FORK,
                f"{what} is claimed by two different blocks ({first.where} and {other.where})",
                path=first.where,
                sop_instance_uid=first.block.header.sop_instance_uid,
                height=first.block.header.height,
                chain_id=chain_id,
            )
        report.add(
            Severity.ERROR if fork else Severity.INFO,
            FindingKind.FORK if fork else FindingKind.COPY,
            f"{what} is claimed by two different blocks ({first.where} and {other.where})"
            if fork
            else f"{what}: the same block is in {first.where} and {other.where}",
            path=other.where,
            sop_instance_uid=other.block.header.sop_instance_uid,
            height=other.block.header.height,
            chain_id=chain_id,
        )
    return first


def _check_sequence(
    chain_id: str, heights: dict[int, list[Located]], report: Report, *, gaps_are_errors: bool
) -> None:
    previous: Located | None = None
    gap_severity = Severity.ERROR if gaps_are_errors else Severity.INFO
    for height in sorted(heights):
        item = _distinct(heights[height], report, f"height {height}", chain_id)
        h = item.block.header
        expected_prev = previous.block.header.height + 1 if previous else 0
        if height > expected_prev and (previous is not None or gaps_are_errors):
            report.add(
                gap_severity,
                FindingKind.GAP,
                f"chain {chain_id[:8]}: height(s) {_span(expected_prev, height - 1)} missing",
                chain_id=chain_id,
                height=expected_prev,
            )
        if previous is not None and height == expected_prev and h.prev_hash != previous.block.hash:
            report.add(
                Severity.ERROR,
                FindingKind.BROKEN_LINK,
                f"block {height} does not follow block {height - 1}: "
                "a file was replaced, re-ordered or forged",
                path=item.where,
                sop_instance_uid=h.sop_instance_uid,
                height=height,
                chain_id=chain_id,
            )
        if height == 0 and h.prev_hash != GENESIS_HASH:  # pragma: no cover - BlockHeader.check forbids it
            report.add(
                Severity.ERROR,
                FindingKind.BROKEN_LINK,
                "height 0 does not start from genesis",
                path=item.where,
            )
        previous = item


def _check_study(
    chain_id: str,
    study_uid: str,
    indices: dict[int, list[Located]],
    report: Report,
    unplaced: int,
    complete: bool,
) -> None:
    previous: Located | None = None
    for index in sorted(indices):
        item = _distinct(indices[index], report, f"study {study_uid} index {index}", chain_id)
        h = item.block.header
        expected = previous.block.header.study_index + 1 if previous else 0
        if index > expected:
            where = "from the start" if previous is None else "from the middle"
            fillable = index - expected <= unplaced
            if not complete and not fillable:
                report.add(
                    Severity.INFO,
                    FindingKind.UNCHECKED_LINK,
                    f"study {study_uid}: index {index}'s predecessor(s) {_span(expected, index - 1)} "
                    "not among the files given: link unchecked (--complete demands the whole study)",
                    path=item.where,
                    sop_instance_uid=h.sop_instance_uid,
                    height=h.height,
                    chain_id=chain_id,
                )
                previous = item
                continue
            report.add(
                Severity.INFO if fillable else Severity.ERROR,
                FindingKind.MISSING_INSTANCE,
                f"study {study_uid}: instance(s) at index {_span(expected, index - 1)} "
                + (
                    "not placed: a file given with an unreadable block may hold them"
                    if fillable
                    else f"missing {where}"
                )
                + f" (seen from the next instance, SOP {h.sop_instance_uid}, index {index})",
                path=item.where,
                sop_instance_uid=h.sop_instance_uid,
                height=h.height,
                chain_id=chain_id,
            )
        elif previous is not None and h.study_prev_hash != previous.block.hash:
            report.add(
                Severity.ERROR,
                FindingKind.BROKEN_STUDY_LINK,
                f"study {study_uid}: index {index} does not follow index {index - 1}",
                path=item.where,
                sop_instance_uid=h.sop_instance_uid,
                height=h.height,
                chain_id=chain_id,
            )
        previous = item
