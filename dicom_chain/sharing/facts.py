"""What the sharing rules read, taken from the ledger and the query index (the rules' only I/O).

The engine (policy.decide) sees events and a request; this module reads them: the events of the
types the rules fold (policy.FACT_TYPES), the study's patient and modalities from the index, and
the history of the policy in force (``policy.changed`` events).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_chain.events import Event
from dicom_chain.ledger import Ledger
from dicom_chain.qr import index
from dicom_chain.qr.index import INSTANCES, PATIENTS, SERIES, STUDIES
from dicom_chain.sharing.policy import FACT_TYPES, Facts
from dicom_chain.vocab import EventType


def load(ledger: Ledger, session: Session | None = None, before_seq: int | None = None) -> Facts:
    return Facts.of(ledger.events_of_types(FACT_TYPES, session=session, before_seq=before_seq))


@dataclass(frozen=True)
class StudyFacts:
    study_uid: str
    patient_id: str
    issuer: str
    modalities: tuple[str, ...]
    instances: int


def study(ledger: Ledger, study_uid: str, session: Session | None = None) -> StudyFacts | None:
    """The study as the query index knows it (None: not stored here)."""
    if session is None:
        index.before_read(ledger.db)  # a caller passing its session flushed before it began
        with ledger.db.reading() as own:
            return study(ledger, study_uid, own)
    row = session.execute(
        select(STUDIES.c.id, PATIENTS.c.patient_id, PATIENTS.c.issuer)
        .select_from(STUDIES.join(PATIENTS, STUDIES.c.patient_pk == PATIENTS.c.id))
        .where(STUDIES.c.study_uid == study_uid)
    ).first()
    if row is None:
        return None
    modalities = session.scalars(
        select(SERIES.c.modality).where(SERIES.c.study_pk == row.id, SERIES.c.modality != "").distinct()
    )
    count = session.scalar(
        select(func.count())
        .select_from(SERIES.join(INSTANCES, INSTANCES.c.series_pk == SERIES.c.id))
        .where(SERIES.c.study_pk == row.id)
    )
    return StudyFacts(
        study_uid, row.patient_id or "", row.issuer or "", tuple(sorted(modalities)), int(count or 0)
    )


def policy_history(ledger: Ledger, session: Session | None = None) -> list[Event]:
    """The ``policy.changed`` events, oldest first: the policies in force, and since when."""
    return ledger.events_of_types([EventType.POLICY_CHANGED], session=session)
