"""One service process: its stage consuming Kafka, its gRPC API and its Prometheus /metrics, until SIGTERM.

The stage is the same handler the embedded mode runs; only the transport (Kafka), the state (a database file or
URL) and the synchronous API differ. Start-up order matters to orchestrators: models load first, then the gRPC
health service reports SERVING, so readiness means "can answer now".
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Callable

from kafka.errors import KafkaError

from auditoryhum import topics
from auditoryhum.auth import check_bind, session_key, warn_if_short
from auditoryhum.bus import BusError
from auditoryhum.bus.kafka import KafkaBus, ensure_topics
from auditoryhum.models import Models
from auditoryhum.pipeline import audio_limits, audio_loader
from auditoryhum.review.desk import ReviewDesk
from auditoryhum.runner import StageWorker
from auditoryhum.service import grpc_api, grpc_server, logs, metrics
from auditoryhum.service.settings import DEFAULT_PORTS, ServiceSettings
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.stages.base import Stage
from auditoryhum.stages.clusterer import ClustererStage, LivingPolicy
from auditoryhum.stages.labeler import LabelerStage
from auditoryhum.stages.review import ReviewPolicy, ReviewStage
from auditoryhum.store import Store
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.taxonomy.reference import ALGORITHM as REFERENCE
from auditoryhum.uris import UriPolicy
from auditoryhum.v1 import services_pb2_grpc as rpc

log = logging.getLogger("auditoryhum.service")
SERVICES = tuple(DEFAULT_PORTS)
LAG_EVERY_S = 5.0

# A stage and, once its worker exists, its gRPC servicers: [(add_XServicer_to_server, servicer)].
Wiring = tuple[Stage, Callable[[StageWorker], list[tuple[Callable, object]]]]


def _labeler(s: ServiceSettings, models: Models, stack: ExitStack) -> Wiring:
    executor = stack.enter_context(ThreadPoolExecutor(s.workers, thread_name_prefix="labeler"))
    stage = LabelerStage(models.labelers, audio_loader(s, UriPolicy.parse(s.allowed_uris)), max_words=s.max_words,
                         executor=executor, workers=s.workers)
    return stage, lambda worker: [(rpc.add_LabelerServiceServicer_to_server,
                                   grpc_api.LabelerServicer(stage, audio_limits(s)))]


def _aligner(s: ServiceSettings, models: Models, stack: ExitStack) -> Wiring:
    stage = AlignerStage(models.scorer, audio_loader(s, UriPolicy.parse(s.allowed_uris)), models.scorer_rate,
                         keep_audio_embedding=s.representation == "class-vector", embedder=lambda: models.embedder)
    return stage, lambda worker: [(rpc.add_AlignerServiceServicer_to_server, grpc_api.AlignerServicer(stage, audio_limits(s)))]


def _review(s: ServiceSettings, models: Models, stack: ExitStack) -> Wiring:
    store = Store(s.store_url("review"))
    stack.callback(store.close)
    stage = ReviewStage(ReviewPolicy(s.review_fraction, s.review_threshold, s.review_auto_accept, rank=s.review_rank,
                                     precision=s.review_precision, calibration=s.review_calibration),
                        s.max_words, store)

    def servicers(worker: StageWorker):
        desk = ReviewDesk(worker, s.review_lease_s, audio_uris=UriPolicy.parse(s.allowed_uris))
        if s.ui_port:  # the reviewers' web UI, same token as the gRPC API
            from auditoryhum.review.web import UiServer, create_app

            # Signed with the configured session secret, sessions survive restarts and hold across replicas.
            key = session_key(s.session_secret.get_secret_value() if s.session_secret else None, log)
            ui = UiServer(create_app(desk, token=_token(s), secret_key=key), s.grpc_host, s.ui_port)
            ui.start()
            stack.callback(ui.stop)
            log.info("review UI", extra={"url": ui.url})
        if s.review_deadline_s:
            stop = threading.Event()
            thread = threading.Thread(target=_close_overdue, args=(desk, s.review_deadline_s, stop),
                                      name="review-deadline", daemon=True)
            thread.start()
            stack.callback(thread.join)
            stack.callback(stop.set)
        return [(rpc.add_ReviewServiceServicer_to_server, grpc_api.ReviewServicer(desk))]

    return stage, servicers


def _close_overdue(desk: ReviewDesk, deadline_s: float, stop: threading.Event) -> None:
    """Close each review that is still open ``deadline_s`` after its tasks were issued."""
    while not stop.wait(min(deadline_s / 4, LAG_EVERY_S)):
        try:
            for dataset, kept in desk.close_overdue(deadline_s).items():
                log.info("review deadline passed: closed", extra={"dataset": dataset, "kept_model_label": kept})
        except Exception:  # noqa: BLE001 — a database or broker outage: the next round tries again
            log.exception("closing overdue reviews failed; retrying")


def _clusterer(s: ServiceSettings, models: Models, stack: ExitStack) -> Wiring:
    store = Store(s.store_url("clusterer"))
    stack.callback(store.close)
    stage = ClustererStage(models.taxonomy_builder(), store, LivingPolicy.from_settings(s))

    def builder(k_min: int, k_max: int, lam: float, algorithm: str) -> TaxonomyBuilder:
        # algorithm "reference" asks for the authors' protocol (weighted Ward, euclidean silhouette)
        protocol = "reference" if algorithm == REFERENCE else "default"
        return TaxonomyBuilder(models.embedder, k_min=k_min, k_max=k_max, lam=lam,
                               algorithm=algorithm if protocol == "default" else "kmeans", namer=models.namer,
                               representation=s.representation, protocol=protocol, criterion=s.k_criterion)

    return stage, lambda worker: [(rpc.add_ClustererServiceServicer_to_server,
                                   grpc_api.ClustererServicer(stage, models.embedder, builder, worker=worker))]


WIRING = {"labeler": _labeler, "aligner": _aligner, "review": _review, "clusterer": _clusterer}


def _token(settings: ServiceSettings) -> str | None:
    return settings.auth_token.get_secret_value() if settings.auth_token else None


def serve(name: str, settings: ServiceSettings | None = None) -> None:
    """Run service ``name`` until SIGTERM or SIGINT; what it finished is committed, what it had not is re-read by
    its successor."""
    settings = settings or ServiceSettings()
    logs.configure(name)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack: a hung service explains itself
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    check_bind(settings.grpc_host, _token(settings))  # before anything starts
    warn_if_short(_token(settings), log)
    ensure_topics(settings.bootstrap, topics.ALL, settings.partitions, replication_factor=settings.replication_factor)
    bus = KafkaBus(settings.bootstrap, client_id=f"auditoryhum-{name}", instance_id=settings.instance_id,
                   session_timeout_ms=settings.session_timeout_ms, stall_after_s=settings.stall_timeout_s,
                   on_stall=lambda group, kind: metrics.CONSUMER_STALLS.labels(name, kind).inc())
    with ExitStack() as stack:
        stack.callback(bus.close)
        stage, servicers = WIRING[name](settings, Models(settings), stack)
        metrics.start(name, stage.consumes)
        worker = StageWorker(bus, stage, batch_size=settings.batch_size, metrics=metrics.StageMetrics(),
                             crash_after_relayed=settings.crash_after_relayed)
        stack.callback(worker.consumer.close)
        grpc_port, metrics_port = settings.ports(name)
        server, health, port = grpc_server.build_server(
            servicers(worker), port=grpc_port, host=settings.grpc_host, max_message_mb=settings.max_message_mb,
            max_request_mb=settings.request_mb(name), workers=settings.grpc_workers,
            max_concurrent=settings.max_concurrent_rpcs, rpc_timeout_s=settings.rpc_timeout_s, token=_token(settings))
        stack.callback(metrics.serve(metrics_port, settings.grpc_host).shutdown)
        server.start()
        log.info("serving", extra={"grpc_port": port, "metrics_port": metrics_port, "bootstrap": settings.bootstrap,
                                   "consumes": list(stage.consumes)})
        lag_at = 0.0
        while not stop.is_set():
            try:
                worker.step(timeout_s=settings.poll_timeout_s)
                if time.monotonic() - lag_at > LAG_EVERY_S:
                    lag_at = time.monotonic()
                    metrics.CONSUMER_LAG.labels(name).set(worker.consumer.lag())
            except (BusError, KafkaError) as exc:  # the broker is away: wait for it, lose nothing
                log.warning("kafka unavailable: %s", exc)
                metrics.ERRORS.labels(name, "bus").inc()
                stop.wait(1.0)
        log.info("stopping")
        grpc_server.stop(server, health).wait()

