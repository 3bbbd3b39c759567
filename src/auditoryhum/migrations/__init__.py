"""Schema migrations of the review/clusterer state: Alembic, configured in code (no alembic.ini).

:func:`upgrade` runs inside the caller's transaction, so a failed migration leaves the database as it was. Several
processes may start against one database at once: on PostgreSQL a transaction-scoped advisory lock serialises
them, on SQLite the store opens this transaction with ``BEGIN IMMEDIATE``. A database made by the
``metadata.create_all`` of the releases before migrations (the tables, no ``alembic_version``) is adopted: stamped
``0001``, then upgraded.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

INITIAL = "0001"
# What revision 0001 creates, i.e. what `metadata.create_all` made before there were migrations.
LEGACY_TABLES = frozenset({"review_datasets_v1", "review_clips_v1", "cluster_datasets_v1", "cluster_labels_v1"})
# pg_advisory_xact_lock key: any constant that other users of the database do not pick ("audi" in ASCII).
LOCK_KEY = 0x61756469


# Alembic's `op` and `context` are process-wide proxies: one migration at a time in this process.
_alembic = threading.Lock()


class MigrationError(RuntimeError):
    """The database holds a schema these migrations do not know how to bring to head."""


def config(connection: Connection) -> Config:
    """Alembic's configuration; env.py migrates ``connection``, the only way it reaches a database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")  # versions/0003_add_something.py
    cfg.attributes["connection"] = connection
    return cfg


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(conn: Connection, revision: str = "head") -> None:
    """Bring the database on ``conn`` to ``revision``, inside the transaction ``conn`` holds."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    cfg = config(conn)
    with _alembic:
        if current(conn) is None:
            present = LEGACY_TABLES & set(inspect(conn).get_table_names())
            if present == LEGACY_TABLES:
                command.stamp(cfg, INITIAL)
            elif present:
                raise MigrationError(f"the database has some of the state tables ({', '.join(sorted(present))}) "
                                     "but no alembic_version: it was not made by auditoryhum; use an empty database")
        command.upgrade(cfg, revision)
