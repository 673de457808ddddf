"""The Query/Retrieve index: patient, study, series and instance rows, written and searched.

Rows are written after the C-STORE response (``write``, called by qr/indexqueue.py), and every
reader here first writes what this process still holds pending (``before_read``), so a query
sees every instance whose response went out before it. A study keeps its own patient name,
birth date and sex (what its STUDY and lower answers say), the patient row the newest; ``write``
returns the values a patient had not had before beside others (``IdentityConflict``), for the
caller to record once as an event in the same transaction.
``search`` turns a parsed ``Query`` into one SQL statement over indexed key columns, pages
through the matches by primary key (bounded memory, a cancel takes effect between pages) and
adds the computed attributes per page with grouped counts.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    bindparam,
    case,
    delete,
    distinct,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session

from dicom_chain.block import Block
from dicom_chain.db.database import Database
from dicom_chain.db.hot import HotCursor, HotSQL
from dicom_chain.db.indexschema import (
    ATTRIBUTES,
    BY_KEYWORD,
    FOLDED_VRS,
    LEVELS,
    STUDY_PATIENT_ATTRIBUTES,
    UID_CHARS,
    Level,
)
from dicom_chain.db.models import InstanceRow, PatientIdentityRow, PatientRow, SeriesRow, StudyRow
from dicom_chain.events import Event, EventDraft
from dicom_chain.qr.matching import SQL_LIKE_ESCAPE, KeyMatch, Term, key_form, sql_like
from dicom_chain.qr.query import Query
from dicom_chain.vocab import EventType, Outcome, VerificationState

PATIENTS = PatientRow.__table__
STUDIES = StudyRow.__table__
SERIES = SeriesRow.__table__
INSTANCES = InstanceRow.__table__
IDENTITIES = PatientIdentityRow.__table__
PAGE_ROWS = 500  # matches fetched per statement: bounded memory, and a C-CANCEL waits at most a page

_LEVEL_TABLE = {"PATIENT": PATIENTS, "STUDY": STUDIES, "SERIES": SERIES, "IMAGE": INSTANCES}
# keyword -> (value column, key column compared when matching or None, VR), from the declaration
COLUMNS: dict[str, tuple[Any, Any, str]] = {
    a.keyword: (
        _LEVEL_TABLE[a.level].c[a.column],
        _LEVEL_TABLE[a.level].c[a.key_column] if a.key_column else None,
        a.vr,
    )
    for a in ATTRIBUTES
    if a.column is not None
}
# keyword -> (value column, key column, VR) at STUDY level and below: the study's own values
STUDY_COLUMNS: dict[str, tuple[Any, Any, str]] = {
    **COLUMNS,
    **{
        a.keyword: (STUDIES.c[a.column], STUDIES.c[a.key_column] if a.key_column else None, a.vr)
        for a in STUDY_PATIENT_ATTRIBUTES
        if a.column is not None
    },
}
_TABLES = {t.name: t for t in (PATIENTS, STUDIES, SERIES, INSTANCES, IDENTITIES)}
_LEVEL_COLUMNS = {
    "PATIENT": PATIENTS.c,
    "STUDY": STUDIES.c,
    "SERIES": SERIES.c,
    "IMAGE": INSTANCES.c,
}
_TABLE_LEVEL = {PATIENTS: "PATIENT", STUDIES: "STUDY", SERIES: "SERIES", INSTANCES: "IMAGE"}
_DEPTH = {"PATIENT": 0, "STUDY": 1, "SERIES": 2, "IMAGE": 3}


@dataclass(frozen=True)
class IndexRecord:
    """What the index keeps of one item: its patient, study, series and instance rows."""

    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]

    @classmethod
    def from_values(cls, values: Mapping[str, Any], transfer_syntax: str) -> IndexRecord:
        """The four rows of one item from what its carrier read (``Carried.index_values``):
        dates folded, person names and times with their key forms beside them."""
        rows: dict[Level, dict[str, Any]] = {level: {} for level in LEVELS}
        for a in _STORED:
            row = rows[a.level]
            assert a.column is not None
            value = values.get(a.keyword)
            if a.integer:
                row[a.column] = value if isinstance(value, int) else None
                continue
            # A NUL (in no DICOM repertoire) is dropped: PostgreSQL text cannot hold it, and the
            # index is a search aid; the file and its block keep the value as received.
            text = str(value or "").replace("\x00", "")[: a.chars]
            if a.vr in FOLDED_VRS:
                text = key_form(a.vr, text)[: a.width]
            row[a.column] = text
            if a.key_column and a.key_column != a.column:
                row[a.key_column] = key_form(a.vr, text)[: a.width] if a.width else key_form(a.vr, text)
        rows["IMAGE"]["transfer_syntax"] = transfer_syntax[:UID_CHARS]
        return cls(rows["PATIENT"], rows["STUDY"], rows["SERIES"], rows["IMAGE"])


_STORED = tuple(a for a in STUDY_PATIENT_ATTRIBUTES + ATTRIBUTES if a.column is not None and not a.from_block)


@dataclass(frozen=True)
class IdentityConflict:
    """A value of a patient's identifying attribute that differs from every value it had before."""

    patient_id: str
    issuer: str
    keyword: str  # PatientName, PatientBirthDate, PatientSex
    value: str  # as received
    known: tuple[str, ...]  # the values it had before, as first received, oldest first
    study_uid: str  # the study and instance that brought it
    sop_uid: str

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What makes it the same conflict: one event each (as ``details`` and ``patient_id`` say)."""
        return (self.patient_id, self.issuer, self.keyword, key_form(BY_KEYWORD[self.keyword].vr, self.value))

    def draft(self, chain_id: str, actor: str) -> EventDraft:
        """The ``patient.identity-conflict`` event: the compliance officer's cue that one Patient ID
        now names two people, or one person two ways."""
        known = ", ".join(repr(v) for v in self.known)
        return EventDraft(
            type=EventType.PATIENT_IDENTITY_CONFLICT,
            outcome=Outcome.MINOR_FAILURE,  # the instance is kept and answered; its identity is in doubt
            actor=actor,
            patient_id=self.patient_id,
            study_uid=self.study_uid,
            sop_uid=self.sop_uid,
            chain_id=chain_id,
            reason=f"{self.keyword} {self.value!r} differs from {known} known for this Patient ID",
            details={
                "attribute": self.keyword,
                "value": self.value,
                "known": list(self.known),
                "issuer": self.issuer,
            },
        )


def recorded_identity(event: Event) -> tuple[str, str, str, str]:
    """``IdentityConflict.identity`` of a recorded event."""
    d = event.details
    keyword, value = str(d.get("attribute", "")), str(d.get("value", ""))
    folded = key_form(BY_KEYWORD[keyword].vr, value) if keyword in BY_KEYWORD else value
    return (event.patient_id, str(d.get("issuer", "")), keyword, folded)


_PENDING: weakref.WeakKeyDictionary[Database, Callable[[], None]] = weakref.WeakKeyDictionary()


def on_read(db: Database, flush: Callable[[], None] | None) -> None:
    """Have every reader of the index on ``db`` call ``flush`` first (None: no longer)."""
    if flush is None:
        _PENDING.pop(db, None)
    else:
        _PENDING[db] = flush


def before_read(db: Database) -> None:
    """Write the index rows this process holds pending for ``db``'s database (by URL: a command
    run in the node's process may open its own ``Database``): what a reader must see."""
    for other, flush in list(_PENDING.items()):
        if other.url == db.url:
            flush()


@lru_cache(maxsize=64)
def _upsert_sql(table_name: str, columns: tuple[str, ...], unique: tuple[str, ...]) -> tuple[HotSQL, dict]:
    """The upsert as constant SQL for the driver's cursor (db/hot.py), built once per table (building
    the expression costs more than running it), and its constant parameters (the empty strings
    ``nullif`` compares with). SQLite's rendering is taken for both databases: ``INSERT .. ON
    CONFLICT .. DO UPDATE .. RETURNING`` is written alike in each, and it carries no casts
    (PostgreSQL's rendering has ``::VARCHAR``, which ``HotSQL`` cannot take). Up to five of these
    run per instance on the index writer, where SQLAlchemy's own execution cost about 60 us each,
    several times the statement."""
    table = _TABLES[table_name]
    stmt = sqlite.insert(table).values({name: bindparam(name) for name in columns})
    updates = {
        name: func.coalesce(func.nullif(stmt.excluded[name], ""), table.c[name])
        if isinstance(table.c[name].type, String)
        else func.coalesce(stmt.excluded[name], table.c[name])
        for name in columns
        if name not in unique
    }
    if table is INSTANCES:  # the same block indexed again (written after the response, repaired)
        # keeps what verify last found; a new block starts from its own receipt's state
        for name in ("verification", "verified_at"):
            if name in updates:
                updates[name] = case(
                    (table.c.block_hash == stmt.excluded.block_hash, table.c[name]),
                    else_=stmt.excluded[name],
                )
    newer = None
    if table is INSTANCES:  # written after the response, maybe out of order (another process, a
        # repair at start): a later block of the same chain is never replaced by an earlier one
        newer = ~and_(table.c.chain_id == stmt.excluded.chain_id, table.c.height > stmt.excluded.height)
    upsert = stmt.on_conflict_do_update(index_elements=list(unique), set_=updates, where=newer)
    compiled = upsert.returning(table.c.id).compile(dialect=sqlite.dialect(paramstyle="named"))
    constants = {k: v for k, v in compiled.params.items() if k not in columns}
    return HotSQL(str(compiled)), constants


def _upsert(
    cursor: HotCursor, table: Any, values: dict[str, Any], unique: tuple[str, ...], memo: Memo | None
) -> int | None:
    """Insert or refresh one row and return its id; empty new values never erase known ones.
    None: an instance row left as it was (it holds a later block). With ``memo``, the same row
    with the same values a second time in one transaction is not written again: it would change
    nothing and return the same id."""
    key = (table.name, tuple(values.items())) if memo is not None else None
    if key is not None and key in memo:
        return memo[key]
    sql, constants = _upsert_sql(table.name, tuple(values), unique)
    row = cursor.run(sql, {**constants, **values}).fetchone()
    found = None if row is None else int(row[0])
    if key is not None:
        memo[key] = found
    return found


# What one index transaction has written: (table, values) -> id; see ``write``.
Memo = dict[tuple[str, tuple[Any, ...]], int | None]


def write(
    session: Session,
    record: IndexRecord,
    *,
    block: Block,
    path: str,
    version: int,
    verification: VerificationState = VerificationState.VERIFIED,
    verified_at: str | None = None,
    memo: Memo | None = None,
) -> list[IdentityConflict]:
    """Index one stored instance (its newest version) inside the caller's transaction; return the
    patient-identity values it brings that conflict with the patient's earlier ones.

    ``memo``: one dict per transaction that indexes many instances (the index writer's batch), so
    that a study's patient, study and series rows and identity values, the same for each of its
    instances, are written once per batch, not once per instance."""
    cursor = HotCursor(session)
    patient_pk = _upsert(cursor, PATIENTS, record.patient, ("patient_id", "issuer"), memo)
    assert patient_pk is not None  # only instance rows are ever left as they were
    conflicts = _identities(session, cursor, patient_pk, record, memo)
    study_pk = _upsert(cursor, STUDIES, {**record.study, "patient_pk": patient_pk}, ("study_uid",), memo)
    series_pk = _upsert(cursor, SERIES, {**record.series, "study_pk": study_pk}, ("series_uid",), memo)
    h = block.header
    _upsert(
        cursor,
        INSTANCES,
        {
            **record.instance,
            "series_pk": series_pk,
            "chain_id": h.chain_id,
            "height": h.height,
            "block_hash": block.hash,
            "version": version,
            "path": path,
            "received_at": h.timestamp,
            "verification": verification,
            "verified_at": verified_at or h.timestamp,
        },
        ("sop_instance_uid",),
        None,  # each instance once per batch anyway, and its row may hold a later block
    )
    return conflicts


_IDENTITY_INSERT = HotSQL(
    "INSERT INTO patient_identities (patient_pk, keyword, value_key, value, study_uid, sop_uid) "
    "VALUES (:patient_pk, :keyword, :value_key, :value, :study_uid, :sop_uid) "
    "ON CONFLICT (patient_pk, keyword, value_key) DO NOTHING RETURNING id"
)


def _identities(
    session: Session, cursor: HotCursor, patient_pk: int, record: IndexRecord, memo: Memo | None
) -> list[IdentityConflict]:
    """Note each identifying value the patient had not had; one beside others is a conflict. Compared
    in key form (a name's case and trailing separators are not an identity); empty is no value.
    A value met before in the same transaction (``memo``) is one seen before: not inserted again."""
    conflicts = []
    for a in STUDY_PATIENT_ATTRIBUTES:
        assert a.column is not None
        value = record.study[a.column]
        key = record.study[a.key_column] if a.key_column else value
        if not key:
            continue
        values = {
            "patient_pk": patient_pk,
            "keyword": a.keyword,
            "value_key": key,
            "value": value,
            "study_uid": record.study["study_uid"],
            "sop_uid": record.instance["sop_instance_uid"],
        }
        seen = ("patient_identities", (patient_pk, a.keyword, key))
        if memo is not None and seen in memo:
            continue  # seen in this transaction: recorded then, if it conflicted
        row = cursor.run(_IDENTITY_INSERT, values).fetchone()
        if memo is not None:
            memo[seen] = None
        new = None if row is None else int(row[0])
        if new is None:
            continue  # seen before: recorded then, if it conflicted
        known = session.scalars(
            select(IDENTITIES.c.value)
            .where(
                IDENTITIES.c.patient_pk == patient_pk,
                IDENTITIES.c.keyword == a.keyword,
                IDENTITIES.c.id != new,
            )
            .order_by(IDENTITIES.c.id)
        ).all()
        if known:
            patient = record.patient
            conflicts.append(
                IdentityConflict(
                    patient["patient_id"],
                    patient["issuer"],
                    a.keyword,
                    value,
                    tuple(known),
                    values["study_uid"],
                    values["sop_uid"],
                )
            )
    return conflicts


def clear(session: Session) -> None:
    for table in (INSTANCES, SERIES, STUDIES, IDENTITIES, PATIENTS):
        session.execute(delete(table))


def record_verification(session: Session, problems: dict[str, VerificationState], at: str) -> int:
    """After a whole-node verify: every indexed instance is "verified" at ``at`` unless its stored
    path (relative, as the index holds it) is in ``problems`` (path -> "altered" | "missing")."""
    session.execute(INSTANCES.update().values(verification=VerificationState.VERIFIED, verified_at=at))
    changed = 0
    for path, state in problems.items():
        result = session.execute(
            INSTANCES.update().where(INSTANCES.c.path == path).values(verification=state, verified_at=at)
        )
        changed += result.rowcount or 0
    return changed


def record_states(session: Session, states: dict[str, VerificationState], at: str) -> None:
    """States of some instances (stored path -> state), the others left as they are: a check of one
    study (qr/browse.py)."""
    for path, state in states.items():
        session.execute(
            INSTANCES.update().where(INSTANCES.c.path == path).values(verification=state, verified_at=at)
        )


# -- searching ----------------------------------------------------------------------------------


def _term_sql(column: Any, term: Term) -> ColumnElement[bool]:
    if term.kind == "equal":
        return column == term.low
    if term.kind == "like":
        return column.like(sql_like(term.low), escape=SQL_LIKE_ESCAPE)
    parts = [column != ""]
    if term.low:
        parts.append(column >= term.low)
    if term.high:
        parts.append(column <= term.high)
    return and_(*parts)


def _match_sql(column: Any, match: KeyMatch) -> ColumnElement[bool]:
    return or_(*(_term_sql(column, term) for term in match.terms))


def _columns(level: Level) -> dict[str, tuple[Any, Any, str]]:
    """The columns each keyword is answered from and matched against at ``level``."""
    return COLUMNS if level == "PATIENT" else STUDY_COLUMNS


def _condition(keyword: str, match: KeyMatch, level: Level) -> ColumnElement[bool]:
    if keyword == "ModalitiesInStudy":  # a study matches when any of its series does
        other = SERIES.alias("modality_series")  # not the outer query's series row
        return exists().where(other.c.study_pk == STUDIES.c.id, _match_sql(other.c.modality, match))
    return _match_sql(_columns(level)[keyword][1], match)


def _base(level: Level) -> Select:
    """The level's table joined to every level above it."""
    joined: Any = PATIENTS
    if _DEPTH[level] >= 1:
        joined = joined.join(STUDIES, STUDIES.c.patient_pk == PATIENTS.c.id)
    if _DEPTH[level] >= 2:
        joined = joined.join(SERIES, SERIES.c.study_pk == STUDIES.c.id)
    if _DEPTH[level] >= 3:
        joined = joined.join(INSTANCES, INSTANCES.c.series_pk == SERIES.c.id)
    columns = [
        col.label(keyword)
        for keyword, (col, _, _) in _columns(level).items()
        if _DEPTH[_TABLE_LEVEL[col.table]] <= _DEPTH[level]
    ]
    pk = _LEVEL_COLUMNS[level].id
    extra = [pk.label("_pk")]
    if level == "IMAGE":
        extra += [
            INSTANCES.c.path.label("_path"),
            INSTANCES.c.transfer_syntax.label("_transfer_syntax"),
            INSTANCES.c.block_hash.label("_block_hash"),
        ]
    return select(*columns, *extra).select_from(joined)


def search(
    session: Session, query: Query, level: Level | None = None, after: int = 0
) -> Iterator[dict[str, Any]]:
    """Matching entities at ``level`` (default: the query's), one dict of keyword -> value each,
    in the order of their row key ``_pk``, from after ``after`` (the console's pages)."""
    level = level or query.level
    stmt = _base(level).where(*(_condition(k, m, level) for k, m in query.keys.items()))
    pk = _LEVEL_COLUMNS[level].id
    wanted = {e.keyword for e in query.requested}
    last = after
    while True:
        rows = [
            dict(r._mapping) for r in session.execute(stmt.where(pk > last).order_by(pk).limit(PAGE_ROWS))
        ]
        if not rows:
            return
        last = rows[-1]["_pk"]
        _add_computed(session, level, rows, wanted)
        yield from rows
        if len(rows) < PAGE_ROWS:
            return


def find(db: Database, query: Query, level: Level | None = None) -> Iterator[dict[str, Any]]:
    """``search`` on a read session of its own (C-FIND answers, retrieval plans); errors as ours."""
    before_read(db)
    with db.reading() as session:
        yield from search(session, query, level)


def count(db: Database) -> int:
    """Instances in the index."""
    before_read(db)
    with db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(INSTANCES)) or 0)


def _counts(session: Session, group_col: Any, count_col: Any, joined: Any, ids: list[int]) -> dict[int, int]:
    stmt = (
        select(group_col, func.count(distinct(count_col)))
        .select_from(joined)
        .where(group_col.in_(ids))
        .group_by(group_col)
    )
    return {k: v for k, v in session.execute(stmt)}


# Computed attributes: keyword -> (column grouped by: the level's own row id as seen from below,
# the column counted distinct, the join that reaches it). ModalitiesInStudy is a list, below.
_SERIES_INSTANCES = SERIES.join(INSTANCES, INSTANCES.c.series_pk == SERIES.c.id)
_STUDIES_SERIES = STUDIES.join(SERIES, SERIES.c.study_pk == STUDIES.c.id)
_COUNTS: dict[str, tuple[Any, Any, Any]] = {
    "NumberOfPatientRelatedStudies": (STUDIES.c.patient_pk, STUDIES.c.id, STUDIES),
    "NumberOfPatientRelatedSeries": (STUDIES.c.patient_pk, SERIES.c.id, _STUDIES_SERIES),
    "NumberOfPatientRelatedInstances": (
        STUDIES.c.patient_pk,
        INSTANCES.c.id,
        _STUDIES_SERIES.join(INSTANCES, INSTANCES.c.series_pk == SERIES.c.id),
    ),
    "NumberOfStudyRelatedSeries": (SERIES.c.study_pk, SERIES.c.id, SERIES),
    "NumberOfStudyRelatedInstances": (SERIES.c.study_pk, INSTANCES.c.id, _SERIES_INSTANCES),
    "NumberOfSeriesRelatedInstances": (INSTANCES.c.series_pk, INSTANCES.c.id, INSTANCES),
}


def _modalities(session: Session, ids: list[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    stmt = (
        select(SERIES.c.study_pk, SERIES.c.modality)
        .where(SERIES.c.study_pk.in_(ids), SERIES.c.modality != "")
        .distinct()
        .order_by(SERIES.c.study_pk, SERIES.c.modality)
    )
    for study_pk, modality in session.execute(stmt):
        found.setdefault(study_pk, []).append(modality)
    return found


def _add_computed(session: Session, level: str, rows: list[dict[str, Any]], wanted: set[str]) -> None:
    """Fill the computed attributes the query asked for at ``level``, one grouped query each."""
    ids = [r["_pk"] for r in rows]
    for a in _COMPUTED[level]:
        if a.keyword not in wanted:
            continue
        if a.keyword == "ModalitiesInStudy":
            by_pk: dict[int, Any] = _modalities(session, ids)
            default: Any = []
        else:
            by_pk, default = _counts(session, *_COUNTS[a.keyword], ids), 0
        for row in rows:
            row[a.keyword] = by_pk.get(row["_pk"], default)


_COMPUTED = {level: tuple(a for a in ATTRIBUTES if a.computed and a.level == level) for level in LEVELS}


def stored_syntaxes(db: Database, sop_classes: Collection[str]) -> dict[str, set[str]]:
    """The transfer syntaxes the indexed instances of each of ``sop_classes`` are stored in: what a
    C-GET peer's storage contexts are accepted by (scp/contexts.py ``preferred_syntax``)."""
    found: dict[str, set[str]] = {}
    if not sop_classes:
        return found
    before_read(db)
    stmt = (
        select(INSTANCES.c.sop_class_uid, INSTANCES.c.transfer_syntax)
        .where(INSTANCES.c.sop_class_uid.in_(sorted(sop_classes)))
        .distinct()
    )
    with db.reading() as session:
        for sop_class, syntax in session.execute(stmt):
            found.setdefault(sop_class, set()).add(syntax)
    return found
