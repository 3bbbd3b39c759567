"""Living taxonomies: a taxonomy spans datasets and keeps every build as a version.

Final labels name the taxonomy they join and remember the version they were assigned to as they arrived (NULL once
a build includes them); each dataset's single taxonomy blob becomes version 1 of the taxonomy named after it.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    versions = op.create_table(
        "taxonomy_versions_v1",
        sa.Column("taxonomy", sa.String(), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("taxonomy_pb", sa.LargeBinary(), nullable=False),
    )
    datasets = sa.table("cluster_datasets_v1", sa.column("dataset", sa.String()),
                        sa.column("taxonomy", sa.LargeBinary()))
    conn = op.get_bind()
    built = conn.execute(sa.select(datasets.c.dataset, datasets.c.taxonomy)
                         .where(datasets.c.taxonomy.is_not(None))).all()
    if built:
        op.bulk_insert(versions, [{"taxonomy": d, "version": 1, "created_at": time.time(), "trigger": "migrated",
                                   "taxonomy_pb": blob} for d, blob in built])
    with op.batch_alter_table("cluster_datasets_v1") as batch:
        batch.drop_column("taxonomy")
    with op.batch_alter_table("cluster_labels_v1") as batch:
        batch.add_column(sa.Column("taxonomy", sa.String(), nullable=True))
        batch.add_column(sa.Column("assigned_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("novel", sa.Boolean(), nullable=True))
    op.execute("UPDATE cluster_labels_v1 SET taxonomy = dataset")
    with op.batch_alter_table("cluster_labels_v1") as batch:
        batch.alter_column("taxonomy", existing_type=sa.String(), nullable=False)
        batch.create_index("ix_cluster_labels_v1_taxonomy", ["taxonomy"])


def downgrade() -> None:
    with op.batch_alter_table("cluster_labels_v1") as batch:
        batch.drop_index("ix_cluster_labels_v1_taxonomy")
        batch.drop_column("novel")
        batch.drop_column("assigned_version")
        batch.drop_column("taxonomy")
    with op.batch_alter_table("cluster_datasets_v1") as batch:
        batch.add_column(sa.Column("taxonomy", sa.LargeBinary(), nullable=True))
    versions = sa.table("taxonomy_versions_v1", sa.column("taxonomy", sa.String()),
                        sa.column("version", sa.Integer()), sa.column("taxonomy_pb", sa.LargeBinary()))
    datasets = sa.table("cluster_datasets_v1", sa.column("dataset", sa.String()),
                        sa.column("taxonomy", sa.LargeBinary()))
    conn = op.get_bind()
    latest = sa.select(versions.c.taxonomy, sa.func.max(versions.c.version).label("v")).group_by(versions.c.taxonomy)
    for name, version in conn.execute(latest).all():
        blob = conn.execute(sa.select(versions.c.taxonomy_pb).where(versions.c.taxonomy == name,
                                                                   versions.c.version == version)).scalar()
        conn.execute(datasets.update().where(datasets.c.dataset == name).values(taxonomy=blob))
    op.drop_table("taxonomy_versions_v1")
