"""Hostile gRPC clients against the real service processes (Kafka, models in each service, on ports 30300-30399):
stalling calls, floods beyond the concurrency limit, huge unauthenticated bodies, bad page tokens, huge fields,
malformed protobuf and fuzzed requests. Health checks must stay fast and every answer a deliberate status."""

from __future__ import annotations

import asyncio
import http.server
import os
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditoryhum.service.local import LocalStack
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2 as api
from auditoryhum.v1 import services_pb2_grpc as api_grpc
from tests.conftest import TRAFFIC
from tests.proto_strategies import messages

pytestmark = pytest.mark.distributed

BASE = 30300
STALL_PORT = BASE + 80
TOKEN = "hostile-test-token"
AUTH = [("authorization", f"Bearer {TOKEN}")]
RPC_TIMEOUT_S = 2.0
ADMITTED = 32  # the default max_concurrent_rpcs
HEALTH_S = 0.1
SERVING = health_pb2.HealthCheckResponse.SERVING


class Stall(http.server.BaseHTTPRequestHandler):
    """Answers nothing until the test lets go: a URI whose server hangs."""

    release = threading.Event()

    def do_GET(self):
        self.release.wait(60)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def stall():
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", STALL_PORT), Stall)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{STALL_PORT}/stall.wav"
    Stall.release.set()
    server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = LocalStack(tmp_path_factory.mktemp("hostile"), kafka_port=BASE, port_base=BASE + 51,
                       metrics_base=BASE + 61, triton_port=None, ui_port=0,
                       env={"AUDITORYHUM_AUTH_TOKEN": TOKEN, "AUDITORYHUM_RPC_TIMEOUT_S": str(RPC_TIMEOUT_S),
                            "AUDITORYHUM_ALLOWED_URIS": f"http://127.0.0.1:{STALL_PORT}/,file:///usr/share/"})
    with stack:
        yield stack


def rss_mb(stack: LocalStack, name: str) -> float:
    pid = (stack.home / f"{name}.pid").read_text().strip()
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


class HealthProbe:
    """Checks health every 20 ms on a thread of its own while a block runs: how long answers took, and failures
    (not SERVING, or no answer within 1 s)."""

    def __init__(self, address: str):
        self.address, self.times, self.failures = address, [], []
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)  # connected before timing
            while not self._stop.wait(0.02):
                started = time.perf_counter()
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status != SERVING:
                        self.failures.append(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
                except grpc.RpcError as exc:
                    self.failures.append(exc.code().name)
                self.times.append(time.perf_counter() - started)

    @property
    def p90(self) -> float:
        """Nearly every answer's time: on 2 shared cores a lone probe can wait for the CPU whatever the server does."""
        return sorted(self.times)[int(0.9 * (len(self.times) - 1))]


def burst(address: str, method: str, requests: list[bytes], metadata=AUTH, timeout_s: float = 30.0):
    """Send every request at once (raw bytes, on one asyncio channel): [(status code name, seconds)]."""

    async def run():
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(method)

            async def one(request: bytes):
                started = time.perf_counter()
                try:
                    await call(request, metadata=metadata, timeout=timeout_s)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                return code, time.perf_counter() - started

            return await asyncio.gather(*(one(r) for r in requests))

    return asyncio.run(run())


def score_request(uri: str) -> bytes:
    return api.ScoreRequest(clip=pb.Clip(clip_id="c", uri=uri), labels=["vehicle", "rain"]).SerializeToString()


SCORE = "/auditoryhum.v1.AlignerService/Score"


def test_stalling_calls_end_at_the_servers_deadline_and_health_stays_fast(stack, stall):
    """As many calls as the aligner admits, each reading a URI that never answers: they take every place, more calls
    are refused at once, health checks stay fast, and the stalled calls end at the server's deadline."""
    address = stack.grpc_address("aligner")
    with HealthProbe(address) as probe, ThreadPoolExecutor(1) as client:
        stalled = client.submit(burst, address, SCORE, [score_request(stall)] * ADMITTED)
        time.sleep(RPC_TIMEOUT_S / 2)  # every place taken
        with grpc.insecure_channel(address) as channel:
            extra = [timed(channel.unary_unary(SCORE), score_request(str(TRAFFIC[0]))) for _ in range(8)]
        outcomes = stalled.result()
    assert [code for code, _ in outcomes] == ["DEADLINE_EXCEEDED"] * ADMITTED
    assert max(s for _, s in outcomes) < RPC_TIMEOUT_S + 1.0  # the client asked for 30 s: the server's 2 s win
    assert {code for code, _ in extra} == {"RESOURCE_EXHAUSTED"} and max(s for _, s in extra) < HEALTH_S, extra
    assert not probe.failures and probe.p90 < HEALTH_S, (probe.failures, probe.times)
    Stall.release.set()  # the workers' reads return; at their next checkpoint they stop and take calls again
    deadline = time.monotonic() + 30
    while burst(address, SCORE, [score_request(str(TRAFFIC[0]))])[0][0] != "OK":
        assert time.monotonic() < deadline, "the workers stayed busy after their calls ended"
        time.sleep(0.2)


def timed(call, request: bytes) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        call(request, metadata=AUTH, timeout=10)
        code = "OK"
    except grpc.RpcError as exc:
        code = exc.code().name
    return code, time.perf_counter() - started


def test_a_flood_beyond_the_limit_is_shed_and_health_stays_fast(stack):
    """Calls that compute (a real recording scored), far more than the aligner admits: each is served or refused,
    health checks stay fast and memory bounded."""
    address = stack.grpc_address("aligner")
    good = score_request(str(TRAFFIC[0]))
    burst(address, SCORE, [good] * 4)  # warm: the model's first call
    before = rss_mb(stack, "aligner")
    with HealthProbe(address) as probe:
        outcomes = burst(address, SCORE, [good] * 256)
    assert {code for code, _ in outcomes} == {"OK", "RESOURCE_EXHAUSTED"}
    assert not probe.failures and probe.p90 < HEALTH_S, (probe.failures, probe.times)
    assert rss_mb(stack, "aligner") - before < 150


def test_unauthenticated_huge_bodies_are_refused_unread(stack):
    address = stack.grpc_address("labeler")
    body = api.LabelClipsRequest(inline=[api.InlineAudio(name="x.wav", data=os.urandom(15 << 20))]).SerializeToString()
    before = rss_mb(stack, "labeler")
    outcomes = burst(address, "/auditoryhum.v1.LabelerService/LabelClips", [body] * 32, metadata=None)
    assert {code for code, _ in outcomes} == {"UNAUTHENTICATED"}
    assert rss_mb(stack, "labeler") - before < 100  # 32 parsed copies of 15 MB would be 480 MB


def test_review_takes_only_small_requests(stack):
    with grpc.insecure_channel(stack.grpc_address("review")) as channel:
        stub = api_grpc.ReviewServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.GetStats(api.GetStatsRequest(dataset="x" * (2 << 20)), metadata=AUTH, timeout=10)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("token", ["9" * 30, "²", "-1", "1e3", " 1", "٣"])
def test_page_tokens_not_issued_by_the_service_are_invalid(stack, token):
    with grpc.insecure_channel(stack.grpc_address("review")) as channel:
        with pytest.raises(grpc.RpcError) as error:
            api_grpc.ReviewServiceStub(channel).ListTasks(api.ListTasksRequest(page_token=token), metadata=AUTH,
                                                          timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_error_details_quote_a_huge_field_cut_short(stack):
    with grpc.insecure_channel(stack.grpc_address("clusterer")) as channel:
        with pytest.raises(grpc.RpcError) as error:
            api_grpc.ClustererServiceStub(channel).GetTaxonomy(api.GetTaxonomyRequest(dataset="d" * 500_000),
                                                               metadata=AUTH, timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "500000 characters" in error.value.details() and len(error.value.details()) < 300


def _methods() -> list[tuple[str, str, object]]:
    """(service, "/package.Service/Method", request descriptor) of every API method of the four services the stack
    runs (ClassifierService, the recogniser's, is fed malformed bytes in tests/test_recogniser_service.py)."""
    owner = {"LabelerService": "labeler", "AlignerService": "aligner", "ReviewService": "review",
             "ClustererService": "clusterer"}
    return [(owner[s.name], f"/{s.full_name}/{m.name}", m.input_type)
            for s in api.DESCRIPTOR.services_by_name.values() if s.name in owner for m in s.methods]


METHODS = _methods()
MALFORMED = [b"\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08", b"\x12\x05ab", bytes(range(256))]


@pytest.mark.parametrize("service, method, _", METHODS, ids=[m for _, m, _ in METHODS])
def test_malformed_protobuf_is_invalid_argument_without_a_traceback(stack, service, method, _):
    log, outcomes = stack.home / f"{service}.log", []
    logged = log.stat().st_size
    with grpc.insecure_channel(stack.grpc_address(service)) as channel:
        call = channel.unary_unary(method)
        for raw in MALFORMED:
            with pytest.raises(grpc.RpcError) as error:
                call(raw, metadata=AUTH, timeout=10)
            outcomes.append((error.value.code(), error.value.details()))
    assert set(outcomes) == {(grpc.StatusCode.INVALID_ARGUMENT, "cannot parse the request")}
    with log.open("rb") as f:
        f.seek(logged)
        assert b"Traceback" not in f.read()


FUZZ = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
DELIBERATE = set(grpc.StatusCode) - {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


@pytest.mark.parametrize("service, method, request_type", METHODS, ids=[m for _, m, _ in METHODS])
def test_fuzzed_requests_get_deliberate_answers(stack, service, method, request_type):
    with grpc.insecure_channel(stack.grpc_address(service)) as channel:
        call = channel.unary_unary(method)

        def code_of(raw: bytes) -> grpc.StatusCode:
            try:
                call(raw, metadata=AUTH, timeout=10)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        @FUZZ
        @given(st.one_of(messages(request_type).map(lambda m: m.SerializeToString()), st.binary(max_size=512)))
        def answered(raw: bytes):
            assert code_of(raw) in DELIBERATE

        answered()
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert health.status == SERVING
