"""The Query/Retrieve index: patient, study, series and instance rows, written and searched.

Rows are written inside the receipt's transaction (``write``), so the index never disagrees
with the chain. ``search`` turns a parsed ``Query`` into one SQL statement over indexed key
columns, pages through the matches by primary key (bounded memory, a cancel takes effect
between pages) and adds the computed attributes per page with grouped counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    and_,
    bindparam,
    delete,
    distinct,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dicom_chain.block import Block
from dicom_chain.db.database import Database
from dicom_chain.db.models import InstanceRow, PatientRow, SeriesRow, StudyRow
from dicom_chain.qr.matching import SQL_LIKE_ESCAPE, KeyMatch, Term, key_form, sql_like
from dicom_chain.qr.query import Level, Query

PATIENTS = PatientRow.__table__
STUDIES = StudyRow.__table__
SERIES = SeriesRow.__table__
INSTANCES = InstanceRow.__table__
PAGE_ROWS = 500  # matches fetched per statement: bounded memory, and a C-CANCEL waits at most a page

# keyword -> (value column, key column compared when matching, VR)
COLUMNS: dict[str, tuple[Any, Any, str]] = {
    "PatientName": (PATIENTS.c.patient_name, PATIENTS.c.patient_name_key, "PN"),
    "PatientID": (PATIENTS.c.patient_id, PATIENTS.c.patient_id, "LO"),
    "IssuerOfPatientID": (PATIENTS.c.issuer, PATIENTS.c.issuer, "LO"),
    "PatientBirthDate": (PATIENTS.c.birth_date, PATIENTS.c.birth_date, "DA"),
    "PatientSex": (PATIENTS.c.sex, PATIENTS.c.sex, "CS"),
    "StudyInstanceUID": (STUDIES.c.study_uid, STUDIES.c.study_uid, "UI"),
    "StudyDate": (STUDIES.c.study_date, STUDIES.c.study_date, "DA"),
    "StudyTime": (STUDIES.c.study_time, STUDIES.c.study_time_key, "TM"),
    "AccessionNumber": (STUDIES.c.accession_number, STUDIES.c.accession_number, "SH"),
    "StudyID": (STUDIES.c.study_id, STUDIES.c.study_id, "SH"),
    "StudyDescription": (STUDIES.c.description, STUDIES.c.description, "LO"),
    "ReferringPhysicianName": (STUDIES.c.referring_physician, STUDIES.c.referring_physician_key, "PN"),
    "SeriesInstanceUID": (SERIES.c.series_uid, SERIES.c.series_uid, "UI"),
    "Modality": (SERIES.c.modality, SERIES.c.modality, "CS"),
    "SeriesNumber": (SERIES.c.series_number, SERIES.c.series_number, "IS"),
    "SeriesDescription": (SERIES.c.description, SERIES.c.description, "LO"),
    "SeriesDate": (SERIES.c.series_date, SERIES.c.series_date, "DA"),
    "SeriesTime": (SERIES.c.series_time, SERIES.c.series_time_key, "TM"),
    "BodyPartExamined": (SERIES.c.body_part, SERIES.c.body_part, "CS"),
    "SOPInstanceUID": (INSTANCES.c.sop_instance_uid, INSTANCES.c.sop_instance_uid, "UI"),
    "SOPClassUID": (INSTANCES.c.sop_class_uid, INSTANCES.c.sop_class_uid, "UI"),
    "InstanceNumber": (INSTANCES.c.instance_number, INSTANCES.c.instance_number, "IS"),
    "Rows": (INSTANCES.c.rows, None, "US"),
    "Columns": (INSTANCES.c.columns, None, "US"),
    "NumberOfFrames": (INSTANCES.c.frames, None, "IS"),
    "ChainID": (INSTANCES.c.chain_id, None, "LO"),
    "ChainHeight": (INSTANCES.c.height, None, "UL"),
    "ChainBlockHash": (INSTANCES.c.block_hash, None, "LO"),
    "ChainVerificationState": (INSTANCES.c.verification, None, "CS"),
    "ChainVerifiedAt": (INSTANCES.c.verified_at, None, "DT"),
}
_TABLES = {t.name: t for t in (PATIENTS, STUDIES, SERIES, INSTANCES)}
_LEVEL_TABLE = {"PATIENT": PATIENTS, "STUDY": STUDIES, "SERIES": SERIES, "IMAGE": INSTANCES}
_LEVEL_COLUMNS = {
    "PATIENT": PATIENTS.c,
    "STUDY": STUDIES.c,
    "SERIES": SERIES.c,
    "IMAGE": INSTANCES.c,
}
_TABLE_LEVEL = {PATIENTS: "PATIENT", STUDIES: "STUDY", SERIES: "SERIES", INSTANCES: "IMAGE"}
_DEPTH = {"PATIENT": 0, "STUDY": 1, "SERIES": 2, "IMAGE": 3}


_CHARSET_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})  # decoded per Specific Character Set
_PN_DELIMITERS = {0x5C, 0x3D, 0x5E}  # \ = ^: each component group / component decodes on its own
_TEXT_DELIMITERS = {0x5C}


@lru_cache(maxsize=64)
def _tag(keyword: str) -> int:
    return int(tag_for_keyword(keyword) or 0)


def _text(ds: Dataset, keyword: str, limit: int, encodings: list[str]) -> str:
    """An attribute as text, cut to its column; what does not decode indexes as empty.

    Raw values are decoded here, without pydicom's conversion (which validates every value, and
    cost a millisecond per instance for the two dozen attributes the index keeps)."""
    tag = _tag(keyword)
    try:
        elem = ds.get_item(tag)
        if elem is None:
            return ""
        value = elem.value
        if isinstance(value, bytes):
            vr = elem.VR or dictionary_VR(tag)
            if vr in _CHARSET_VRS:
                delimiters = _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS
                value = decode_bytes(value, encodings, delimiters)
            else:
                value = value.decode("latin-1", "replace")
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, list | MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")[:limit]


def _encodings(ds: Dataset) -> list[str]:
    try:
        return list(convert_encodings(ds.get("SpecificCharacterSet") or "ISO_IR 6"))
    except Exception:
        return ["iso8859"]


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:
        return None


@dataclass(frozen=True)
class IndexRecord:
    """What the index keeps of one instance, read once from its dataset."""

    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]

    @classmethod
    def from_dataset(cls, ds: Dataset, transfer_syntax: str) -> IndexRecord:
        charset = _encodings(ds)

        def text(keyword: str, limit: int) -> str:
            return _text(ds, keyword, limit, charset)

        name = text("PatientName", 320)
        referring = text("ReferringPhysicianName", 320)
        study_time = text("StudyTime", 32)
        series_time = text("SeriesTime", 32)
        return cls(
            patient={
                "patient_id": text("PatientID", 64),
                "issuer": text("IssuerOfPatientID", 64),
                "patient_name": name,
                "patient_name_key": key_form("PN", name),
                "birth_date": key_form("DA", text("PatientBirthDate", 10))[:8],
                "sex": text("PatientSex", 16),
            },
            study={
                "study_uid": text("StudyInstanceUID", 64),
                "study_date": key_form("DA", text("StudyDate", 10))[:8],
                "study_time": study_time,
                "study_time_key": key_form("TM", study_time)[:32],
                "accession_number": text("AccessionNumber", 64),
                "study_id": text("StudyID", 64),
                "description": text("StudyDescription", 1024),
                "referring_physician": referring,
                "referring_physician_key": key_form("PN", referring),
            },
            series={
                "series_uid": text("SeriesInstanceUID", 64),
                "modality": text("Modality", 16),
                "series_number": text("SeriesNumber", 16),
                "description": text("SeriesDescription", 1024),
                "series_date": key_form("DA", text("SeriesDate", 10))[:8],
                "series_time": series_time,
                "series_time_key": key_form("TM", series_time)[:32],
                "body_part": text("BodyPartExamined", 16),
            },
            instance={
                "sop_instance_uid": text("SOPInstanceUID", 64),
                "sop_class_uid": text("SOPClassUID", 64),
                "instance_number": text("InstanceNumber", 16),
                "transfer_syntax": transfer_syntax[:64],
                "rows": _int(ds, "Rows"),
                "columns": _int(ds, "Columns"),
                "frames": _int(ds, "NumberOfFrames"),
            },
        )


@lru_cache(maxsize=64)
def _upsert_statement(
    dialect: str, table_name: str, columns: tuple[str, ...], unique: tuple[str, ...]
) -> Any:
    """Built once per table and dialect: building the expression costs more than running it, and
    this runs four times per received instance."""
    table = _TABLES[table_name]
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values({name: bindparam(name) for name in columns})
    updates = {
        name: func.coalesce(func.nullif(stmt.excluded[name], ""), table.c[name])
        if isinstance(table.c[name].type, String)
        else func.coalesce(stmt.excluded[name], table.c[name])
        for name in columns
        if name not in unique
    }
    return stmt.on_conflict_do_update(index_elements=list(unique), set_=updates).returning(table.c.id)


def _upsert(session: Session, table: Any, values: dict[str, Any], unique: list[str]) -> int:
    """Insert or refresh one row and return its id; empty new values never erase known ones."""
    dialect = session.get_bind().dialect.name
    stmt = _upsert_statement(dialect, table.name, tuple(values), tuple(unique))
    return int(session.execute(stmt, values).scalar_one())


def write(
    session: Session,
    record: IndexRecord,
    *,
    block: Block,
    path: str,
    version: int,
    verification: str = "verified",
    verified_at: str | None = None,
) -> None:
    """Index one stored instance (its newest version) inside the caller's transaction."""
    patient_pk = _upsert(session, PATIENTS, record.patient, ["patient_id", "issuer"])
    study_pk = _upsert(session, STUDIES, {**record.study, "patient_pk": patient_pk}, ["study_uid"])
    series_pk = _upsert(session, SERIES, {**record.series, "study_pk": study_pk}, ["series_uid"])
    h = block.header
    _upsert(
        session,
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
        ["sop_instance_uid"],
    )


def clear(session: Session) -> None:
    for table in (INSTANCES, SERIES, STUDIES, PATIENTS):
        session.execute(delete(table))


def record_verification(session: Session, problems: dict[str, str], at: str) -> int:
    """After a whole-node verify: every indexed instance is "verified" at ``at`` unless its stored
    path (relative, as the index holds it) is in ``problems`` (path -> "altered" | "missing")."""
    session.execute(INSTANCES.update().values(verification="verified", verified_at=at))
    changed = 0
    for path, state in problems.items():
        result = session.execute(
            INSTANCES.update().where(INSTANCES.c.path == path).values(verification=state, verified_at=at)
        )
        changed += result.rowcount or 0
    return changed


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


def _condition(keyword: str, match: KeyMatch) -> ColumnElement[bool]:
    if keyword == "ModalitiesInStudy":  # a study matches when any of its series does
        other = SERIES.alias("modality_series")  # not the outer query's series row
        return exists().where(other.c.study_pk == STUDIES.c.id, _match_sql(other.c.modality, match))
    return _match_sql(COLUMNS[keyword][1], match)


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
        for keyword, (col, _, _) in COLUMNS.items()
        if _DEPTH[_TABLE_LEVEL[col.table]] <= _DEPTH[level]
    ]
    pk = _LEVEL_COLUMNS[level].id
    extra = [pk.label("_pk")]
    if level == "IMAGE":
        extra += [INSTANCES.c.path.label("_path"), INSTANCES.c.transfer_syntax.label("_transfer_syntax")]
    return select(*columns, *extra).select_from(joined)


def search(session: Session, query: Query, level: Level | None = None) -> Iterator[dict[str, Any]]:
    """Matching entities at ``level`` (default: the query's), one dict of keyword -> value each."""
    level = level or query.level
    stmt = _base(level).where(*(_condition(k, m) for k, m in query.keys.items()))
    pk = _LEVEL_COLUMNS[level].id
    wanted = {e.keyword for e in query.requested}
    last = 0
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
    with db.reading() as session:
        yield from search(session, query, level)


def count(db: Database) -> int:
    """Instances in the index."""
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


def _add_computed(session: Session, level: str, rows: list[dict[str, Any]], wanted: set[str]) -> None:
    ids = [r["_pk"] for r in rows]
    series_i = SERIES.join(INSTANCES, INSTANCES.c.series_pk == SERIES.c.id)
    studies_s = STUDIES.join(SERIES, SERIES.c.study_pk == STUDIES.c.id)
    found: dict[str, dict[int, Any]] = {}
    if level == "PATIENT":
        if "NumberOfPatientRelatedStudies" in wanted:
            found["NumberOfPatientRelatedStudies"] = _counts(
                session, STUDIES.c.patient_pk, STUDIES.c.id, STUDIES, ids
            )
        if "NumberOfPatientRelatedSeries" in wanted:
            found["NumberOfPatientRelatedSeries"] = _counts(
                session, STUDIES.c.patient_pk, SERIES.c.id, studies_s, ids
            )
        if "NumberOfPatientRelatedInstances" in wanted:
            found["NumberOfPatientRelatedInstances"] = _counts(
                session,
                STUDIES.c.patient_pk,
                INSTANCES.c.id,
                studies_s.join(INSTANCES, INSTANCES.c.series_pk == SERIES.c.id),
                ids,
            )
    elif level == "STUDY":
        if "NumberOfStudyRelatedSeries" in wanted:
            found["NumberOfStudyRelatedSeries"] = _counts(
                session, SERIES.c.study_pk, SERIES.c.id, SERIES, ids
            )
        if "NumberOfStudyRelatedInstances" in wanted:
            found["NumberOfStudyRelatedInstances"] = _counts(
                session, SERIES.c.study_pk, INSTANCES.c.id, series_i, ids
            )
        if "ModalitiesInStudy" in wanted:
            modalities: dict[int, list[str]] = {}
            stmt = (
                select(SERIES.c.study_pk, SERIES.c.modality)
                .where(SERIES.c.study_pk.in_(ids), SERIES.c.modality != "")
                .distinct()
                .order_by(SERIES.c.study_pk, SERIES.c.modality)
            )
            for study_pk, modality in session.execute(stmt):
                modalities.setdefault(study_pk, []).append(modality)
            found["ModalitiesInStudy"] = modalities
    elif level == "SERIES" and "NumberOfSeriesRelatedInstances" in wanted:
        found["NumberOfSeriesRelatedInstances"] = _counts(
            session, INSTANCES.c.series_pk, INSTANCES.c.id, INSTANCES, ids
        )
    for keyword, by_pk in found.items():
        default: Any = [] if keyword == "ModalitiesInStudy" else 0
        for row in rows:
            row[keyword] = by_pk.get(row["_pk"], default)
