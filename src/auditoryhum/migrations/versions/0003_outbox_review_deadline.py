"""The outbox of the stateful stages' outputs, and when each review dataset was complete (its deadline's start).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox_v1",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("token", sa.String(), nullable=False, unique=True),
        sa.Column("topic", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("payload_type", sa.String(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
    )
    with op.batch_alter_table("review_datasets_v1") as batch:
        batch.add_column(sa.Column("completed_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("review_datasets_v1") as batch:
        batch.drop_column("completed_at")
    op.drop_table("outbox_v1")
