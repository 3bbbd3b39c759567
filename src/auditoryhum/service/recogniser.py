"""The recogniser service's process: ``ClassifierService`` over gRPC and Prometheus /metrics, until SIGTERM.

Why a service of its own rather than a method of the clusterer: it serves what the pipeline produced (a MODEL_DIR),
not a stage of the pipeline. It consumes no topic and keeps no state, so it scales on request load alone (replicas,
an HPA on CPU) while the clusterer stays one replica per taxonomy; and a platform team can run it, a few MB of ONNX
and onnxruntime, without Kafka or a database. The gRPC machinery is the four services' own
(:mod:`~auditoryhum.service.grpc_server`: token, limits, deadlines, health, reflection, metrics). The default model
is loaded before health reports SERVING; a MODEL_DIR that cannot give it stops the start with a clear error.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading

from auditoryhum.auth import check_bind, warn_if_short
from auditoryhum.edge.recogniser import RecogniserError
from auditoryhum.edge.serving import SceneRecognisers
from auditoryhum.pipeline import audio_limits, audio_loader
from auditoryhum.service import grpc_server, logs, metrics
from auditoryhum.service.classifier_api import ClassifierServicer
from auditoryhum.service.settings import RecogniserSettings
from auditoryhum.uris import UriPolicy
from auditoryhum.v1 import services_pb2_grpc as rpc

log = logging.getLogger("auditoryhum.service")
NAME = "recogniser"


def recognisers(settings: RecogniserSettings) -> SceneRecognisers:
    """The service's recognisers, its default model loaded (on Triton: once the server has it ready);
    :class:`RecogniserError` saying what is missing."""
    if not settings.recogniser_dir:
        raise RecogniserError("AUDITORYHUM_RECOGNISER_DIR is not set: name the MODEL_DIR `auditoryhum train` wrote")
    triton = None
    if settings.backend == "triton":
        from auditoryhum.backends.triton import connect
        from auditoryhum.edge.triton import TritonRecogniser

        client = connect(settings.triton_url)
        client.wait_ready([settings.recogniser_triton_model], timeout=settings.triton_wait_s)
        triton = TritonRecogniser(client, settings.recogniser_dir, settings.recogniser_triton_model)
    held = SceneRecognisers(settings.recogniser_dir, settings.recogniser_model, settings.recogniser_precision,
                            settings.recogniser_threads, triton=triton)
    held.get()
    return held


def servicer(settings: RecogniserSettings, held: SceneRecognisers) -> ClassifierServicer:
    """Clips named by uri are read under the URI policy, as the other services read them."""
    return ClassifierServicer(held, audio_loader(settings, UriPolicy.parse(settings.allowed_uris)),
                              audio_limits(settings))


def serve(settings: RecogniserSettings | None = None) -> None:
    """Run the recogniser service until SIGTERM or SIGINT; calls in flight get a grace period."""
    settings = settings or RecogniserSettings()
    logs.configure(NAME)
    faulthandler.register(signal.SIGUSR1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    check_bind(settings.grpc_host, token)
    warn_if_short(token, log)
    held = recognisers(settings)
    grpc_port, metrics_port = settings.ports()
    server, health, port = grpc_server.build_server(
        [(rpc.add_ClassifierServiceServicer_to_server, servicer(settings, held))], port=grpc_port,
        host=settings.grpc_host, max_message_mb=settings.max_message_mb, max_request_mb=settings.request_mb(),
        workers=settings.grpc_workers, max_concurrent=settings.max_concurrent_rpcs,
        rpc_timeout_s=settings.rpc_timeout_s, token=token)
    scrape = metrics.serve(metrics_port, settings.grpc_host)
    server.start()
    default = held.get()
    log.info("serving", extra={"grpc_port": port, "metrics_port": metrics_port, "model_id": default.model_id,
                               "backend": settings.backend, "classes": len(default.recogniser.classes)})
    stop.wait()
    log.info("stopping")
    grpc_server.stop(server, health).wait()
    scrape.shutdown()
