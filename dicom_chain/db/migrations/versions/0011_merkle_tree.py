"""the event log's Merkle tree: its perfect subtrees, and how many events it holds

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30

Derived from the event log (tlog/store.py grows it from the events it lacks, when a checkpoint or
a proof is asked for): empty here, the first checkpoint builds it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "merkle_nodes",
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("idx", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
    )
    op.create_table(
        "merkle_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO merkle_head (id, size) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("merkle_head")
    op.drop_table("merkle_nodes")
