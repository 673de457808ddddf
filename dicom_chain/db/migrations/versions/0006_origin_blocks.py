"""origin blocks: the senders' blocks of items received from other institutions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

One row per block of ours that carries an ``origin`` (docs/design.md 10.6): the sender's block
as received, so that verify checks the link across institutions without it being in the file.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "origin_blocks",
        sa.Column("block_hash", sa.String(length=64), nullable=False),
        sa.Column("institution", sa.String(length=64), nullable=False),
        sa.Column("sender_block_hash", sa.String(length=64), nullable=False),
        sa.Column("block", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("block_hash"),
    )


def downgrade() -> None:
    op.drop_table("origin_blocks")
