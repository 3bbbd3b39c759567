"""Prometheus metrics of a service process: its gRPC API and its stream worker.

Defined once per process on the default registry, so the ``/metrics`` endpoint of any service exposes them all.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter as Tally
from socketserver import ThreadingMixIn
from typing import Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

from auditoryhum import errors, runner, topics
from auditoryhum.bus import Record
from auditoryhum.stages.base import Out

# Model calls take from milliseconds (a cached embedding) to minutes (a taxonomy sweep).
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0)

GRPC_REQUESTS = Counter("auditoryhum_grpc_requests", "gRPC calls handled, by full method name and status code",
                        ["method", "code"])
GRPC_SECONDS = Histogram("auditoryhum_grpc_request_seconds", "Time to handle a gRPC call", ["method"],
                         buckets=SECONDS_BUCKETS)

RECORDS_IN = Counter("auditoryhum_records_in", "Records consumed by a stage worker", ["stage", "topic"])
RECORDS_OUT = Counter("auditoryhum_records_out", "Records published by a stage worker", ["stage", "topic"])
DEAD_LETTERS = Counter("auditoryhum_dead_letters", "Dead letters published by a stage worker", ["stage"])
ERRORS = Counter("auditoryhum_errors", "Transient failures of a stage worker, retried or given back, by class: bus "
                 "(Kafka), database, storage (an object store), model-server (Triton), transient (a back-end of no "
                 "named class)", ["stage", "kind"])
BATCH_SECONDS = Histogram("auditoryhum_batch_seconds", "Time to handle one batch and publish its outputs", ["stage"],
                          buckets=SECONDS_BUCKETS)
CONSUMER_LAG = Gauge("auditoryhum_consumer_lag", "Records on the stage's input topics not yet consumed", ["stage"])
CONSUMER_STALLS = Counter("auditoryhum_consumer_stalls", "Kafka consumers found stuck and rebuilt, by kind: heartbeat "
                          "(no heartbeat answered for a session), unjoined (no join completed), idle (held partitions "
                          "whose waiting records it never delivered)", ["stage", "kind"])
OUTBOX_RECOVERED = Counter("auditoryhum_outbox_recovered", "Records a crashed (or failed) outbox relay left behind, "
                           "by outcome: delivered (found on the bus, not sent again), resent", ["stage", "outcome"])
STALL_KINDS = ("heartbeat", "unjoined", "idle")
ERROR_KINDS = ("bus", errors.DATABASE, errors.STORAGE, errors.MODEL_SERVER, errors.TRANSIENT)


PATH = "/metrics"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # a scrape every few seconds is no news
        pass


def only_metrics(app):
    """``app`` on /metrics; every other path 404 (prometheus_client's own app answers on any path)."""
    def wsgi(environ, start_response):
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: metrics are at /metrics\n"]
        return app(environ, start_response)

    return wsgi


def serve(port: int, host: str) -> WSGIServer:
    """The default registry at http://host:port/metrics, on a daemon thread; ``shutdown()`` stops it. The services'
    probes are gRPC health checks, so nothing else is served."""
    server = make_server(host.strip("[]"), port, only_metrics(make_wsgi_app()), _Server6 if ":" in host else _Server,
                         _Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def start(stage: str, consumes: Sequence[str]) -> None:
    """Every series a stage reports, at zero from the start: a dashboard or an alert sees them before the first
    record (or the first stall) comes."""
    for topic in consumes:
        RECORDS_IN.labels(stage, topic)
    for kind in ERROR_KINDS:
        ERRORS.labels(stage, kind)
    for kind in STALL_KINDS:
        CONSUMER_STALLS.labels(stage, kind)
    for outcome in ("delivered", "resent"):
        OUTBOX_RECOVERED.labels(stage, outcome)
    DEAD_LETTERS.labels(stage)
    BATCH_SECONDS.labels(stage)
    CONSUMER_LAG.labels(stage).set(0)


class StageMetrics(runner.Metrics):
    """The stream worker's reports, as Prometheus metrics."""

    def batch(self, stage: str, records: Sequence[Record], outs: Sequence[Out], seconds: float) -> None:
        BATCH_SECONDS.labels(stage).observe(seconds)
        for topic, n in Tally(r.topic for r in records).items():
            RECORDS_IN.labels(stage, topic).inc(n)
        for topic, n in Tally(o.topic for o in outs).items():
            RECORDS_OUT.labels(stage, topic).inc(n)
            if topic == topics.DLQ:
                DEAD_LETTERS.labels(stage).inc(n)

    def error(self, stage: str, kind: str) -> None:
        ERRORS.labels(stage, kind).inc()

    def recovered(self, stage: str, delivered: int, resent: int) -> None:
        OUTBOX_RECOVERED.labels(stage, "delivered").inc(delivered)
        OUTBOX_RECOVERED.labels(stage, "resent").inc(resent)
