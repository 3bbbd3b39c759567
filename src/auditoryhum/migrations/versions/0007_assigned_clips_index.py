"""An index for the rebuild policy's count of the clips assigned since a taxonomy's build.

The clusterer counts them after every assignment; with only the taxonomy index that read every row of the
taxonomy (110,000 at `make bench-scale`'s scale) for each new clip.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_cluster_labels_v1_assigned", "cluster_labels_v1", ["taxonomy", "assigned_version", "novel"])


def downgrade() -> None:
    op.drop_index("ix_cluster_labels_v1_assigned", table_name="cluster_labels_v1")
