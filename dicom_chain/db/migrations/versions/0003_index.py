"""query/retrieve index: patients, studies, series, instances

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("patient_name", sa.Text(), nullable=False),
        sa.Column("patient_name_key", sa.Text(), nullable=False),
        sa.Column("birth_date", sa.String(length=8), nullable=False),
        sa.Column("sex", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("patient_id", "issuer", name="uq_patients_id_issuer"),
    )
    op.create_index(
        "ix_patients_name_key",
        "patients",
        ["patient_name_key"],
        postgresql_ops={"patient_name_key": "text_pattern_ops"},
    )
    op.create_index("ix_patients_birth_date", "patients", ["birth_date"])
    op.create_table(
        "studies",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("patient_pk", BIGID, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column("study_time", sa.String(length=32), nullable=False),
        sa.Column("study_time_key", sa.String(length=32), nullable=False),
        sa.Column("accession_number", sa.String(length=64), nullable=False),
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("referring_physician", sa.Text(), nullable=False),
        sa.Column("referring_physician_key", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["patient_pk"], ["patients.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid"),
    )
    op.create_index("ix_studies_patient", "studies", ["patient_pk"])
    op.create_index("ix_studies_date", "studies", ["study_date"])
    op.create_index("ix_studies_accession", "studies", ["accession_number"])
    op.create_table(
        "series",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("study_pk", BIGID, nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("series_number", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("series_date", sa.String(length=8), nullable=False),
        sa.Column("series_time", sa.String(length=32), nullable=False),
        sa.Column("series_time_key", sa.String(length=32), nullable=False),
        sa.Column("body_part", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["study_pk"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_uid"),
    )
    op.create_index("ix_series_study", "series", ["study_pk"])
    op.create_index("ix_series_modality", "series", ["modality"])
    op.create_table(
        "instances",
        sa.Column("id", BIGID, autoincrement=True, nullable=False),
        sa.Column("series_pk", BIGID, nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.String(length=16), nullable=False),
        sa.Column("transfer_syntax", sa.String(length=64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("chain_id", sa.String(length=36), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("received_at", sa.String(length=32), nullable=False),
        sa.Column("verification", sa.String(length=16), nullable=False),
        sa.Column("verified_at", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["series_pk"], ["series.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    op.create_index("ix_instances_series", "instances", ["series_pk"])


def downgrade() -> None:
    op.drop_index("ix_instances_series", table_name="instances")
    op.drop_table("instances")
    op.drop_index("ix_series_modality", table_name="series")
    op.drop_index("ix_series_study", table_name="series")
    op.drop_table("series")
    op.drop_index("ix_studies_accession", table_name="studies")
    op.drop_index("ix_studies_date", table_name="studies")
    op.drop_index("ix_studies_patient", table_name="studies")
    op.drop_table("studies")
    op.drop_index("ix_patients_birth_date", table_name="patients")
    op.drop_index("ix_patients_name_key", table_name="patients")
    op.drop_table("patients")
