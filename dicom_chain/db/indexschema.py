"""The Query/Retrieve index's attributes, declared once.

Everything else is derived from ``ATTRIBUTES``: the index tables' columns (``db/models.py``),
what is read from each received dataset (``qr/index.py`` ``IndexRecord``), which column each
C-FIND key is matched against and returned from (``qr/index.py``), which keys a query may match
on and at which level (``qr/query.py``), and the private elements IMAGE answers carry. Adding an
attribute is one line here and one migration.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
LEVELS: tuple[Level, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")
LEVEL_TABLES: dict[Level, str] = {
    "PATIENT": "patients",
    "STUDY": "studies",
    "SERIES": "series",
    "IMAGE": "instances",
}
# Values a matching key is compared in a folded form of (matching.key_form), kept in a second
# column beside the value as received: names case-folded, times padded to full precision. Dates
# are stored folded (YYYYMMDD) in their only column: the folded form is also what C-FIND returns.
KEYED_VRS = frozenset({"PN", "TM"})
FOLDED_VRS = frozenset({"DA"})
UID_CHARS = 64  # PS3.5 9.1


@dataclass(frozen=True)
class IndexAttribute:
    """One attribute the index holds or computes."""

    keyword: str  # DICOM keyword; for our private answers, the private dictionary's keyword
    level: Level
    vr: str
    column: str | None = None  # None: computed from the rows below it, never stored
    width: int | None = None  # String(width) and the characters stored; None: Text
    limit: int | None = None  # characters read (default: width); dates read 10 (YYYY.MM.DD), keep 8
    integer: bool = False  # stored as a nullable integer (Rows, Columns, NumberOfFrames)
    matchable: bool = True  # may narrow a query (else: returned only, a value sent -> FF01)
    private_offset: int | None = None  # returned in our private block at this offset, IMAGE level
    from_block: bool = False  # written from the block and the ledger, not read from the dataset
    per_study: bool = False  # a patient attribute also kept per study: the study's own value

    @property
    def computed(self) -> bool:
        return self.column is None

    @property
    def key_column(self) -> str | None:
        """The column matching compares against (None: not matchable by value)."""
        if self.column is None or not self.matchable:
            return None
        return f"{self.column}_key" if self.vr in KEYED_VRS else self.column

    @property
    def chars(self) -> int:
        """Characters read from the dataset."""
        return self.limit or self.width or 0


def _a(keyword: str, level: Level, vr: str, column: str | None = None, **kw: object) -> IndexAttribute:
    return IndexAttribute(keyword, level, vr, column, **kw)  # type: ignore[arg-type]


ATTRIBUTES: tuple[IndexAttribute, ...] = (
    _a("PatientName", "PATIENT", "PN", "patient_name", limit=320, per_study=True),
    _a("PatientID", "PATIENT", "LO", "patient_id", width=64),
    _a("IssuerOfPatientID", "PATIENT", "LO", "issuer", width=64),
    _a("PatientBirthDate", "PATIENT", "DA", "birth_date", width=8, limit=10, per_study=True),
    _a("PatientSex", "PATIENT", "CS", "sex", width=16, per_study=True),
    _a("NumberOfPatientRelatedStudies", "PATIENT", "IS", matchable=False),
    _a("NumberOfPatientRelatedSeries", "PATIENT", "IS", matchable=False),
    _a("NumberOfPatientRelatedInstances", "PATIENT", "IS", matchable=False),
    _a("StudyInstanceUID", "STUDY", "UI", "study_uid", width=UID_CHARS),
    _a("StudyDate", "STUDY", "DA", "study_date", width=8, limit=10),
    _a("StudyTime", "STUDY", "TM", "study_time", width=32),
    _a("AccessionNumber", "STUDY", "SH", "accession_number", width=64),
    _a("StudyID", "STUDY", "SH", "study_id", width=64),
    _a("StudyDescription", "STUDY", "LO", "description", limit=1024),
    _a("ReferringPhysicianName", "STUDY", "PN", "referring_physician", limit=320),
    _a("ModalitiesInStudy", "STUDY", "CS"),  # computed, and matchable: any of the study's series
    _a("NumberOfStudyRelatedSeries", "STUDY", "IS", matchable=False),
    _a("NumberOfStudyRelatedInstances", "STUDY", "IS", matchable=False),
    _a("SeriesInstanceUID", "SERIES", "UI", "series_uid", width=UID_CHARS),
    _a("Modality", "SERIES", "CS", "modality", width=16),
    _a("SeriesNumber", "SERIES", "IS", "series_number", width=16),
    _a("SeriesDescription", "SERIES", "LO", "description", limit=1024),
    _a("SeriesDate", "SERIES", "DA", "series_date", width=8, limit=10),
    _a("SeriesTime", "SERIES", "TM", "series_time", width=32),
    _a("BodyPartExamined", "SERIES", "CS", "body_part", width=16),
    _a("NumberOfSeriesRelatedInstances", "SERIES", "IS", matchable=False),
    _a("SOPInstanceUID", "IMAGE", "UI", "sop_instance_uid", width=UID_CHARS),
    _a("SOPClassUID", "IMAGE", "UI", "sop_class_uid", width=UID_CHARS),
    _a("InstanceNumber", "IMAGE", "IS", "instance_number", width=16),
    _a("Rows", "IMAGE", "US", "rows", integer=True, matchable=False),
    _a("Columns", "IMAGE", "US", "columns", integer=True, matchable=False),
    _a("NumberOfFrames", "IMAGE", "IS", "frames", integer=True, matchable=False),
    # our private block in IMAGE answers (dicom_chain/carriers/dicom/privatetags.py has the VRs)
    _a("ChainID", "IMAGE", "LO", "chain_id", width=36, matchable=False, private_offset=0x02, from_block=True),
    _a("ChainHeight", "IMAGE", "UL", "height", matchable=False, private_offset=0x03, from_block=True),
    _a("ChainBlockHash", "IMAGE", "LO", "block_hash", width=64, matchable=False, private_offset=0x0B,
       from_block=True),
    _a("ChainVerificationState", "IMAGE", "CS", "verification", width=16, matchable=False,
       private_offset=0x20, from_block=True),
    _a("ChainVerifiedAt", "IMAGE", "DT", "verified_at", width=32, matchable=False, private_offset=0x21,
       from_block=True),
)  # fmt: skip
BY_KEYWORD: dict[str, IndexAttribute] = {a.keyword: a for a in ATTRIBUTES}
PRIVATE_ANSWERS: dict[int, IndexAttribute] = {
    a.private_offset: a for a in ATTRIBUTES if a.private_offset is not None
}


# The patient's identifying attributes as each study's own files give them (same column names, in
# the studies table). Instances with one Patient ID may disagree on name, birth date or sex (an
# anonymised study, a typo at one modality, a merge): STUDY and lower levels answer and match the
# study's own values, never another study's; the patients row holds the newest values received.
# A value a patient has not had before is a patient-identity conflict (``qr/index.py``).
STUDY_PATIENT_ATTRIBUTES: tuple[IndexAttribute, ...] = tuple(
    replace(a, level="STUDY") for a in ATTRIBUTES if a.per_study
)
IDENTITY_KEYWORDS: tuple[str, ...] = tuple(a.keyword for a in STUDY_PATIENT_ATTRIBUTES)


def stored(level: Level) -> tuple[IndexAttribute, ...]:
    """The attributes with a column in the level's table, in declaration order (a study's copies of
    its patient's attributes first)."""
    own = tuple(a for a in ATTRIBUTES if a.level == level and a.column is not None)
    return (STUDY_PATIENT_ATTRIBUTES + own) if level == "STUDY" else own
