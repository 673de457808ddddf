"""index marks: how far each chain's blocks are known to be in the query index

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

The index is written after the C-STORE response (qr/indexqueue.py), so a process killed in between
leaves committed blocks the index lacks; each start indexes those above its chain's mark and
moves the mark. Until now the index was written in the receipt's transaction, so every block a
chain holds is indexed: the mark starts at the chain's head.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "index_marks",
        sa.Column("chain_id", sa.String(length=36), nullable=False),
        sa.Column("height", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("chain_id"),
    )
    op.execute("INSERT INTO index_marks (chain_id, height) SELECT chain_id, head_height FROM chains")


def downgrade() -> None:
    op.drop_table("index_marks")
