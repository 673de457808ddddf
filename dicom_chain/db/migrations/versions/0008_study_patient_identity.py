"""study patient identity: each study's own patient attributes, and every value a patient had

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

Instances with one Patient ID may disagree on name, birth date or sex; the patients row kept only
the newest, and every study was answered with it. Studies now keep their own values (STUDY and
lower levels answer them) and ``patient_identities`` every value a patient has had (a new one
beside others is recorded as a ``patient.identity-conflict`` event). Existing studies start with
their patient's current values, the only ones this database still holds; ``dicom-chain reindex``
restores each study's own from its files.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COPIES = (  # (column, type): the same names as in patients
    ("patient_name", sa.Text()),
    ("patient_name_key", sa.Text()),
    ("birth_date", sa.String(length=8)),
    ("sex", sa.String(length=16)),
)
IDENTITY = (  # (keyword, value column, compared column)
    ("PatientName", "patient_name", "patient_name_key"),
    ("PatientBirthDate", "birth_date", "birth_date"),
    ("PatientSex", "sex", "sex"),
)


def upgrade() -> None:
    # Plain ALTER TABLE (SQLite adds and drops columns in place): a batch would copy the table,
    # which SQLite's enforced foreign keys from series forbid. The default stays: it fills old rows.
    for name, kind in COPIES:
        op.add_column("studies", sa.Column(name, kind, nullable=False, server_default=""))
    columns = ", ".join(name for name, _ in COPIES)
    values = ", ".join(
        f"(SELECT p.{name} FROM patients p WHERE p.id = studies.patient_pk)" for name, _ in COPIES
    )
    op.execute(f"UPDATE studies SET ({columns}) = ({values})")
    op.create_index(
        "ix_studies_patient_name_key",
        "studies",
        ["patient_name_key"],
        postgresql_ops={"patient_name_key": "text_pattern_ops"},
    )
    op.create_table(
        "patient_identities",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("patient_pk", BIGID, nullable=False),
        sa.Column("keyword", sa.String(length=64), nullable=False),
        sa.Column("value_key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["patient_pk"], ["patients.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_pk", "keyword", "value_key", name="uq_patient_identities"),
    )
    for keyword, column, key in IDENTITY:
        op.execute(
            "INSERT INTO patient_identities (patient_pk, keyword, value_key, value, study_uid, sop_uid) "
            f"SELECT id, '{keyword}', {key}, {column}, '', '' FROM patients WHERE {column} != ''"
        )


def downgrade() -> None:
    op.drop_table("patient_identities")
    op.drop_index("ix_studies_patient_name_key", table_name="studies")
    for name, _ in COPIES:
        op.drop_column("studies", name)
