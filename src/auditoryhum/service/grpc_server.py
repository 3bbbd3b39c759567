"""A service's gRPC server: its APIs plus standard health checking, server reflection, limits and metrics.

Why an asyncio server around synchronous servicers: on grpcio's thread-pool server every call, health checks
included, waits for one of the pool's threads, and a thread is taken before the request has even arrived; 8 calls
on a stalling URI were enough to make health checks fail. Here an event loop on a thread of its own receives every
call; health checks, reflection, refusals (token, limit) and the metrics run on it and never wait for a worker. The
servicers stay synchronous (models, decoders and databases block) and run on ``workers`` threads, one call each,
with at most ``max_concurrent`` calls admitted (running, or waiting for a thread): beyond that a call is refused at
once with RESOURCE_EXHAUSTED rather than queued without end, so latency stays bounded and a client can back off or
go to another replica. A short queue keeps cheap calls (Classify, a few ms) from being refused while a thread is
about to free. Measured on 2 cores (``make bench-load``, 1,024 concurrent Score calls, load generator on the same
cores): health p99 79 ms where the thread-pool server took 2 s and failed probes, Score p99 5.3 s instead of 10.5 s
at the same throughput. The loop shares the GIL with the workers, so under full load its answers slow to tens of
milliseconds, never to seconds.

Requests of the APIs are read as bytes and parsed on the worker thread, only once the call holds a worker and its
token was checked: an unauthenticated or refused call is never parsed, nor even read (its handler is a streaming
one that never asks for the message). A request that is not valid protobuf is INVALID_ARGUMENT "cannot parse the
request". Every call has a deadline, the client's or ``rpc_timeout_s``, whichever is first: the call ends then with
DEADLINE_EXCEEDED, and its thread stops at the next checkpoint (:mod:`auditoryhum.service.deadlines`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Sequence

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from auditoryhum.auth import Throttle, bearer, check_bind, token_matches
from auditoryhum.service import deadlines
from auditoryhum.service.metrics import GRPC_REQUESTS, GRPC_SECONDS

log = logging.getLogger("auditoryhum.service.grpc")

# A generated ``add_<Service>Servicer_to_server`` function and the servicer it registers.
Registration = tuple[Callable[[Any, Any], None], Any]
HEALTH_SERVICE = "grpc.health.v1.Health"


def build_server(servicers: Sequence[Registration], *, port: int, host: str = "127.0.0.1", max_message_mb: float,
                 max_request_mb: float | None = None, workers: int = 8, max_concurrent: int | None = None,
                 rpc_timeout_s: float | None = None, token: str | None = None) -> tuple["Server", HealthServicer, int]:
    """The server, not yet started; its health servicer; the bound port (``port=0`` binds an ephemeral one).

    Health reports SERVING for the whole server ("") and for each service: the models are loaded before the
    servicers exist, so the server can answer as soon as it starts. With a ``token``, every call but health checks
    must carry it (``authorization: Bearer <token>``). ``workers``: API calls served at once; ``max_concurrent``:
    calls admitted, running or waiting (default 4 per worker). ``max_request_mb``:
    the largest request (default ``max_message_mb``, which bounds responses). Stop it with :func:`stop`.
    """
    check_bind(host, token)
    server = Server(workers)
    receive = int((max_request_mb or max_message_mb) * 1024 * 1024)
    send = int(max_message_mb * 1024 * 1024)
    interceptors = [MetricsInterceptor(), *([TokenInterceptor(token)] if token else []),
                    WorkerInterceptor(server.pool, max_concurrent or 4 * workers, rpc_timeout_s)]
    server.aio, health = server.call(_assemble, servicers, interceptors, receive, send)
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"  # IPv6
    bound = server.aio.add_insecure_port(address)
    if not bound:
        server.close()
        raise RuntimeError(f"cannot listen on {address}")
    return server, health, bound


async def _assemble(servicers: Sequence[Registration], interceptors: list, receive: int,
                    send: int) -> tuple[grpc.aio.Server, HealthServicer]:
    """The aio server and its health servicer, made on the loop they serve on."""
    aio = grpc.aio.server(interceptors=interceptors, options=[("grpc.max_receive_message_length", receive),
                                                              ("grpc.max_send_message_length", send)])
    names = _ServiceNames(aio)
    for add, servicer in servicers:
        add(servicer, names)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, aio)
    for name in ("", *names.names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*names.names, HEALTH_SERVICE, reflection.SERVICE_NAME), aio)
    return aio, health


class Server:
    """An asyncio gRPC server on an event loop of its own thread, started and stopped from synchronous code; the
    servicers run on ``pool``."""

    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="grpc")
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop", daemon=True)
        self._thread.start()
        self.aio: grpc.aio.Server | None = None

    def call(self, coroutine_function, *args):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine_function(*args), self.loop).result()

    def start(self) -> None:
        self.call(self.aio.start)

    def stop(self, grace_s: float | None, health: HealthServicer | None = None) -> threading.Event:
        """Returns at once; the event is set once calls in flight finished (or ``grace_s`` passed) and the loop is
        closed."""
        stopped = threading.Event()

        async def shut_down():
            if health is not None:
                await health.enter_graceful_shutdown()
            await self.aio.stop(grace_s)

        def close():
            try:
                asyncio.run_coroutine_threadsafe(shut_down(), self.loop).result()
            finally:
                self.close()
                stopped.set()

        threading.Thread(target=close, name="grpc-stop", daemon=True).start()
        return stopped

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.pool.shutdown(wait=False, cancel_futures=True)


def stop(server: Server, health_servicer: HealthServicer, grace_s: float = 5.0) -> threading.Event:
    """Every service turns NOT_SERVING first, so balancers route elsewhere; calls in flight get ``grace_s``."""
    return server.stop(grace_s, health_servicer)


class _ServiceNames:
    """Stands in for the server while a generated ``add_*_to_server`` runs, to learn the service's full name
    (health and reflection need it) from the handlers it registers."""

    def __init__(self, server: grpc.aio.Server):
        self.server, self.names = server, []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.names += [h.service_name() for h in handlers]
        self.server.add_generic_rpc_handlers(handlers)

    def __getattr__(self, name: str):  # everything else the generated code calls goes to the server itself
        return getattr(self.server, name)


def _refused(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """The status is sent once the handler returns (not at once, as ``abort`` would): the metrics count it first."""
    context.set_code(code)
    context.set_details(details)


def refusal(code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler that answers ``code`` without reading the request: a client-streaming handler is never handed a
    message it does not ask for, so the body is neither received into Python nor parsed."""

    async def refuse(requests, context: grpc.aio.ServicerContext) -> None:
        return _refused(context, code, details)

    return grpc.stream_unary_rpc_method_handler(refuse)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the bearer token (UNAUTHENTICATED) before their request is read. Health checks stay
    open: probes carry no secret. Wrong tokens count against their client's address (:class:`~auditoryhum.auth.
    Throttle`, as at the review UI's sign-in): past the limit its calls are RESOURCE_EXHAUSTED and their tokens are
    not even compared, so guessing costs the time of the refill, not of a round trip."""

    OPEN = f"/{HEALTH_SERVICE}/"

    def __init__(self, token: str, throttle: Throttle | None = None):
        self._token, self._throttle = token, throttle or Throttle()

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(self.OPEN):
            return await continuation(handler_call_details)
        given = bearer(dict(handler_call_details.invocation_metadata or ()).get("authorization"))
        if given is None:  # no guess made: nothing to count
            return refusal(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        handler = await continuation(handler_call_details)
        if handler is None:
            return None

        def refused(context: grpc.aio.ServicerContext) -> bool:
            client = _peer_host(context.peer())  # only a handler sees the peer: checked on the loop, body unread
            if wait := self._throttle.retry_after(client):
                _refused(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"too many wrong tokens from this address; retry in {math.ceil(wait)} s")
                return True
            if not token_matches(given, self._token):
                self._throttle.failed(client)
                _refused(context, grpc.StatusCode.UNAUTHENTICATED, "wrong bearer token")
                return True
            return False

        if handler.stream_unary is not None:  # an API call (WorkerInterceptor made it client-streaming)
            async def guarded(requests, context: grpc.aio.ServicerContext):
                return None if refused(context) else await handler.stream_unary(requests, context)

            return grpc.stream_unary_rpc_method_handler(guarded, response_serializer=handler.response_serializer)
        if handler.stream_stream is not None:  # reflection
            async def guarded_stream(requests, context: grpc.aio.ServicerContext):
                if not refused(context):
                    async for response in handler.stream_stream(requests, context):
                        yield response

            return grpc.stream_stream_rpc_method_handler(guarded_stream, handler.request_deserializer,
                                                         handler.response_serializer)
        return refusal(grpc.StatusCode.UNIMPLEMENTED, "no such method")  # this server registers no other kinds


def _peer_host(peer: str) -> str:
    """``ipv4:10.0.0.7:51234`` → ``ipv4:10.0.0.7``: the address without the port, which changes per connection."""
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer


class _Slots:
    """Admitted calls (running, or queued for a thread); thread-safe, never blocks."""

    def __init__(self, limit: int):
        self.limit, self.taken, self._lock = limit, 0, threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.taken >= self.limit:
                return False
            self.taken += 1
            return True

    def give_back(self, *_) -> None:
        with self._lock:
            self.taken -= 1


class SyncContext:
    """What the synchronous servicers use of a context (``abort``, ``time_remaining``, ``invocation_metadata``),
    for a handler run on a worker thread. ``abort`` raises :class:`Aborted`; the loop sends the status. (grpcio's
    own, ``cygrpc._SyncServicerContext``, is private, and its abort sends the status from the worker thread, which
    races the loop when the deadline already ended the call.) ``time_remaining`` is the call's deadline, the
    server's included."""

    def __init__(self, deadline: deadlines.Deadline, metadata):
        self._deadline, self._metadata = deadline, metadata

    def abort(self, code: grpc.StatusCode, details: str):
        raise Aborted(code, details)

    def time_remaining(self) -> float | None:
        return self._deadline.remaining()

    def invocation_metadata(self):
        return self._metadata


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


_UNPARSABLE = object()


class WorkerInterceptor(grpc.aio.ServerInterceptor):
    """Runs each synchronous unary handler on ``pool``, within its deadline, admitting at most ``limit`` calls
    (running or queued for a thread): one more is RESOURCE_EXHAUSTED at once (its request not read). A call whose
    deadline passes ends with DEADLINE_EXCEEDED; if it was still queued it never runs, if it was running its thread
    stops at the next checkpoint, and its place is free only then. Asynchronous handlers (health, reflection) pass
    through: they run on the loop."""

    def __init__(self, pool: ThreadPoolExecutor, limit: int, timeout_s: float | None):
        self._pool, self._slots, self._timeout_s = pool, _Slots(limit), timeout_s

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or asyncio.iscoroutinefunction(handler.unary_unary):
            return handler
        behaviour, parse = handler.unary_unary, handler.request_deserializer
        metadata = handler_call_details.invocation_metadata

        async def served(requests, context: grpc.aio.ServicerContext):
            if not self._slots.take():
                return _refused(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self._slots.limit} calls in "
                                "progress, the most this server takes; retry with backoff")
            submitted = False
            try:
                try:
                    raw = await requests.__anext__()
                except StopAsyncIteration:  # the client sent no message
                    return _refused(context, grpc.StatusCode.INVALID_ARGUMENT, "no request message")
                deadline = deadlines.Deadline(_earliest(context.time_remaining(), self._timeout_s))
                work: Future = self._pool.submit(deadlines.serving, deadline,
                                                 lambda: _run(behaviour, parse, raw, SyncContext(deadline, metadata)))
                work.add_done_callback(self._slots.give_back)  # on the thread's end, not the call's
                submitted = True
                result = asyncio.wrap_future(work)
                result.add_done_callback(_retrieved)
                try:
                    response = await asyncio.wait_for(asyncio.shield(result), deadline.remaining())
                except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
                    deadline.end()
                    work.cancel()  # still queued: it never runs
                    if isinstance(exc, asyncio.CancelledError):  # the client went away
                        raise
                    return _refused(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                                    "the deadline passed before the call ended")
                except Aborted as exc:
                    return _refused(context, exc.code, exc.details)
                if response is _UNPARSABLE:
                    return _refused(context, grpc.StatusCode.INVALID_ARGUMENT, "cannot parse the request")
                return response
            finally:
                if not submitted:
                    self._slots.give_back()

        return grpc.stream_unary_rpc_method_handler(served, response_serializer=handler.response_serializer)


def _retrieved(result: asyncio.Future) -> None:
    """A call that ended before its thread did leaves nobody to read the outcome: read it, so it is not logged."""
    if not result.cancelled():
        result.exception()


def _run(behaviour, parse, raw: bytes, context: SyncContext):
    try:
        request = parse(raw) if parse else raw
    except DecodeError:
        log.debug("a request that is not valid protobuf was refused")
        return _UNPARSABLE
    return behaviour(request, context)


def _earliest(client_s: float | None, server_s: float | None) -> float | None:
    given = [s for s in (client_s, server_s) if s is not None]
    return min(given) if given else None


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts calls with a single response by method and status code, and times them. Streaming responses (health's
    Watch, reflection) pass through uncounted: their duration is a client's choice, not a cost."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        behaviour = handler and (handler.unary_unary or handler.stream_unary)
        if behaviour is None:
            return handler
        method = handler_call_details.method

        async def measured(request, context: grpc.aio.ServicerContext):
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                response = await behaviour(request, context)
                code = context.code() or code
                return response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                remaining = context.time_remaining()
                code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else \
                    grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                GRPC_SECONDS.labels(method).observe(time.perf_counter() - started)
                GRPC_REQUESTS.labels(method, code.name).inc()

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(measured, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
