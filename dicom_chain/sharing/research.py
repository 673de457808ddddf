"""Research: a patient's opt-in, and the export of a de-identified copy of a study of theirs.

The opt-in is events (``patient.research-opt-in`` / ``-opt-out``) and whether it holds is a pure
fold over them at a time the caller gives: the latest event up to then wins, none means no. The
export reads the study's newest instances (query index and store), has the DICOM carrier
de-identify them (``carriers/dicom/deidentify.py``, PS3.15 Annex E Basic Profile) and chains each
copy as a new item with a block of its own (new UIDs, new content: it gets a signature and links
of its own, and ``verify DIR`` holds for the copies alone).

The copies are chained on the node's *research chain*, not its clinical one: a chain of its own,
signed by a key of its own (``research.key`` beside the node key), stored in the same ledger and
store. On the clinical chain, a copy's ``prev_hash`` would name the block chained just before it,
often the source's last instance: a link back to the patient inside the file. On the research
chain, a copy's links name only other research copies. The link copy -> source block lives only in
the ``research.export`` event (signed by the node key), never in the files: whoever holds the
files cannot walk back to the patient, the node can.

The node reaches here as protocols (``ExportHost``, ``Chainer``), as ``qr.runs`` takes it, so that
this room never imports the node that imports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import select

from dicom_chain.block import Block
from dicom_chain.carriers.base import Item
from dicom_chain.config import Settings
from dicom_chain.db.database import Database
from dicom_chain.db.models import EventRow
from dicom_chain.errors import ResearchExportRefused, StorageError
from dicom_chain.events import Event, EventDraft
from dicom_chain.qr import index
from dicom_chain.qr.matching import parse_key
from dicom_chain.qr.query import Query
from dicom_chain.storage import Storage
from dicom_chain.vocab import EventType

OPT_EVENTS = (EventType.PATIENT_RESEARCH_OPT_IN, EventType.PATIENT_RESEARCH_OPT_OUT)
RESEARCH_KEY_FILE_NAME = "research.key"  # beside the node key: the research chain's own key


def research_settings(settings: Settings) -> Settings:
    """The node's settings for its research chain: same ledger, store and institution, its own key
    (so its own chain), and no upstream PACS (research copies are not clinical images)."""
    key_file = settings.key_path.with_name(RESEARCH_KEY_FILE_NAME)
    return dataclasses.replace(settings, key_file=key_file, forward=())


@dataclass(frozen=True)
class OptIn:
    """Whether a patient is opted in at a time, with the event that says so (None: never asked)."""

    opted_in: bool
    reason: str
    event_seq: int | None = None


def opt_in_draft(patient_id: str, issuer: str, *, opt_in: bool, actor: str) -> EventDraft:
    """The event a patient's decision is recorded as."""
    return EventDraft(
        type=EventType.PATIENT_RESEARCH_OPT_IN if opt_in else EventType.PATIENT_RESEARCH_OPT_OUT,
        actor=actor,
        patient_id=patient_id,
        details={"patient_id": patient_id, "issuer": issuer},
    )


def research_opt_in(events: Iterable[Event], patient_id: str, issuer: str, now: str) -> OptIn:
    """Is the patient opted in at ``now`` (ISO 8601 UTC, as events' times)? Pure.

    The latest opt-in or opt-out for the patient up to ``now`` wins. An event without an issuer
    speaks for the Patient ID under any issuer; one with an issuer only for that issuer."""
    latest: Event | None = None
    for event in events:
        if event.type not in OPT_EVENTS or event.patient_id != patient_id or event.time > now:
            continue
        said = str(event.details.get("issuer", "") or "")
        if said and said != issuer:
            continue
        if latest is None or event.seq > latest.seq:
            latest = event
    who = f"patient {patient_id}" + (f" (issuer {issuer})" if issuer else "")
    if latest is None:
        return OptIn(False, f"{who} has not opted in to research")
    if latest.type == EventType.PATIENT_RESEARCH_OPT_OUT:
        return OptIn(False, f"{who} opted out of research on {latest.time[:10]}", latest.seq)
    return OptIn(True, f"{who} opted in to research on {latest.time[:10]}", latest.seq)


def patient_research_events(db: Database, patient_id: str) -> list[Event]:
    """The patient's opt-in and opt-out events, in sequence order."""
    table = EventRow.__table__
    stmt = (
        select(table)
        .where(table.c.type.in_([str(t) for t in OPT_EVENTS]), table.c.patient_id == patient_id)
        .order_by(table.c.seq)
    )
    with db.reading() as session:
        return [Event.from_stored(row._mapping) for row in session.execute(stmt)]


# -- the export


class Ingested(Protocol):
    @property
    def block(self) -> Block: ...

    @property
    def path(self) -> Path: ...


class ExportHost(Protocol):
    """What the export needs of the node (``node.Node`` is one): the index, the store, the log."""

    @property
    def db(self) -> Database: ...

    @property
    def storage(self) -> Storage: ...

    def record(self, draft: EventDraft) -> None: ...


class Chainer(Protocol):
    """Where the copies are chained: the node opened with ``research_settings``."""

    def ingest(self, item: Item, actor: str = "") -> Ingested: ...


class Deidentifier(Protocol):
    """One study's de-identification (``carriers.dicom.deidentify.StudyDeidentifier`` is one)."""

    profile: str

    def copy(self, part10: bytes) -> CopyLike: ...


class CopyLike(Protocol):
    @property
    def item(self) -> Item: ...

    @property
    def source_block_hash(self) -> str: ...


@dataclass(frozen=True)
class StudyInstance:
    """One newest stored instance of a study, as the index has it."""

    path: str
    sop_instance_uid: str
    series_instance_uid: str
    patient_id: str
    issuer: str


@dataclass(frozen=True)
class ExportResult:
    files: tuple[Path, ...]
    source_study_uid: str
    deidentified_study_uid: str
    links: tuple[tuple[str, str], ...]  # (source block hash, copy block hash)


def study_instances(db: Database, study_uid: str) -> list[StudyInstance]:
    """The study's newest instances, from the query index, in index order."""
    query = Query(
        model="STUDY", level="IMAGE", keys={"StudyInstanceUID": parse_key("UI", study_uid)}, requested=()
    )
    return [
        StudyInstance(
            path=values["_path"],
            sop_instance_uid=values["SOPInstanceUID"],
            series_instance_uid=values["SeriesInstanceUID"],
            patient_id=values.get("PatientID") or "",
            issuer=values.get("IssuerOfPatientID") or "",
        )
        for values in index.find(db, query, level="IMAGE")
    ]


def check_export(db: Database, study_uid: str, now: str) -> tuple[list[StudyInstance], OptIn]:
    """The instances to export, or ResearchExportRefused with the reason (nothing done yet)."""
    instances = study_instances(db, study_uid)
    if not instances:
        raise ResearchExportRefused(f"study {study_uid} is not on this node")
    patients = {(i.patient_id, i.issuer) for i in instances}
    if len(patients) != 1:  # one study, one patient: anything else is not ours to decide for
        raise ResearchExportRefused(f"study {study_uid} names {len(patients)} patients")
    ((patient_id, issuer),) = patients
    if not patient_id:
        raise ResearchExportRefused(f"study {study_uid} has no Patient ID: nobody could have opted in")
    decision = research_opt_in(patient_research_events(db, patient_id), patient_id, issuer, now)
    if not decision.opted_in:
        raise ResearchExportRefused(decision.reason)
    return instances, decision


def _read(storage: Storage, instance: StudyInstance) -> bytes:
    try:
        return storage.path(instance.path).read_bytes()
    except OSError as exc:  # the index names a file the store lost: verify --db says more
        what = f"{instance.sop_instance_uid}: cannot read {instance.path} ({exc.strerror})"
        raise StorageError(what) from exc


def export_study(
    host: ExportHost,
    chainer: Chainer,
    deidentifier: Deidentifier,
    study_uid: str,
    output: Path,
    *,
    now: str,
    actor: str,
) -> ExportResult:
    """De-identify the study's newest instances, chain each copy, write them to ``output``, and
    record the ``research.export`` event with the links; refused (nothing written) unless the
    patient is opted in at ``now``. ``chainer`` is the research chain (``research_settings``)."""
    instances, _ = check_export(host.db, study_uid, now)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ResearchExportRefused(f"{output} exists and is not an empty directory")
    copies = [deidentifier.copy(_read(host.storage, i)) for i in instances]
    chained = [chainer.ingest(c.item, actor=actor) for c in copies]
    output.mkdir(parents=True, exist_ok=True)
    files = []
    for copy, done in zip(copies, chained, strict=True):
        target = output / f"{copy.item.identity.item_id}.dcm"
        target.write_bytes(done.path.read_bytes())
        files.append(target)
    new_studies = {c.item.identity.group_id for c in copies}
    (new_study,) = new_studies  # one anonymizer per study maps one study UID to one
    links = tuple((c.source_block_hash, d.block.hash) for c, d in zip(copies, chained, strict=True))
    first = instances[0]
    host.record(
        EventDraft(
            type=EventType.RESEARCH_EXPORT,
            actor=actor,
            patient_id=first.patient_id,
            study_uid=study_uid,
            details={
                "output": str(output),
                "profile": deidentifier.profile,
                "instances": len(files),
                "source_study_uid": study_uid,
                "deidentified_study_uid": new_study,
                "blocks": [{"source": s, "copy": c} for s, c in links],
            },
        )
    )
    return ExportResult(tuple(files), study_uid, new_study, links)
