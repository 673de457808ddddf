"""process state in the database: write intents, the audit feed's cursor and lease

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

Intents were files in ``<store>-journal/`` named by pid and the feed's cursor a file in the
node's home: both only made sense to one process on one host. Leftover journal files of an
earlier version are not imported: a file they name is reported by verify as foreign and is
replaced when the sender sends the instance again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "intents",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("host", sa.String(length=64), nullable=False),
        sa.Column("boot", sa.String(length=16), nullable=False),
        sa.Column("pid", sa.BigInteger(), nullable=False),
        sa.Column("started", sa.BigInteger(), nullable=False),
        sa.Column("folder", sa.Text(), nullable=False),
        sa.Column("item", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_intents_owner", "intents", ["host", "boot", "pid"], unique=False)
    op.create_table(
        "feed_cursors",
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(length=160), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("target"),
    )


def downgrade() -> None:
    op.drop_table("feed_cursors")
    op.drop_index("ix_intents_owner", table_name="intents")
    op.drop_table("intents")
