"""Durable state of the set-wise stages (review, clusterer): SQLite by default, PostgreSQL by URL (SQLAlchemy).

A stage's state changes inside :meth:`Store.transaction`, which the runner holds open while it publishes the
outputs: state commits only once its outputs are durable on the bus. A crash before that rolls the state back
and the replayed input redoes the work; a crash after it finds the state done and emits nothing twice.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import partial
from typing import Iterator

from sqlalchemy import (Boolean, Column, Connection, Float, Integer, LargeBinary, MetaData, String, Table,
                        create_engine, event)
from sqlalchemy.pool import StaticPool

metadata = MetaData()

review_datasets = Table(
    "review_datasets_v1", metadata,
    Column("dataset", String, primary_key=True),
    Column("expected", Integer, nullable=True),
    Column("complete", Boolean, nullable=False, default=False),
    Column("sealed", Boolean, nullable=False, default=False),
)

# One row per clip that reached review. status: scored (awaiting the dataset's selection), pending (a task awaiting
# a decision), relabelling (sent back to the labeler with a hint), final (its final label is out), removed
# (unusable), dead (dead-lettered upstream).
review_clips = Table(
    "review_clips_v1", metadata,
    Column("dataset", String, primary_key=True),
    Column("clip_id", String, primary_key=True),
    Column("status", String, nullable=False, index=True),
    Column("score", Float, nullable=True),
    Column("task_id", String, nullable=True, index=True),
    Column("reason", String, nullable=True),
    Column("alignment", LargeBinary, nullable=True),
)

cluster_datasets = Table(
    "cluster_datasets_v1", metadata,
    Column("dataset", String, primary_key=True),
    Column("expected", Integer, nullable=True),
    Column("published", Boolean, nullable=False, default=False),  # the sealed dataset's taxonomy is out
    Column("taxonomy", LargeBinary, nullable=True),  # the latest build (BuildTaxonomy may rebuild it)
)

cluster_labels = Table(
    "cluster_labels_v1", metadata,
    Column("dataset", String, primary_key=True),
    Column("clip_id", String, primary_key=True),
    Column("label", String, nullable=False),
    Column("audio_embedding", LargeBinary, nullable=True),  # float32 bytes, class-vector representation only
)


class Store:
    """One database; ``sqlite://`` (the default) is a private in-memory database for the embedded mode."""

    def __init__(self, url: str = "sqlite://"):
        self.url = url
        if url.startswith("sqlite"):
            memory = url in ("sqlite://", "sqlite:///:memory:")
            self.engine = create_engine(url, poolclass=StaticPool if memory else None,
                                        connect_args={"check_same_thread": False})
            event.listen(self.engine, "connect", partial(_sqlite_connect, wal=not memory))
            # pysqlite's own transaction handling breaks SAVEPOINT; let SQLAlchemy emit BEGIN itself.
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        metadata.create_all(self.engine)
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

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_conn, _record, *, wal: bool) -> None:
    dbapi_conn.isolation_level = None
    if wal:  # readers (the API) never block the stream's writer
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
