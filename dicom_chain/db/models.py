"""Ledger tables (SQLAlchemy 2). Constraints, not code, make forks and duplicates impossible."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dicom_chain.db.indexschema import LEVEL_TABLES, Level, stored
from dicom_chain.events import EVENT_FIELDS, EventField, Stored

HASH = String(64)
UID = String(64)  # PS3.5 9.1: a UID has at most 64 characters
# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BIGID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class ChainRow(Base):
    """One row per chain; its head is the row appends lock, so heights are handed out one at a time."""

    __tablename__ = "chains"

    chain_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64), unique=True)
    key_id: Mapped[str] = mapped_column(String(16))
    institution: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32))
    head_height: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(HASH)


class BlockRow(Base):
    __tablename__ = "blocks"
    __table_args__ = (
        UniqueConstraint("chain_id", "height", name="uq_blocks_chain_height"),
        UniqueConstraint("chain_id", "sop_instance_uid", "version", name="uq_blocks_sop_version"),
        UniqueConstraint("chain_id", "study_instance_uid", "study_index", name="uq_blocks_study_index"),
    )
    # A SOP Instance's versions (the receipt's latest-version read) are found through
    # uq_blocks_sop_version: an index of (chain_id, sop_instance_uid) alone would only repeat its
    # prefix, at a page written per block (dropped in migration 0010).

    id: Mapped[int] = mapped_column(BIGID, primary_key=True, autoincrement=True)
    chain_id: Mapped[str] = mapped_column(ForeignKey("chains.chain_id"))
    height: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[str] = mapped_column(HASH, unique=True)
    prev_hash: Mapped[str] = mapped_column(HASH)
    content_hash: Mapped[str] = mapped_column(HASH)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    version: Mapped[int] = mapped_column(Integer)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    study_index: Mapped[int] = mapped_column(Integer)
    study_prev_hash: Mapped[str] = mapped_column(HASH)
    timestamp: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    block: Mapped[str] = mapped_column(Text)  # the canonical serialised block, signature included


class EventLogHead(Base):
    """The single row appends of events lock; holds the newest sequence number and hash."""

    __tablename__ = "event_log_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(HASH)


def _event_column(f: EventField) -> Column:
    # seq is SQLite's rowid (INTEGER PRIMARY KEY): the table is kept in seq order with no second
    # tree for the key, one page fewer written per event (migration 0010).
    integer = BIGID if f.key else BigInteger()
    kind: Any = integer if f.stored is Stored.INTEGER else String(f.size) if f.size else Text()
    return Column(f.name, kind, primary_key=f.key, autoincrement=False, unique=f.unique, nullable=False)


class EventRow(Base):
    """One event of the log; its columns are events.EVENT_FIELDS (details: canonical JSON text)."""

    __table__ = Table(
        "events",
        Base.metadata,
        *(_event_column(f) for f in EVENT_FIELDS),
        # What queries read events by besides seq: type (the sharing rules, outages, the access
        # log) and, within a type, patient (research opt-ins), study (an item's versions), time
        # (exports by period). Each is a page written per event appended, so no other: type and
        # patient share one (migration 0010; they were two).
        Index("ix_events_type_patient", "type", "patient_id"),
        Index("ix_events_study", "study_uid"),
        Index("ix_events_time", "time"),
    )


class OutboxRow(Base):
    """One instance waiting for (or done with) one upstream destination: the store-and-forward queue.

    Rows are added in the same transaction as the block, so an acknowledged instance is always
    queued; workers lease rows (lease_until) so several processes can share one queue.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("destination", "block_hash", name="uq_outbox_destination_block"),
        Index("ix_outbox_due", "destination", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BIGID, primary_key=True, autoincrement=True)
    destination: Mapped[str] = mapped_column(String(200))
    block_hash: Mapped[str] = mapped_column(HASH)
    chain_id: Mapped[str] = mapped_column(String(36))
    height: Mapped[int] = mapped_column(BigInteger)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax: Mapped[str] = mapped_column(UID)  # as stored: picks the presentation context
    study_instance_uid: Mapped[str] = mapped_column(UID)
    patient_id: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(8))  # pending | done | failed
    attempts: Mapped[int] = mapped_column(Integer)
    refusals: Mapped[int] = mapped_column(Integer, server_default="0")  # the PACS said no: bounded
    created_at: Mapped[float] = mapped_column(Float)  # epoch seconds: compared, never shown raw
    next_attempt_at: Mapped[float] = mapped_column(Float)
    lease_until: Mapped[float] = mapped_column(Float)
    lease_owner: Mapped[str] = mapped_column(String(128))  # owners.Owner of the worker holding it
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str] = mapped_column(Text)
    done_at: Mapped[float | None] = mapped_column(Float, nullable=True)


# -- Process state shared through the database, so that several processes (on several hosts) can
# share one ledger: whose write is in flight, who sends the audit feed. Owners are db/owners.py's.


class IntentRow(Base):
    """A file about to be written for an instance, noted before the receipt's transaction and
    deleted in it: what is left belongs to a process that died between the file and the commit."""

    __tablename__ = "intents"
    __table_args__ = (Index("ix_intents_owner", "host", "boot", "pid"),)

    id: Mapped[int] = mapped_column(BIGID, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(64))
    boot: Mapped[str] = mapped_column(String(16))  # boot id and pid namespace, hashed (owners.py)
    pid: Mapped[int] = mapped_column(BigInteger)
    started: Mapped[int] = mapped_column(BigInteger)  # process start time, clock ticks after boot
    folder: Mapped[str] = mapped_column(Text)  # the instance's folder in the store
    item: Mapped[str] = mapped_column(Text)  # its file name stem: covers every version's file
    created_at: Mapped[float] = mapped_column(Float)  # epoch seconds


class FeedCursorRow(Base):
    """Where the live audit feed to one target stands, and which process sends it (a lease)."""

    __tablename__ = "feed_cursors"

    target: Mapped[str] = mapped_column(String(255), primary_key=True)  # udp|tcp|tls://host:port
    seq: Mapped[int] = mapped_column(BigInteger)  # the last event sent
    lease_owner: Mapped[str] = mapped_column(String(160))  # owner and feed instance; "" when free
    lease_until: Mapped[float] = mapped_column(Float)  # epoch seconds


# -- Query/Retrieve index: one row per patient, study, series and (latest version of an) instance.
# Written after the C-STORE response (qr/indexqueue.py), repaired on start; `reindex` rebuilds it.
# The attribute columns come from db/indexschema.py; *_key columns hold the form matching compares
# (folded person names, padded times), the plain columns the value as received (what C-FIND returns).


def _attribute_columns(level: Level) -> list[Column]:
    columns = []
    for a in stored(level):
        assert a.column is not None
        if a.integer:
            kind: Any = Integer()
        elif a.vr == "UL":
            kind = BigInteger()
        else:
            kind = String(a.width) if a.width else Text()
        columns.append(Column(a.column, kind, nullable=a.integer, unique=a.keyword in _UNIQUE))
        if a.key_column and a.key_column != a.column:
            columns.append(Column(a.key_column, kind, nullable=False))
    return columns


_UNIQUE = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"}  # one row per entity (newest version)


def _index_table(level: Level, *extra: Any) -> Table:
    return Table(
        LEVEL_TABLES[level],
        Base.metadata,
        Column("id", BIGID, primary_key=True, autoincrement=True),
        *_attribute_columns(level),
        *extra,
    )


class PatientRow(Base):
    __table__ = _index_table(
        "PATIENT",
        UniqueConstraint("patient_id", "issuer", name="uq_patients_id_issuer"),
        Index(
            "ix_patients_name_key",
            "patient_name_key",
            postgresql_ops={"patient_name_key": "text_pattern_ops"},
        ),
        Index("ix_patients_birth_date", "birth_date"),
    )


class StudyRow(Base):
    __table__ = _index_table(
        "STUDY",
        Column("patient_pk", BIGID, ForeignKey("patients.id"), nullable=False),
        Index("ix_studies_patient", "patient_pk"),
        Index("ix_studies_date", "study_date"),
        Index("ix_studies_accession", "accession_number"),
        Index(  # the study's own patient name, what STUDY and lower levels match
            "ix_studies_patient_name_key",
            "patient_name_key",
            postgresql_ops={"patient_name_key": "text_pattern_ops"},
        ),
    )


class SeriesRow(Base):
    __table__ = _index_table(
        "SERIES",
        Column("study_pk", BIGID, ForeignKey("studies.id"), nullable=False),
        Index("ix_series_study", "study_pk"),
        Index("ix_series_modality", "modality"),
    )


class InstanceRow(Base):
    # Beside the attributes: where the newest version's file is and how it is encoded. The
    # verification state is "verified" when its block was checked (at receipt, by verify or
    # reindex), "altered" / "missing" when verify last found it so.
    __table__ = _index_table(
        "IMAGE",
        Column("series_pk", BIGID, ForeignKey("series.id"), nullable=False),
        Column("transfer_syntax", UID, nullable=False),
        Column("version", Integer, nullable=False),
        Column("path", Text, nullable=False),
        Column("received_at", String(32), nullable=False),
        Index("ix_instances_series", "series_pk"),
    )


class PatientIdentityRow(Base):
    """Each value a patient's identifying attributes have had (qr/index.py): a value not seen
    before beside others is a patient-identity conflict, recorded once as an event."""

    __tablename__ = "patient_identities"
    __table_args__ = (UniqueConstraint("patient_pk", "keyword", "value_key", name="uq_patient_identities"),)

    id: Mapped[int] = mapped_column(BIGID, primary_key=True, autoincrement=True)
    patient_pk: Mapped[int] = mapped_column(BIGID, ForeignKey("patients.id"))
    keyword: Mapped[str] = mapped_column(String(64))  # PatientName, PatientBirthDate, PatientSex
    value_key: Mapped[str] = mapped_column(Text)  # compared: a name folded as matching folds it
    value: Mapped[str] = mapped_column(Text)  # as first received
    study_uid: Mapped[str] = mapped_column(UID)  # the study and instance that first brought it
    sop_uid: Mapped[str] = mapped_column(UID)


# -- Sharing: the institutions this node shares with (dicom_chain/sharing/registry.py). Written in
# the transaction of their institution.added / .removed event; a removed one keeps its row.


class InstitutionRow(Base):
    __tablename__ = "institutions"
    __table_args__ = (
        Index("ix_institutions_ae", "ae_title"),
        Index("ix_institutions_key", "key_id"),
    )

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16))  # PS3.5 AE: 16 characters
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[str] = mapped_column(String(64))  # hex, Ed25519: 32 bytes
    tls_cert: Mapped[str] = mapped_column(Text)  # PEM, or "" when the link is not TLS
    added_at: Mapped[str] = mapped_column(String(32))
    removed_at: Mapped[str | None] = mapped_column(String(32), nullable=True)  # None while registered
    # Where its node's transparency log and witness answer over HTTPS (web/), or "": not watched
    log_url: Mapped[str] = mapped_column(String(255), default="", server_default="")


class OriginBlockRow(Base):
    """The sender's block of an item received from another institution, as received (docs/design.md
    10.6): kept here, never in the stored file, so the file keeps one block and ``verify --db``
    can check our block's ``origin`` against it. Written in the receipt's transaction."""

    __tablename__ = "origin_blocks"

    block_hash: Mapped[str] = mapped_column(HASH, primary_key=True)  # our block: the one naming the origin
    institution: Mapped[str] = mapped_column(String(64))  # the sender, as registered
    sender_block_hash: Mapped[str] = mapped_column(HASH)
    block: Mapped[str] = mapped_column(Text)  # the sender's canonical serialised block, signature included


class IndexMarkRow(Base):
    """Up to which height a chain's blocks are known to be in the query index: the index is written
    after the response (qr/indexqueue.py), and each start indexes what a killed process left above
    the mark, then moves it. No row: nothing known, every block is looked at."""

    __tablename__ = "index_marks"

    chain_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    height: Mapped[int] = mapped_column(BigInteger)


class MerkleNodeRow(Base):
    """One perfect subtree of the event log's Merkle tree (tlog/store.py): the hash of leaves
    [idx * 2^level, (idx + 1) * 2^level), leaf i being event seq i + 1. Two rows a leaf in all;
    any proof at any size reads O(log n) of them."""

    __tablename__ = "merkle_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class MerkleHeadRow(Base):
    """How many events the stored tree holds: one row, locked while the tree grows."""

    __tablename__ = "merkle_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)


class WitnessedLogRow(Base):
    """The latest checkpoint this node, as a witness, cosigned of another institution's log: a
    newer one is cosigned only with a consistency proof from it (tlog/witnessing.py)."""

    __tablename__ = "witnessed_logs"

    # the log by its key, ``<key ID>.dicom-chain/`` (witnessing.log_id): not the name it gives itself
    origin: Mapped[str] = mapped_column(String(255), primary_key=True)
    institution: Mapped[str] = mapped_column(String(64))  # its name in our registry
    size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    signed: Mapped[str] = mapped_column(Text)  # the log's signed note, as received: evidence
    updated_at: Mapped[str] = mapped_column(String(32))


class LogCosignatureRow(Base):
    """The latest cosignature each witness (a registered institution) gave our log: the size a
    request to it proves consistency from (tlog/publishing.py)."""

    __tablename__ = "log_cosignatures"

    witness: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    line: Mapped[str] = mapped_column(Text)  # the cosignature's note line
    updated_at: Mapped[str] = mapped_column(String(32))


class PublishedCheckpointRow(Base):
    """A checkpoint of our log cosigned by a quorum of witnesses: what we show others."""

    __tablename__ = "published_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    signed: Mapped[str] = mapped_column(Text)  # our signature and the witnesses' cosignatures
    cosigners: Mapped[int] = mapped_column(Integer)
    published_at: Mapped[str] = mapped_column(String(32))
    timestamp: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # RFC 3161 token


class UserRow(Base):
    """A person who logs in to the web console (users.py): a role, an argon2id hash, never the password."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32))
    disabled_at: Mapped[str | None] = mapped_column(String(32), nullable=True)


class PatientLinkRow(Base):
    """A patient's link to their own page: the token's SHA-256 only, so the table gives no link away."""

    __tablename__ = "patient_links"
    __table_args__ = (Index("ix_patient_links_patient", "patient_id"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issued_by: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[str] = mapped_column(String(32))
    revoked_at: Mapped[str | None] = mapped_column(String(32), nullable=True)
