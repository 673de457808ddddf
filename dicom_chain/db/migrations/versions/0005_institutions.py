"""institutions: the parties this node shares studies with

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

One row per institution, written with its ``institution.added`` event; removing one marks the
row (``removed_at``) so that history keeps it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "institutions",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("tls_cert", sa.Text(), nullable=False),
        sa.Column("added_at", sa.String(length=32), nullable=False),
        sa.Column("removed_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_institutions_ae", "institutions", ["ae_title"], unique=False)
    op.create_index("ix_institutions_key", "institutions", ["key_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_institutions_key", table_name="institutions")
    op.drop_index("ix_institutions_ae", table_name="institutions")
    op.drop_table("institutions")
