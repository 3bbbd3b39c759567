"""The state tables as `metadata.create_all` made them before there were migrations.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_datasets_v1",
        sa.Column("dataset", sa.String(), primary_key=True),
        sa.Column("expected", sa.Integer(), nullable=True),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("sealed", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "review_clips_v1",
        sa.Column("dataset", sa.String(), primary_key=True),
        sa.Column("clip_id", sa.String(), primary_key=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("task_id", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=True),
        sa.Column("alignment", sa.LargeBinary(), nullable=True),
    )
    op.create_index("ix_review_clips_v1_status", "review_clips_v1", ["status"])
    op.create_index("ix_review_clips_v1_task_id", "review_clips_v1", ["task_id"])
    op.create_table(
        "cluster_datasets_v1",
        sa.Column("dataset", sa.String(), primary_key=True),
        sa.Column("expected", sa.Integer(), nullable=True),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("taxonomy", sa.LargeBinary(), nullable=True),
    )
    op.create_table(
        "cluster_labels_v1",
        sa.Column("dataset", sa.String(), primary_key=True),
        sa.Column("clip_id", sa.String(), primary_key=True),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("audio_embedding", sa.LargeBinary(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("cluster_labels_v1")
    op.drop_table("cluster_datasets_v1")
    op.drop_index("ix_review_clips_v1_task_id", table_name="review_clips_v1")
    op.drop_index("ix_review_clips_v1_status", table_name="review_clips_v1")
    op.drop_table("review_clips_v1")
    op.drop_table("review_datasets_v1")
