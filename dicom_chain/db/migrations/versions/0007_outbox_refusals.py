"""outbox refusals: the count that dead-letters an instance, apart from all attempts

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

``attempts`` counts every try, including the many while a PACS is down; the bound on refusals
must count only the PACS saying no, or one refusal after an outage would dead-letter at once.
Existing rows start at 0: their past refusals cannot be told from their other attempts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("refusals", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("refusals")
