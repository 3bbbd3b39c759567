"""A service's gRPC server: its APIs plus standard health checking, server reflection, message limits and metrics."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from auditoryhum.auth import bearer, check_bind, token_matches
from auditoryhum.service.metrics import GRPC_REQUESTS, GRPC_SECONDS

# A generated ``add_<Service>Servicer_to_server`` function and the servicer it registers.
Registration = tuple[Callable[[Any, Any], None], Any]


def build_server(servicers: Sequence[Registration], *, port: int, host: str = "127.0.0.1", max_message_mb: float,
                 workers: int = 8, token: str | None = None) -> tuple[grpc.Server, health.HealthServicer, int]:
    """The server, not yet started; its health servicer; the bound port (``port=0`` binds an ephemeral one).

    Health reports SERVING for the whole server ("") and for each service: the models are loaded before the
    servicers exist, so the server can answer as soon as it starts. With a ``token``, every call but health checks
    must carry it (``authorization: Bearer <token>``). Stop it with :func:`stop`.
    """
    check_bind(host, token)
    limit = int(max_message_mb * 1024 * 1024)
    interceptors = [MetricsInterceptor()] + ([TokenInterceptor(token)] if token else [])
    server = grpc.server(ThreadPoolExecutor(workers, thread_name_prefix="grpc"), interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)])
    names = _ServiceNames(server)
    for add, servicer in servicers:
        add(servicer, names)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *names.names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*names.names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"  # IPv6
    bound = server.add_insecure_port(address)
    if not bound:
        raise RuntimeError(f"cannot listen on {address}")
    return server, health_servicer, bound


def stop(server: grpc.Server, health_servicer: health.HealthServicer, grace_s: float = 5.0) -> threading.Event:
    """Every service turns NOT_SERVING first, so balancers route elsewhere; calls in flight get ``grace_s``."""
    health_servicer.enter_graceful_shutdown()
    return server.stop(grace_s)


class _ServiceNames:
    """Stands in for the server while a generated ``add_*_to_server`` runs, to learn the service's full name
    (health and reflection need it) from the handlers it registers."""

    def __init__(self, server: grpc.Server):
        self.server, self.names = server, []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.names += [h.service_name() for h in handlers]
        self.server.add_generic_rpc_handlers(handlers)

    def __getattr__(self, name: str):  # everything else the generated code calls goes to the server itself
        return getattr(self.server, name)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without the bearer token (UNAUTHENTICATED). Health checks stay open: probes carry no secret."""

    OPEN = "/grpc.health.v1.Health/"

    def __init__(self, token: str):
        self._token = token

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(self.OPEN):
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization")
        if token_matches(bearer(given), self._token):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None

        def refuse(request_or_iterator, context: grpc.ServicerContext):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts unary calls by method and status code, and times them. Streaming methods (health's Watch,
    reflection) pass through uncounted: their duration is a client's choice, not a cost."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method, behaviour = handler_call_details.method, handler.unary_unary

        def measured(request, context: grpc.ServicerContext):
            started = time.perf_counter()
            try:
                response = behaviour(request, context)
            except Exception:
                _record(method, _code(context, grpc.StatusCode.UNKNOWN), started)
                raise
            _record(method, _code(context, grpc.StatusCode.OK), started)
            return response

        return grpc.unary_unary_rpc_method_handler(measured, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def _code(context: grpc.ServicerContext, otherwise: grpc.StatusCode) -> grpc.StatusCode:
    """The status the client sees: a handler that finishes after the client stopped waiting did not succeed."""
    if context.code() is not None:
        return context.code()
    if not context.is_active():
        remaining = context.time_remaining()
        return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else \
            grpc.StatusCode.CANCELLED
    return otherwise


def _record(method: str, code: grpc.StatusCode, started: float) -> None:
    GRPC_SECONDS.labels(method).observe(time.perf_counter() - started)
    GRPC_REQUESTS.labels(method, code.name).inc()
