"""What the web console shows of studies: searched like C-FIND, a page at a time; one study's
instances with their verification state; its chain of blocks with the hops to and from other
institutions; and a check of its stored files now.

Pages are keyset pages (``after`` the last row's key), so the thousandth page costs what the
first does: a 2,000-instance study or a 100,000-study index is never loaded whole.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from sqlalchemy import select

from dicom_chain.block import utc_now
from dicom_chain.db.database import Database
from dicom_chain.db.models import BlockRow, OriginBlockRow
from dicom_chain.events import EventDraft
from dicom_chain.keys import NodeKey
from dicom_chain.ledger import EVENTS, Ledger
from dicom_chain.qr import index
from dicom_chain.qr.matching import parse_key
from dicom_chain.qr.query import Query
from dicom_chain.storage import Storage
from dicom_chain.verify import stored_file_fault
from dicom_chain.versions import Version, versions_of_many
from dicom_chain.vocab import EventType, Outcome, VerificationState

PAGE = 50  # rows a page: a screen's worth
CHAIN_PAGE = 200  # blocks a page of a study's chain: what a picture shows legibly
STUDY_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
)
STUDY_COMPUTED = ("ModalitiesInStudy", "NumberOfStudyRelatedInstances")
IMAGE_KEYS = ("SOPInstanceUID", "SeriesInstanceUID", "InstanceNumber", "Modality", "SeriesDescription")


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_after: int | None  # the key to ask the next page from; None: this is the last


def _requested(keywords: tuple[str, ...]) -> tuple[DataElement, ...]:
    out = []
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is not None:
            out.append(DataElement(tag, "UN", None))
    return tuple(out)


def _page(db: Database, query: Query, after: int, limit: int) -> Page:
    index.before_read(db)
    with db.reading() as session:
        rows = list(islice(index.search(session, query, after=after), limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1]["_pk"] if more and rows else None)


def studies(
    db: Database,
    *,
    patient: str = "",
    date_from: str = "",
    date_to: str = "",
    modality: str = "",
    after: int = 0,
    limit: int = PAGE,
) -> Page:
    """Studies as a C-FIND at STUDY level would match them: the patient's ID or name (``*``
    wildcards), a date range (YYYYMMDD), a modality among the study's series."""
    keys = {}
    if patient:
        field_ = "PatientName" if any(c.isalpha() for c in patient) and "^" in patient else "PatientID"
        keys[field_] = parse_key("PN" if field_ == "PatientName" else "LO", patient)
    if date_from or date_to:
        keys["StudyDate"] = parse_key("DA", f"{date_from}-{date_to}")
    if modality:
        keys["ModalitiesInStudy"] = parse_key("CS", modality)
    query = Query("STUDY", "STUDY", keys, _requested(STUDY_KEYS + STUDY_COMPUTED))
    return _page(db, query, after, limit)


def instances(db: Database, study_uid: str, *, after: int = 0, limit: int = PAGE) -> Page:
    """The study's instances with their verification state (``ChainVerificationState``)."""
    keys = {"StudyInstanceUID": parse_key("UI", study_uid)}
    query = Query("STUDY", "IMAGE", keys, _requested((*IMAGE_KEYS, "ChainVerificationState")))
    return _page(db, query, after, limit)


def instance(db: Database, sop_uid: str) -> dict[str, Any] | None:
    """One instance's index row (its stored ``_path`` among them), or None; ``sop_uid`` exact
    (the caller checks its form: a ``*`` in it would match as C-FIND matches)."""
    query = Query("STUDY", "IMAGE", {"SOPInstanceUID": parse_key("UI", sop_uid)}, ())
    rows = _page(db, query, 0, 1).rows
    return rows[0] if rows else None


@dataclass(frozen=True)
class ChainLink:
    """One block of a study's chain, as the picture draws it."""

    study_index: int
    block_hash: str
    study_prev_hash: str
    sop_instance_uid: str
    version: int
    timestamp: str
    state: str  # VerificationState, or "" when not yet verified
    received_from: str = ""  # the institution whose release this block links to, if one


@dataclass(frozen=True)
class Chain:
    links: list[ChainLink]
    next_after: int | None
    released_to: list[tuple[str, str]] = field(default_factory=list)  # (institution, time) of releases


def chain(
    ledger: Ledger,
    study_uid: str,
    states: dict[str, str] | None = None,
    *,
    after: int = -1,
    limit: int = CHAIN_PAGE,
) -> Chain:
    """The study's blocks in study order from ``after`` (a study index), with each instance's state
    (``states``: SOP Instance UID -> state; ``with_states`` reads them) and the hops: releases
    received and sent."""
    states = states or {}
    with ledger.db.reading() as session:
        rows = session.execute(
            select(BlockRow.study_index, BlockRow.block_hash, BlockRow.study_prev_hash,
                   BlockRow.sop_instance_uid, BlockRow.version, BlockRow.timestamp)
            .where(BlockRow.study_instance_uid == study_uid, BlockRow.study_index > after)
            .order_by(BlockRow.study_index)
            .limit(limit + 1)
        ).all()  # fmt: skip
        more = len(rows) > limit
        rows = rows[:limit]
        origins = dict(
            session.execute(
                select(OriginBlockRow.block_hash, OriginBlockRow.institution).where(
                    OriginBlockRow.block_hash.in_([r.block_hash for r in rows])
                )
            ).all()
        )
        releases = session.execute(
            select(EVENTS.c.details, EVENTS.c.time)
            .where(EVENTS.c.study_uid == study_uid, EVENTS.c.type == EventType.RELEASE_GRANTED)
            .order_by(EVENTS.c.seq)
        ).all()
    links = [
        ChainLink(
            r.study_index, r.block_hash, r.study_prev_hash, r.sop_instance_uid, r.version, r.timestamp,
            states.get(r.sop_instance_uid, ""), origins.get(r.block_hash, ""),
        )
        for r in rows
    ]  # fmt: skip
    sent = []
    for details, time in releases:
        found = json.loads(details) if isinstance(details, str) else details
        sent.append((str(found.get("to", "")), time))
    return Chain(links, rows[-1].study_index if more and rows else None, sent)


def verify_study(
    db: Database, ledger: Ledger, storage: Storage, key: NodeKey, study_uid: str, actor: str
) -> dict[str, str]:
    """Each stored instance of the study checked now against its block (gone, altered, or
    holding another block), the states kept in the index and the run recorded (``verify.node``,
    naming the study). SOP Instance UID -> state."""
    states: dict[str, str] = {}
    paths: dict[str, str] = {}
    faults: list[str] = []
    after = 0
    while True:
        page = instances(db, study_uid, after=after, limit=500)
        for row in page.rows:
            sop = str(row.get("SOPInstanceUID", ""))
            fault = stored_file_fault(storage.path(row["_path"]), str(row["_block_hash"]))
            if not fault:
                states[sop] = VerificationState.VERIFIED
            else:
                states[sop] = (
                    VerificationState.MISSING
                    if "gone" in fault or "missing" in fault
                    else VerificationState.ALTERED
                )
                faults.append(f"{sop}: {fault}")
            paths[sop] = row["_path"]
        if page.next_after is None:
            break
        after = page.next_after
    at = utc_now()
    with db.writing() as session:
        index.record_states(session, {paths[s]: VerificationState(v) for s, v in states.items()}, at)
    bad = len(faults)
    ledger.record(key, EventDraft(
        type=EventType.VERIFY_NODE, outcome=Outcome.MAJOR_FAILURE if bad else Outcome.SUCCESS,
        actor=actor, study_uid=study_uid,
        reason=f"study checked: {len(states)} instances, {bad} with problems",
        details={"study": study_uid, "instances": len(states), "problems": faults[:50]},
    ))  # fmt: skip
    return states


def with_states(db: Database, found: Chain) -> Chain:
    """``found`` with each block's instance state, read for its page of blocks only."""
    uids = sorted({link.sop_instance_uid for link in found.links})
    states: dict[str, str] = {}
    for start in range(0, len(uids), PAGE):
        keys = {"SOPInstanceUID": parse_key("UI", "\\".join(uids[start : start + PAGE]))}
        query = Query("STUDY", "IMAGE", keys, _requested(("SOPInstanceUID", "ChainVerificationState")))
        for row in _page(db, query, 0, PAGE).rows:
            states[str(row["SOPInstanceUID"])] = str(row.get("ChainVerificationState") or "")
    links = [dataclasses.replace(link, state=states.get(link.sop_instance_uid, "")) for link in found.links]
    return dataclasses.replace(found, links=links)


def version_counts(ledger: Ledger, chain_id: str, rows: list[dict[str, Any]]) -> dict[str, list[Version]]:
    """The versions of each instance on a page (a correction or a replacement shows: design 5)."""
    sops = [str(r["SOPInstanceUID"]) for r in rows]
    with ledger.db.reading() as session:
        return versions_of_many(session, chain_id, sops)
