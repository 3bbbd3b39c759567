"""Durable state of the set-wise stages (review, clusterer): SQLite by default, PostgreSQL by URL (SQLAlchemy).

A stage's state changes inside :meth:`Store.transaction`, which the runner holds open while it writes the outputs
to the same database's outbox (:mod:`auditoryhum.outbox`): state and outputs commit together and are relayed to
the bus after. A crash before the commit rolls both back and the replayed input redoes the work; a crash after it
finds the state done and the outputs waiting, and sends each of them once.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from functools import partial
from typing import Iterator

from sqlalchemy import (Boolean, Column, Connection, Float, Index, Integer, LargeBinary, MetaData, String, Table,
                        create_engine, event, select, text)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import StaticPool

from auditoryhum import migrations

metadata = MetaData()

review_datasets = Table(
    "review_datasets_v1", metadata,
    Column("dataset", String, primary_key=True),
    Column("expected", Integer, nullable=True),
    Column("complete", Boolean, nullable=False, default=False),
    Column("sealed", Boolean, nullable=False, default=False),
    Column("completed_at", Float, nullable=True),  # epoch seconds; a review deadline counts from here
    Column("taxonomy", String, nullable=True),  # the taxonomy its clips join (empty: the dataset's own)
)

# One row per clip that reached review. status: scored (awaiting the dataset's selection), pending (a task awaiting
# a decision), rescoring (a human correction awaiting the aligner's score), relabelling (sent back to the labeler
# with a hint), final (its final label is out), removed (unusable), dead (dead-lettered upstream).
review_clips = Table(
    "review_clips_v1", metadata,
    Column("dataset", String, primary_key=True),
    Column("clip_id", String, primary_key=True),
    Column("status", String, nullable=False, index=True),
    Column("score", Float, nullable=True),
    Column("task_id", String, nullable=True, index=True),
    Column("reason", String, nullable=True),
    Column("alignment", LargeBinary, nullable=True),
    # The clip's label: the model's best, then its final label (what reviewers pick corrections from).
    Column("label", String, nullable=True, index=True),
    # A pending task is held by one reviewer until lease_expires (epoch seconds); expired leases are free.
    Column("lease_owner", String, nullable=True),
    Column("lease_expires", Float, nullable=True),
)

# One row per decided task: the audit trail, idempotency, and the review's uplift (score before and after).
review_decisions = Table(
    "review_decisions_v1", metadata,
    Column("task_id", String, primary_key=True),
    Column("dataset", String, nullable=False, index=True),
    Column("clip_id", String, nullable=False),
    Column("action", String, nullable=False),  # accept, correct, unusable, relabel
    Column("label", String, nullable=True),  # the correction, when one
    Column("hint", String, nullable=True),
    Column("reviewer", String, nullable=False),
    Column("decided_at", Float, nullable=False),  # epoch seconds
    Column("score_before", Float, nullable=True),  # the model's best label's score
    Column("final_label", String, nullable=True),  # set once the final label is out
    Column("score_after", Float, nullable=True),  # the aligner's score of the final label
)

cluster_datasets = Table(
    "cluster_datasets_v1", metadata,
    Column("dataset", String, primary_key=True),
    Column("expected", Integer, nullable=True),
    Column("published", Boolean, nullable=False, default=False),  # the sealed dataset's labels are in a build
)

cluster_labels = Table(
    "cluster_labels_v1", metadata,
    Column("dataset", String, primary_key=True),
    Column("clip_id", String, primary_key=True),
    Column("label", String, nullable=False),
    Column("audio_embedding", LargeBinary, nullable=True),  # float32 bytes, class-vector representation only
    Column("taxonomy", String, nullable=False, index=True),  # the living taxonomy the clip joins
    # A clip that arrived after a build: the version it was assigned to, and whether it was novel there (the
    # rebuild policy counts these); NULL once a build includes it.
    Column("assigned_version", Integer, nullable=True),
    Column("novel", Boolean, nullable=True),
    # The rebuild policy counts a taxonomy's clips assigned since its build after every assignment: from this
    # index alone, not by reading all the taxonomy's rows.
    Index("ix_cluster_labels_v1_assigned", "taxonomy", "assigned_version", "novel"),
)

# Every build of a taxonomy, kept: GetTaxonomy answers any version, and a rebuild's lineage starts from the last.
taxonomy_versions = Table(
    "taxonomy_versions_v1", metadata,
    Column("taxonomy", String, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("created_at", Float, nullable=False),  # epoch seconds
    Column("trigger", String, nullable=False),
    Column("taxonomy_pb", LargeBinary, nullable=False),  # a serialised pb.Taxonomy
)


# The outputs of a state change, written in the same transaction as the change and relayed to the bus after it
# commits (auditoryhum.outbox): a crash can never leave an output out, or out twice, relative to the state.
outbox = Table(
    "outbox_v1", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # relay order
    Column("token", String, nullable=False, unique=True),  # the record's header on the bus: found again after a crash
    Column("topic", String, nullable=False),
    Column("key", String, nullable=False),
    Column("payload_type", String, nullable=False),
    Column("payload", LargeBinary, nullable=False),
)


class Store:
    """One database; ``sqlite://`` (the default) is a private in-memory database for the embedded mode."""

    def __init__(self, url: str = "sqlite://"):
        self.url = url
        if url.startswith("sqlite"):
            memory = url in ("sqlite://", "sqlite:///:memory:")
            self.engine = create_engine(url, poolclass=StaticPool if memory else None,
                                        connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self.engine, "connect", partial(_sqlite_connect, wal=not memory))
            # pysqlite's own transaction handling breaks SAVEPOINT; let SQLAlchemy emit BEGIN itself.
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        # The schema comes from the migrations (on SQLite, BEGIN IMMEDIATE locks before the revision is read).
        with self.engine.begin() as conn:
            migrations.upgrade(conn)
        # One writer at a time in this process: the stream worker and the gRPC threads share the stage state.
        self._lock = threading.RLock()
        self._local = threading.local()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A transaction; nested inside one this thread holds, a savepoint, so a failed handler attempt rolls back
        alone and its retry starts from clean state."""
        held = getattr(self._local, "conn", None)
        if held is not None:
            with held.begin_nested():
                yield held
            return
        with self._lock, self.engine.begin() as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    @property
    def shared(self) -> bool:
        """Whether replicas on other machines can share this database (a server, not a SQLite file)."""
        return not self.url.startswith("sqlite")

    def in_transaction(self) -> bool:
        """Whether this thread holds a transaction (whose changes are not committed yet)."""
        return getattr(self._local, "conn", None) is not None

    def close(self) -> None:
        self.engine.dispose()


def lock_row(db: Connection, table: Table, **key):
    """The row of ``table`` with primary key ``key``, created (other columns at their defaults) if missing, and
    locked until the transaction ends (FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE already holds the whole
    file). Replicas sharing a database serialise their work on one dataset on its row: a gRPC call, the deadline
    timer or a consumer that lost its partitions in a rebalance never interleaves with the dataset's owner, and
    each reads what the one before it committed."""
    dialect = postgresql if db.dialect.name == "postgresql" else sqlite
    defaults = {c.name: c.default.arg for c in table.columns if c.default is not None and not c.primary_key}
    # ON CONFLICT DO NOTHING: two replicas creating the same row at once both go on, neither fails.
    db.execute(dialect.insert(table).values(**key, **defaults).on_conflict_do_nothing())
    where = [table.c[name] == value for name, value in key.items()]
    return db.execute(select(table).where(*where).with_for_update()).one()


def lock_name(db: Connection, scope: str, name: str) -> None:
    """Hold a lock on ``scope``/``name`` until the transaction ends, for state spread over rows with no one row to
    lock (a taxonomy spans datasets and versions): a PostgreSQL transaction-level advisory lock; on SQLite, BEGIN
    IMMEDIATE already holds the whole file."""
    if db.dialect.name == "postgresql":
        db.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"{scope}/{name}"})


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock up front: two connections that read, then write, would otherwise deadlock
    # (SQLite fails one with "database is locked" instead of waiting).
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_connect(dbapi_conn, _record, *, wal: bool) -> None:
    dbapi_conn.isolation_level = None
    if wal:  # readers (the API) never block the stream's writer
        cursor = dbapi_conn.cursor()
        _switch_to_wal(cursor)
        # Offsets are committed once this state is: a machine crash must not roll back a commit (NORMAL may).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()


def _switch_to_wal(cursor, wait_s: float = 30.0) -> None:
    """Switching a new file to WAL needs a moment alone with it, and SQLite answers "database is locked" at once
    rather than waiting when another connection is busy with it: retry (once switched, the file stays WAL)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
