"""The taxonomy each review dataset's clips join, so its DatasetSealed reaches the clusterer that builds it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("review_datasets_v1") as batch:
        batch.add_column(sa.Column("taxonomy", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("review_datasets_v1") as batch:
        batch.drop_column("taxonomy")
