"""The state schema comes from the Alembic migrations, on a SQLite file and on a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing
import queue
import threading

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from google.protobuf.message import Message
from sqlalchemy import create_engine, insert, inspect, select, text

from auditoryhum import migrations, topics
from auditoryhum.stages.clusterer import ClustererStage
from auditoryhum.stages.review import ReviewPolicy, ReviewStage
from auditoryhum.store import (Store, cluster_datasets, cluster_labels, metadata, review_clips, review_datasets,
                               review_decisions)
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.test_cli import auditoryhum
from tests.test_stages import alignment

HEAD = "0007"
ROWS_0001 = {  # a review and a clusterer mid-way through a dataset, as the schema before 0002 held them
    review_datasets: [dict(dataset="d", expected=3, complete=True, sealed=False)],
    review_clips: [dict(dataset="d", clip_id="a", status="pending", score=0.1, task_id="a/review", reason="low",
                        alignment=b"\x0a\x03\x0a\x01a"),
                   dict(dataset="d", clip_id="b", status="final", score=0.9, task_id=None, reason=None,
                        alignment=b"\x0a\x03\x0a\x01b"),
                   dict(dataset="d", clip_id="c", status="dead", score=None, task_id=None, reason="unreadable",
                        alignment=None)],
    cluster_datasets: [dict(dataset="d", expected=None, published=False)],
    cluster_labels: [dict(dataset="d", clip_id="b", label="rain", audio_embedding=b"\x00\x00\x80\x3f")],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres_db")


def migrate(url: str, revision: str) -> None:
    engine = create_engine(url)
    with engine.connect() as conn, conn.begin():
        migrations.upgrade(conn, revision)
    engine.dispose()


def revision_and_tables(url: str) -> tuple[str | None, set[str]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = migrations.current(conn), set(inspect(conn).get_table_names())
    engine.dispose()
    return found


def rows(store: Store, table) -> list[dict]:
    with store.transaction() as db:
        return [dict(r._mapping) for r in db.execute(select(table).order_by(*table.primary_key.columns))]


def test_an_empty_database_is_brought_to_head_and_matches_the_tables(url):
    Store(url).close()
    assert revision_and_tables(url) == (HEAD, {"alembic_version", *metadata.tables})
    engine = create_engine(url)
    with engine.connect() as conn:  # what `auditoryhum db revision` would write: nothing
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_rows_of_0001_survive_the_upgrade_and_the_downgrade(url):
    migrate(url, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        for table, values in ROWS_0001.items():
            conn.execute(insert(table), values)  # the 0001 columns only
    engine.dispose()

    store = Store(url)
    assert revision_and_tables(url)[0] == HEAD
    for table, values in ROWS_0001.items():
        new = {c: None for c in ("lease_owner", "lease_expires", "label")} if table is review_clips else \
            {"completed_at": None, "taxonomy": None} if table is review_datasets else \
            {"taxonomy": "d", "assigned_version": None, "novel": None} if table is cluster_labels else {}
        assert rows(store, table) == [{**v, **new} for v in values]
    assert rows(store, review_decisions) == []
    with store.transaction() as db:  # the new schema is usable
        db.execute(insert(review_decisions).values(task_id="a/review", dataset="d", clip_id="a", action="accept",
                                                   reviewer="r", decided_at=1.0, score_before=0.1))
    store.close()

    engine = create_engine(url)
    with engine.connect() as conn, conn.begin():
        command.downgrade(migrations.config(conn), "0001")
    with engine.connect() as conn:
        assert migrations.current(conn) == "0001"
        assert "review_decisions_v1" not in inspect(conn).get_table_names()
        assert {c["name"] for c in inspect(conn).get_columns("review_clips_v1")} == {
            "dataset", "clip_id", "status", "score", "task_id", "reason", "alignment"}
        for table, values in ROWS_0001.items():
            columns = [table.c[name] for name in values[0]]
            got = conn.execute(select(*columns).order_by(*table.primary_key.columns)).all()
            assert [dict(r._mapping) for r in got] == values
    engine.dispose()


def test_a_database_made_by_create_all_is_adopted(url):
    """Before migrations, `metadata.create_all` made the 0001 tables and no alembic_version."""
    migrate(url, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(review_clips), ROWS_0001[review_clips])
        conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    assert revision_and_tables(url) == (None, set(migrations.LEGACY_TABLES))

    store = Store(url)
    assert revision_and_tables(url)[0] == HEAD
    assert [r["clip_id"] for r in rows(store, review_clips)] == ["a", "b", "c"]
    store.close()


def test_db_commands_report_and_upgrade_the_revision(url):
    migrate(url, "0001")
    assert auditoryhum("db", "current", "--url", url).stdout == f"{url}: 0001\n"
    upgraded = auditoryhum("db", "upgrade", "--url", url)
    assert upgraded.returncode == 0 and upgraded.stdout == f"{url}: {HEAD}\n", upgraded.stderr
    assert auditoryhum("db", "current", "--url", url).stdout == f"{url}: {HEAD}\n"
    bad = auditoryhum("db", "upgrade", "--url", "not a url")
    assert bad.returncode == 2 and "not a database URL" in bad.stderr


def test_a_foreign_schema_is_refused_with_a_clear_error(url):
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE review_clips_v1 (x INTEGER)"))
    engine.dispose()
    with pytest.raises(migrations.MigrationError, match="no alembic_version"):
        Store(url)
    assert revision_and_tables(url) == (None, {"review_clips_v1"})


def open_store(url: str, barrier, results) -> None:
    barrier.wait()
    try:
        Store(url).close()
        results.put("ok")
    except Exception as exc:  # reported by the test's assert
        results.put(repr(exc))


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_stores_starting_at_once_all_succeed(url, kind):
    """Services starting together against one database: one migrates, the others wait and find it at head."""
    fork = multiprocessing.get_context("fork")  # the children start at once, without re-importing
    barrier, results, runner = ((threading.Barrier(3), queue.Queue(), threading.Thread) if kind == "threads"
                                else (fork.Barrier(3), fork.Queue(), fork.Process))
    workers = [runner(target=open_store, args=(url, barrier, results)) for _ in range(3)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    assert outcomes == ["ok"] * 3
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
    engine.dispose()


GROUPS = {"vehicles": ["car engine", "truck engine", "passing cars", "road traffic", "motor vehicle", "bus engine"],
          "birds": ["bird song", "birds chirping", "songbirds", "bird calls", "birds singing", "chirping sparrows"],
          "rain": ["heavy rain", "rain falling", "rainfall", "rain drops", "light rain", "pouring rain"]}


def flow(store: Store, models) -> list[tuple[str, str, Message]]:
    """A dataset through review (auto-accept) and the clusterer: every output, timestamps cleared."""
    review = ReviewStage(ReviewPolicy(fraction=0.05), store=store)
    clusterer = ClustererStage(TaxonomyBuilder(models.embedder, k_max=8), store=store)
    labels = [label for members in GROUPS.values() for n, label in enumerate(members) for _ in range(6 - n)]
    outs = review.handle(pb.DatasetAnnouncement(dataset="d", expected_clips=len(labels) + 1))
    for i, label in enumerate(labels):
        outs += review.handle(alignment(f"c{i:02d}", 0.2 + i / 100, label=label))
    outs += review.handle(pb.DeadLetter(stage="labeler", clip_id="bad", dataset="d", reason="unreadable"))
    for out in list(outs):
        if out.topic == topics.FINAL_LABELS:
            outs += clusterer.handle(out.message)
    store.close()
    for out in outs:
        if "created_at" in out.message.DESCRIPTOR.fields_by_name:
            out.message.ClearField("created_at")
    return [(o.topic, o.key, o.message) for o in outs]


def test_review_and_clusterer_give_the_same_outputs_on_postgresql_as_on_sqlite(postgres_db, models):
    on_postgres = flow(Store(postgres_db), models)
    assert on_postgres == flow(Store(), models)

    messages = [m for _, _, m in on_postgres]
    tasks = [t.alignment.clip.clip_id for t in messages if isinstance(t, pb.ReviewTask)]
    assert tasks == ["c00", "c01", "c02", "c03"]  # the worst scores: ceil(5% of 63)
    finals = [m for m in messages if isinstance(m, pb.FinalLabel)]
    assert sorted(f.clip.clip_id for f in finals) == [f"c{i:02d}" for i in range(63)]
    assert [m for m in messages if isinstance(m, pb.DatasetSealed)] == [
        pb.DatasetSealed(dataset="d", final_labels=63, dead_letters=1)]
    [taxonomy] = [m for m in messages if isinstance(m, pb.Taxonomy)]
    assert taxonomy.clips == 63 and taxonomy.k == 3
    assert {frozenset(lc.label for lc in c.labels) for c in taxonomy.clusters} == set(map(frozenset, GROUPS.values()))


def test_a_sqlite_state_file_survives_a_machine_crash(tmp_path):
    """Offsets are committed once the state is: every commit is synced (synchronous=FULL, not WAL's NORMAL, which
    may lose the last commits on a power cut); the embedded mode's in-memory database has nothing to sync."""
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    with store.transaction() as db:
        assert db.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert db.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def test_a_taxonomy_built_before_0006_becomes_its_version_1(url, models):
    migrate(url, "0004")
    built = pb.Taxonomy(dataset="d", k=1, clusters=[pb.TaxonomyCluster(cluster_id=0, composite_label="rain", size=2,
                                                                       labels=[pb.LabelCount(label="rain", count=2)])])
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO cluster_datasets_v1 (dataset, expected, published, taxonomy) "
                          "VALUES ('d', 2, true, :blob)"), {"blob": built.SerializeToString()})
    engine.dispose()
    store = Store(url)
    stage = ClustererStage(TaxonomyBuilder(models.embedder), store=store)
    migrated = pb.Taxonomy(dataset="d", k=1, version=1, trigger="migrated", clusters=built.clusters)
    assert stage.taxonomy("d", 1) == stage.taxonomy("d") == migrated
    store.close()
