"""witnessing: what this node last cosigned of each log it watches, what its witnesses last
cosigned of its own log, the checkpoints it published, and where each institution's log answers

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

All tables start empty: a witness knows nothing of a log until it first cosigns it (size 0, the
empty tree, is the state c2sp.org/tlog-witness starts from); an institution registered before
this revision has no log address until it is given one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "witnessed_logs",
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("institution", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("origin"),
    )
    op.create_table(
        "log_cosignatures",
        sa.Column("witness", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("witness"),
    )
    op.create_table(
        "published_checkpoints",
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
        sa.Column("cosigners", sa.Integer(), nullable=False),
        sa.Column("published_at", sa.String(length=32), nullable=False),
        sa.Column("timestamp", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("size"),
    )
    with op.batch_alter_table("institutions") as batch:
        batch.add_column(sa.Column("log_url", sa.String(length=255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("institutions") as batch:
        batch.drop_column("log_url")
    op.drop_table("published_checkpoints")
    op.drop_table("log_cosignatures")
    op.drop_table("witnessed_logs")
