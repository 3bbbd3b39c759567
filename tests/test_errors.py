"""Error classes (auditoryhum.errors) on real failures of real components: PostgreSQL aborting, losing and
restarting, SQLite locked, an HTTP object store away or refusing, Triton's status codes; and the worker acting on
them: a transient error is retried and given back, never dead-lettered, and counted under its class."""

from __future__ import annotations

import http.server
import socket
import sqlite3
import threading
import time
from collections import Counter
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

import grpc
import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, make_url, text
from tritonclient.utils import InferenceServerException

from auditoryhum import audio, topics
from auditoryhum.backends import triton
from auditoryhum.bus.memory import InMemoryBus
from auditoryhum.config import Settings
from auditoryhum.errors import DATABASE, MODEL_SERVER, STORAGE, TransientError, transient_kind
from auditoryhum.pipeline import audio_loader
from auditoryhum.review.desk import ReviewDesk
from auditoryhum.runner import StageWorker, Threads, drain
from auditoryhum.service import grpc_server, metrics
from auditoryhum.service.grpc_api import ReviewServicer
from auditoryhum.stages.labeler import LabelerStage
from auditoryhum.stages.review import ReviewPolicy, ReviewStage
from auditoryhum.store import Store
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2 as api
from auditoryhum.v1 import services_pb2_grpc as api_grpc
from tests.conftest import LINCITY
from tests.postgres import PostgresServer, create_database

OWN_PG_PORT = 25441  # a server of this module's own: its restarts leave the session's (25432) alone


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    with PostgresServer(OWN_PG_PORT) as server:
        yield server


def raised(call) -> BaseException:
    with pytest.raises(Exception) as info:
        call()
    return info.value


def admin(url: str) -> psycopg.Connection:
    """A plain connection to the database of ``url``, beside the engine under test."""
    u = make_url(url)
    return psycopg.connect(host=u.host, port=u.port, user=u.username, dbname=u.database, autocommit=True)


def errors_seen(stage: str, kind: str) -> float:
    return REGISTRY.get_sample_value("auditoryhum_errors_total", {"stage": stage, "kind": kind}) or 0.0


# -- databases ------------------------------------------------------------------------------------------------------


def test_a_serialization_failure_is_a_transient_database_error(postgres_db):
    engine = create_engine(postgres_db, isolation_level="SERIALIZABLE")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE on_call (doctor text PRIMARY KEY, on_duty boolean)"))
        conn.execute(text("INSERT INTO on_call VALUES ('alice', true), ('bob', true)"))
    # Write skew: each takes the other off duty after seeing two on duty; SERIALIZABLE lets only one commit.
    first, second = engine.connect(), engine.connect()
    for conn in (first, second):
        conn.begin()
        assert conn.execute(text("SELECT count(*) FROM on_call WHERE on_duty")).scalar() == 2
    first.execute(text("UPDATE on_call SET on_duty = false WHERE doctor = 'alice'"))
    second.execute(text("UPDATE on_call SET on_duty = false WHERE doctor = 'bob'"))
    first.commit()
    exc = raised(second.commit)
    assert exc.orig.sqlstate == "40001"  # serialization_failure, from the server itself
    assert transient_kind(exc) == transient_kind(exc.orig) == DATABASE
    first.close()
    second.close()
    engine.dispose()


def test_a_deadlock_is_a_transient_database_error(postgres_db):
    engine = create_engine(postgres_db)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE account (id int PRIMARY KEY, balance int)"))
        conn.execute(text("INSERT INTO account VALUES (1, 100), (2, 100)"))
    a, b = engine.connect(), engine.connect()
    for conn, row in ((a, 1), (b, 2)):
        conn.begin()
        conn.execute(text("SET LOCAL deadlock_timeout = '50ms'"))
        conn.execute(text("UPDATE account SET balance = balance - 1 WHERE id = :id"), {"id": row})
    failures: list[BaseException] = []

    def cross(conn, row):
        try:
            conn.execute(text("UPDATE account SET balance = balance + 1 WHERE id = :id"), {"id": row})
        except Exception as exc:  # noqa: BLE001 — one of the two is chosen as the victim
            failures.append(exc)
            conn.rollback()

    threads = [threading.Thread(target=cross, args=(a, 2)), threading.Thread(target=cross, args=(b, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    (exc,) = failures
    assert exc.orig.sqlstate == "40P01"  # deadlock_detected
    assert transient_kind(exc) == DATABASE
    a.close()
    b.close()
    engine.dispose()


def test_constraint_and_data_errors_stay_permanent(postgres_db):
    engine = create_engine(postgres_db)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE clip (id text PRIMARY KEY)"))
        conn.execute(text("INSERT INTO clip VALUES ('a')"))
    with engine.connect() as conn:
        duplicate = raised(lambda: conn.execute(text("INSERT INTO clip VALUES ('a')")))
    with engine.connect() as conn:
        nul = raised(lambda: conn.execute(text("INSERT INTO clip VALUES (:id)"), {"id": "b\x00"}))
    assert duplicate.orig.sqlstate == "23505"
    assert "NUL" in str(nul)
    assert transient_kind(duplicate) is None and transient_kind(nul) is None
    engine.dispose()


def test_a_terminated_connection_a_restarted_server_and_a_server_away_are_transient(own_postgres):
    url = create_database(own_postgres.url())
    engine = create_engine(url, pool_pre_ping=True)
    with engine.connect() as conn, admin(url) as other:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
        terminated = raised(lambda: conn.execute(text("SELECT 1")))
    assert terminated.orig.sqlstate == "57P01"  # admin_shutdown
    assert terminated.connection_invalidated and transient_kind(terminated) == DATABASE

    with engine.connect() as conn:  # a restart cuts a transaction mid-way
        conn.begin()
        conn.execute(text("SELECT 1"))
        own_postgres.restart("immediate")
        cut = raised(lambda: conn.execute(text("SELECT 1")))
    assert transient_kind(cut) == DATABASE

    own_postgres.stop("fast")
    try:
        away = raised(engine.connect)
    finally:
        own_postgres.start()
    assert "Connection refused" in str(away) and transient_kind(away) == DATABASE
    with engine.connect() as conn:  # and the pool finds the server again
        assert conn.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_sqlite_locked_by_another_writer_is_transient_a_missing_table_is_not(tmp_path):
    path = tmp_path / "state.db"
    holder = sqlite3.connect(path, timeout=0, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    waiter = sqlite3.connect(path, timeout=0, isolation_level=None)
    locked = raised(lambda: waiter.execute("BEGIN IMMEDIATE"))
    assert "database is locked" in str(locked)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with engine.connect() as conn:
        wrapped = raised(lambda: conn.execute(text("INSERT INTO t VALUES (1)")))
        missing = raised(lambda: conn.execute(text("SELECT * FROM nowhere")))
    assert transient_kind(locked) == transient_kind(wrapped) == DATABASE
    assert "no such table" in str(missing) and transient_kind(missing) is None
    holder.execute("ROLLBACK")
    holder.close()
    waiter.close()
    engine.dispose()


# -- object stores --------------------------------------------------------------------------------------------------


class ObjectStore(http.server.ThreadingHTTPServer):
    """A real HTTP server on loopback answering each path with a fixed status and body (404 for the rest)."""

    def __init__(self, port: int, objects: dict[str, tuple[int, bytes]]):
        self.objects = objects
        super().__init__(("127.0.0.1", port), _Answer)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> "ObjectStore":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        status, data = self.server.objects.get(self.path, (404, b"no such object"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def closed_port() -> int:
    """A loopback port nothing listens on (the kernel picked it free; it is closed again at once)."""
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RECORDING = LINCITY / "TraficLow1.wav"


def test_an_object_store_away_or_overloaded_is_transient_a_missing_or_bad_object_is_not(tmp_path):
    port = closed_port()
    refused = raised(lambda: audio.load(f"http://127.0.0.1:{port}/x.wav", 16000))
    assert isinstance(refused, TransientError) and refused.kind == STORAGE == transient_kind(refused)
    assert "Connect" in str(refused)  # the network error behind fsspec's FileNotFoundError, not "not found"
    missing = raised(lambda: audio.load(tmp_path / "missing.wav", 16000))
    assert isinstance(missing, audio.AudioError) and transient_kind(missing) is None

    objects = {"/good.wav": (200, RECORDING.read_bytes()), "/busy.wav": (503, b"slow down"),
               "/forbidden.wav": (403, b"no"), "/corrupt.wav": (200, b"not audio at all " * 100)}
    with ObjectStore(port, objects):
        url = f"http://127.0.0.1:{port}"
        assert audio.load(f"{url}/good.wav", 16000).duration_s > 0.5
        busy = raised(lambda: audio.load(f"{url}/busy.wav", 16000))
        assert isinstance(busy, TransientError) and busy.kind == STORAGE and "503" in str(busy)
        for name, reason in (("gone", "cannot open"), ("forbidden", "cannot open"), ("corrupt", "not readable")):
            exc = raised(lambda: audio.load(f"{url}/{name}.wav", 16000))
            assert isinstance(exc, audio.AudioError) and reason in str(exc), (name, exc)
            assert transient_kind(exc) is None


def test_the_labeler_waits_out_an_object_store_outage_and_dead_letters_nothing(models):
    port = closed_port()
    bus = InMemoryBus()
    stage = LabelerStage(models.labeler, audio_loader(Settings()))
    metrics.start(stage.name, stage.consumes)
    worker = StageWorker(bus, stage, batch_size=8, max_retries=2, backoff_s=0.01,
                         metrics=metrics.StageMetrics())
    labels, letters = bus.subscribe("test-labels", [topics.LABELS]), bus.subscribe("test-dlq", [topics.DLQ])
    clips = [pb.Clip(clip_id=f"c{i}", dataset="remote", uri=f"http://127.0.0.1:{port}/clip{i}.wav") for i in range(3)]
    for clip in clips:
        bus.publish(topics.CLIPS, clip.clip_id, clip)
    before = errors_seen(stage.name, STORAGE)
    assert worker.step() == 0  # every attempt failed: the batch is given back, uncommitted
    assert bus.lag(worker.consumer_group) == 3 and letters.poll(100) == []
    assert errors_seen(stage.name, STORAGE) - before == 3  # two retries and the give-back, under "storage"
    with ObjectStore(port, {f"/clip{i}.wav": (200, RECORDING.read_bytes()) for i in range(3)}):
        drain([worker])
    assert sorted(r.message().clip.clip_id for r in labels.poll(100)) == ["c0", "c1", "c2"]
    assert letters.poll(100) == [] and bus.lag(worker.consumer_group) == 0


def test_retries_back_off_doubling_up_to_the_cap(models):
    bus = InMemoryBus()
    worker = StageWorker(bus, LabelerStage(models.labeler, audio_loader(Settings())), max_retries=4, backoff_s=0.1,
                         max_backoff_s=0.2)
    uri = f"http://127.0.0.1:{closed_port()}/c.wav"
    bus.publish(topics.CLIPS, "c", pb.Clip(clip_id="c", dataset="remote", uri=uri))
    assert worker.step() == 0  # the first call also sets up fsspec's HTTP client: not timed
    started = time.perf_counter()
    assert worker.step() == 0
    # 0.1 + 0.2 + 0.2 + 0.2 between the five attempts, 0.2 after giving the batch back a second time: 0.9 s. Without
    # the doubling it would be 0.5 s; without the cap, 1.7 s.
    assert 0.85 < time.perf_counter() - started < 1.4


# -- model servers --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status, transient", [("INTERNAL", True), ("RESOURCE_EXHAUSTED", True),
                                               ("UNAVAILABLE", True), ("DEADLINE_EXCEEDED", True),
                                               ("INVALID_ARGUMENT", False), ("OUT_OF_RANGE", False)])
def test_triton_status_codes_sort_into_model_server_errors_and_bad_input(status, transient):
    # As tritonclient builds it from the gRPC status of a failed call (tritonclient.grpc._utils.get_error_grpc).
    error = triton._error("clap_scorer", InferenceServerException("failed", status=f"StatusCode.{status}"))
    if transient:
        assert isinstance(error, TransientError) and transient_kind(error) == MODEL_SERVER
    else:
        assert isinstance(error, ValueError) and transient_kind(error) is None


def test_the_error_metric_has_every_class_at_zero_from_the_start():
    metrics.start("errors-test", [topics.CLIPS])
    for kind in ("bus", DATABASE, STORAGE, MODEL_SERVER):
        assert REGISTRY.get_sample_value("auditoryhum_errors_total", {"stage": "errors-test", "kind": kind}) == 0.0


# -- the review stage on PostgreSQL ---------------------------------------------------------------------------------


def alignments(dataset: str, n: int) -> list[pb.Alignment]:
    return [pb.Alignment(clip=pb.Clip(clip_id=f"{dataset}-{i:04d}", dataset=dataset), model_id="m",
                         best_label=f"label {i % 7}", best_score=0.2 + (i * 37 % n) / n,
                         scores=[pb.LabelScore(label=f"label {i % 7}", score=0.2 + (i * 37 % n) / n)])
            for i in range(n)]


def feed(bus: InMemoryBus, dataset: str, items: list[pb.Alignment]) -> None:
    bus.publish(topics.DATASETS, dataset, pb.DatasetAnnouncement(dataset=dataset, expected_clips=len(items)))
    for a in items:
        bus.publish(topics.ALIGNMENTS, a.clip.clip_id, a)


def wait(condition, timeout_s: float, what: str, threads: Threads | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if threads is not None:
            threads.check()
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@contextmanager
def review_on(url: str) -> Iterator[tuple[InMemoryBus, StageWorker, Store]]:
    store = Store(url)
    bus = InMemoryBus()
    stage = ReviewStage(ReviewPolicy(fraction=0.05), store=store)
    metrics.start(stage.name, stage.consumes)
    worker = StageWorker(bus, stage, batch_size=16, backoff_s=0.02, max_backoff_s=0.5, metrics=metrics.StageMetrics())
    try:
        yield bus, worker, store
    finally:
        store.close()


def test_review_on_postgresql_loses_a_commit_and_a_server_mid_stream_and_labels_every_clip_once(own_postgres):
    url = create_database(own_postgres.url())
    n, dataset = 300, "restarted"
    with review_on(url) as (bus, worker, _):
        finals, letters = bus.subscribe("test-finals", [topics.FINAL_LABELS]), bus.subscribe("test-dlq", [topics.DLQ])
        lost_before = errors_seen("review", DATABASE)
        feed(bus, dataset, alignments(dataset, n))
        with admin(url) as db:
            # Fault 1, PostgreSQL gone at COMMIT: a deferred trigger ends its own session while the transaction that
            # records the 40th clip commits.
            db.execute("CREATE SEQUENCE clips_committed")
            db.execute("""CREATE FUNCTION lose_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                          IF nextval('clips_committed') = 40 THEN PERFORM pg_terminate_backend(pg_backend_pid());
                          END IF; RETURN NULL; END $$""")
            db.execute("CREATE CONSTRAINT TRIGGER lose_commit AFTER INSERT ON review_clips_v1 DEFERRABLE INITIALLY "
                       "DEFERRED FOR EACH ROW EXECUTE FUNCTION lose_commit()")
            deadline = time.monotonic() + 60
            while db.execute("SELECT count(*) FROM review_clips_v1").fetchone()[0] < 80:
                worker.step()
                assert time.monotonic() < deadline, "review stopped recording clips"
            assert db.execute("SELECT last_value FROM clips_committed").fetchone()[0] > 40  # the batch came again
            started_at = db.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        assert errors_seen("review", DATABASE) - lost_before == 1
        assert letters.poll(100) == []

        # Fault 2, the server restarted mid-statement: the worker waits on a lock, then the server goes.
        locker = admin(url)
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE review_clips_v1 IN ACCESS EXCLUSIVE MODE")
        sealed: list[pb.DatasetSealed] = []
        labels: list[pb.FinalLabel] = []

        def done() -> bool:
            for record in finals.poll(1000):
                message = record.message()
                (sealed if isinstance(message, pb.DatasetSealed) else labels).append(message)
            return bool(sealed)

        with Threads([worker], poll_timeout_s=0.02) as threads:
            with admin(url) as watcher:
                wait(lambda: watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                             "current_database() AND wait_event_type = 'Lock'").fetchone()[0] > 0,
                     30, "the worker never reached the locked table", threads)
            own_postgres.restart("immediate")
            locker.close()
            wait(done, 120, "the dataset was never sealed", threads)
        assert letters.poll(1000) == [] and bus.lag(worker.consumer_group) == 0
    with admin(url) as db:
        assert db.execute("SELECT pg_postmaster_start_time()").fetchone()[0] > started_at  # it did restart
    assert errors_seen("review", DATABASE) - lost_before >= 2  # the restart was seen, as a database error
    expected = alignments(dataset, n)
    assert Counter(f.clip.clip_id for f in labels) == {a.clip.clip_id: 1 for a in expected}
    assert {f.clip.clip_id: f.label for f in labels} == {a.clip.clip_id: a.best_label for a in expected}
    assert sealed == [pb.DatasetSealed(dataset=dataset, final_labels=n)]


def test_an_alignment_review_fails_on_for_good_counts_as_a_dead_clip_and_the_dataset_seals(postgres_db):
    dataset = "nul"
    items = alignments(dataset, 20)
    items[7].best_label = "car\x00horn"  # PostgreSQL text cannot hold NUL: review's handler fails on it every time
    with review_on(postgres_db) as (bus, worker, _):
        finals, letters = bus.subscribe("test-finals", [topics.FINAL_LABELS]), bus.subscribe("test-dlq", [topics.DLQ])
        feed(bus, dataset, items)
        drain([worker])
        (letter,) = [r.message() for r in letters.poll(100)]
        out = [r.message() for r in finals.poll(1000)]
    assert (letter.stage, letter.clip_id, letter.payload_type) == ("review", items[7].clip.clip_id,
                                                                    "auditoryhum.v1.Alignment")
    assert sorted(m.clip.clip_id for m in out if isinstance(m, pb.FinalLabel)) == sorted(
        a.clip.clip_id for i, a in enumerate(items) if i != 7)
    assert out[-1] == pb.DatasetSealed(dataset=dataset, final_labels=19, dead_letters=1)


def test_the_review_api_answers_unavailable_while_its_database_is_away(own_postgres):
    with review_on(create_database(own_postgres.url())) as (_, worker, _):
        server, health, port = grpc_server.build_server(
            [(api_grpc.add_ReviewServiceServicer_to_server, ReviewServicer(ReviewDesk(worker)))], port=0,
            max_message_mb=1)
        server.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = api_grpc.ReviewServiceStub(channel)
                assert stub.GetStats(api.GetStatsRequest(), timeout=10).stats.pending == 0
                own_postgres.stop("fast")
                try:
                    with pytest.raises(grpc.RpcError) as away:
                        stub.GetStats(api.GetStatsRequest(), timeout=10)
                finally:
                    own_postgres.start()
                assert away.value.code() == grpc.StatusCode.UNAVAILABLE  # retry later, not INTERNAL or UNKNOWN
                assert "(database)" in away.value.details()
                assert stub.GetStats(api.GetStatsRequest(), timeout=10).stats.pending == 0  # and served again
        finally:
            grpc_server.stop(server, health, grace_s=0).wait()
