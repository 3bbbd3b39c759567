"""Review leases (one reviewer holds a pending task until it expires), each clip's current label (the reviewers'
choices), and the decisions' audit trail.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("review_clips_v1") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(), nullable=True))
        batch.add_column(sa.Column("lease_expires", sa.Float(), nullable=True))
        batch.add_column(sa.Column("label", sa.String(), nullable=True))
        batch.create_index("ix_review_clips_v1_label", ["label"])
    op.create_table(
        "review_decisions_v1",
        sa.Column("task_id", sa.String(), primary_key=True),
        sa.Column("dataset", sa.String(), nullable=False),
        sa.Column("clip_id", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=True),
        sa.Column("hint", sa.String(), nullable=True),
        sa.Column("reviewer", sa.String(), nullable=False),
        sa.Column("decided_at", sa.Float(), nullable=False),
        sa.Column("score_before", sa.Float(), nullable=True),
        sa.Column("final_label", sa.String(), nullable=True),
        sa.Column("score_after", sa.Float(), nullable=True),
    )
    op.create_index("ix_review_decisions_v1_dataset", "review_decisions_v1", ["dataset"])


def downgrade() -> None:
    op.drop_index("ix_review_decisions_v1_dataset", table_name="review_decisions_v1")
    op.drop_table("review_decisions_v1")
    with op.batch_alter_table("review_clips_v1") as batch:
        batch.drop_index("ix_review_clips_v1_label")
        batch.drop_column("label")
        batch.drop_column("lease_expires")
        batch.drop_column("lease_owner")
