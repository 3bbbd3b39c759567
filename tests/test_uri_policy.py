"""The URI policy (AUDITORYHUM_ALLOWED_URIS): the policy itself, then the services' gRPC APIs and Kafka consumer
and the review UI's audio route, which read only what it allows and answer alike for whatever lies outside it."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from starlette.testclient import TestClient

from auditoryhum import topics
from auditoryhum.audio import AudioError
from auditoryhum.bus.kafka import KafkaBus, read_topics
from auditoryhum.config import Settings
from auditoryhum.pipeline import audio_loader
from auditoryhum.review.web import create_app
from auditoryhum.service.local import LocalStack
from auditoryhum.uris import REFUSED, UriPolicy, UriRefused
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2 as api
from auditoryhum.v1 import services_pb2_grpc as api_grpc
from tests.conftest import LINCITY
from tests.review_state import alignment, review_state

STALL_PORT, OPEN_PORT, LEAKY_PORT, CLOSED_PORT = 30110, 30111, 30112, 30199  # this module's range: 30100-30199
FARM = str(LINCITY / "Farm1.wav")


# -- the policy ---------------------------------------------------------------------------------------------------

@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "x.wav").write_bytes(b"RIFF")
    (tmp_path / "database").mkdir()
    (tmp_path / "database" / "x.wav").write_bytes(b"RIFF")
    return tmp_path


def test_remote_prefixes_match_scheme_host_port_and_whole_path_segments():
    policy = UriPolicy.parse("s3://bucket/audio/, s3://whole, http://files.example:8000/clips/")
    for uri in ("s3://bucket/audio/a.wav", "S3://BUCKET/audio/a.wav", "s3://whole/any/key.wav",
                "http://files.example:8000/clips/a.wav", "HTTP://Files.Example:8000/clips/a.wav?sig=1"):
        assert policy.allows(uri), uri
    for uri in ("s3://bucket-evil/audio/a.wav", "s3://bucket/audio-evil/a.wav", "s3://bucket/a.wav",
                "s3://wholesale/a.wav", "gs://bucket/audio/a.wav", "https://files.example:8000/clips/a.wav",
                "http://files.example/clips/a.wav", "http://files.example:8001/clips/a.wav",
                "http://files.example:8000@evil.example/clips/a.wav", "http://files.example.evil:8000/clips/a.wav",
                "http://user:pw@files.example:8000/clips/a.wav", "http://files.example:8000/clips/../admin",
                "http://files.example:8000/clips/%2e%2e/admin", "s3://bucket/audio/../secret/a.wav",
                "s3://bucket/audio/a.wav::http://evil.example/x", "simplecache::s3://bucket/audio/a.wav"):
        assert not policy.allows(uri), uri


def test_local_uris_are_resolved_before_they_are_matched(root):
    data = root / "data"
    policy = UriPolicy([str(data)])
    inside = str(data / "a" / "x.wav")
    assert policy.resolve(inside) == policy.resolve(f"file://{inside}") == policy.resolve(f"file://localhost{inside}")
    assert policy.resolve(f"{data}/a/../a/./x.wav") == inside
    (data / "inner").symlink_to(data / "a")
    assert policy.resolve(str(data / "inner" / "x.wav")) == inside
    (data / "escape").symlink_to(root / "database")
    (data / "etc").symlink_to("/etc")
    for uri in (str(root / "database" / "x.wav"),  # a sibling whose name starts like the root's
                f"{data}/../database/x.wav", f"file://{data}/%2E%2E/database/x.wav", str(data / "escape" / "x.wav"),
                str(data / "etc" / "passwd"), f"file://{data}/etc/passwd", "a/x.wav", "data/a/x.wav",
                f"file://otherhost{inside}", f"file://{inside}?x", str(data).upper() + "/a/x.wav",
                f"{inside}\0.wav", "/etc/passwd"):
        assert not policy.allows(uri), uri
    assert UriPolicy.parse(f"file://{data}/").allows(inside) and UriPolicy.parse("/").allows("/etc/passwd")


def test_file_urls_carry_any_file_name_as_percent_encoded_bytes(root):
    name = b"caf\xe9 \xff.wav"  # Latin-1 and a byte no encoding has: not UTF-8
    path = os.path.join(os.fsencode(root / "data"), name)
    open(path, "wb").close()
    resolved = UriPolicy([str(root / "data")]).resolve(f"file://{root}/data/caf%E9%20%FF.wav")
    assert os.fsencode(resolved) == path and os.path.isfile(resolved)


def test_a_bad_prefix_is_refused_when_the_policy_is_made():
    for text in ("data/", "http://user@host/x/", "file://otherhost/data/"):
        with pytest.raises(ValueError, match="AUDITORYHUM_ALLOWED_URIS"):
            UriPolicy.parse(text)


def test_a_run_reads_what_its_dataset_lists_and_nothing_else(root):
    listed = str(root / "database" / "x.wav")
    policy = UriPolicy.parse("", exact=[listed, "s3://bucket/one.wav"])
    assert policy.allows(listed) and policy.allows("s3://bucket/one.wav")
    assert not policy.allows(str(root / "data" / "a" / "x.wav")) and not policy.allows("s3://bucket/two.wav")


def test_the_loader_refuses_alike_whether_or_not_the_file_exists(root):
    load = audio_loader(Settings(), UriPolicy([str(root / "data")]))
    reasons = set()
    for uri in ("/etc/passwd", "/nonexistent/x.wav", f"{root}/database/x.wav", f"{root}/database/missing.wav"):
        with pytest.raises(UriRefused) as refused:
            load(pb.Clip(uri=uri), 16000)
        reasons.add(str(refused.value))
    assert reasons == {REFUSED}
    with pytest.raises(AudioError, match="not readable as audio"):  # inside: read, and found wanting
        load(pb.Clip(uri=str(root / "data" / "a" / "x.wav")), 16000)


# -- the review UI --------------------------------------------------------------------------------------------------

def test_the_review_ui_serves_audio_only_for_clips_inside_the_policy(tmp_path):
    (tmp_path / "passwd.wav").symlink_to("/etc/passwd")
    state = review_state([
        alignment("passwd", "site", "/etc/passwd", {"speech": 0.10}),
        alignment("linked", "site", str(tmp_path / "passwd.wav"), {"speech": 0.11}),
        alignment("dotdot", "site", f"{LINCITY}/../../../../etc/passwd", {"speech": 0.12}),
        alignment("missing", "site", f"{LINCITY}/missing.wav", {"speech": 0.13}),
        alignment("farm", "site", FARM, {"dog bark": 0.14}),
        alignment("a", "site", FARM, {"a": 0.9}), alignment("b", "site", FARM, {"b": 0.9}),
        alignment("c", "site", FARM, {"c": 0.9}), alignment("d", "site", FARM, {"d": 0.9}),
        alignment("e", "site", FARM, {"e": 0.9}),
    ], fraction=0.5)
    c = TestClient(create_app(state.desk), base_url="http://127.0.0.1")
    answers = {task: c.get(f"/tasks/{task}%2Freview/audio") for task in ("passwd", "linked", "dotdot", "missing")}
    assert {(a.status_code, a.text) for a in answers.values()} == {(404, "no audio for this task")}
    assert c.get("/tasks/farm%2Freview/audio").content == Path(FARM).read_bytes()


# -- the services ---------------------------------------------------------------------------------------------------

def _listen(port: int, reply: bytes | None) -> socket.socket:
    """A TCP server on ``port`` that reads each request and answers ``reply`` (None: never answers)."""
    server = socket.create_server(("127.0.0.1", port), reuse_port=True)
    held = []

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the module is done
                return
            conn.recv(65536)
            if reply is None:
                held.append(conn)  # open and silent: a stalled store
            else:
                conn.sendall(reply)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def services(kafka: LocalStack) -> Iterator[LocalStack]:
    """The session broker's labeler and aligner, models in-process, allowed the recordings and two http servers:
    one that stalls and one that fails with a secret in its answer."""
    servers = [_listen(STALL_PORT, None), _listen(OPEN_PORT, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
               _listen(LEAKY_PORT, b"HTTP/1.1 500 SECRET-REASON\r\nContent-Length: 11\r\n\r\nSECRET-BODY")]
    env = {"AUDITORYHUM_BACKEND": "inprocess", "AUDITORYHUM_URI_CONNECT_TIMEOUT_S": "1",
           "AUDITORYHUM_URI_READ_TIMEOUT_S": "1",
           "AUDITORYHUM_ALLOWED_URIS": f"{LINCITY}/,http://127.0.0.1:{STALL_PORT}/,http://127.0.0.1:{LEAKY_PORT}/"}
    try:
        for name in ("labeler", "aligner"):
            kafka.spawn(name, env)
        for name in ("labeler", "aligner"):
            kafka.wait_serving(name, 180)
        yield kafka
    finally:
        kafka.stop_services()
        for server in servers:
            server.close()


OUTSIDE = {
    "an existing file": "/etc/passwd",
    "a missing file": "/nonexistent/x.wav",
    "a traversal": f"{LINCITY}/../../../../etc/hostname",
    "an open port": f"http://127.0.0.1:{OPEN_PORT}/x.wav",
    "a closed port": f"http://127.0.0.1:{CLOSED_PORT}/x.wav",
}


@pytest.mark.distributed
def test_label_clips_refuses_alike_whatever_lies_outside_the_policy(services):
    with grpc.insecure_channel(services.grpc_address("labeler")) as channel:
        stub = api_grpc.LabelerServiceStub(channel)
        reasons = {}
        for what, uri in OUTSIDE.items():
            response = stub.LabelClips(api.LabelClipsRequest(clips=[pb.Clip(clip_id="c", uri=uri)]), timeout=30)
            assert not response.proposals, what
            reasons[what] = [letter.reason for letter in response.dead_letters]
        inside = stub.LabelClips(api.LabelClipsRequest(clips=[pb.Clip(clip_id="farm", uri=FARM)]), timeout=60)
    assert all(r == [REFUSED] for r in reasons.values()), reasons
    assert inside.proposals and inside.proposals[0].labels


@pytest.mark.distributed
def test_score_refuses_alike_whatever_lies_outside_the_policy(services):
    with grpc.insecure_channel(services.grpc_address("aligner")) as channel:
        stub = api_grpc.AlignerServiceStub(channel)
        answers = {}
        for what, uri in OUTSIDE.items():
            with pytest.raises(grpc.RpcError) as refused:
                stub.Score(api.ScoreRequest(clip=pb.Clip(clip_id="c", uri=uri), labels=["dog bark"]), timeout=30)
            answers[what] = (refused.value.code(), refused.value.details())
        assert stub.Score(api.ScoreRequest(clip=pb.Clip(clip_id="farm", uri=FARM), labels=["dog bark"]),
                          timeout=60).alignment.scores
    assert set(answers.values()) == {(grpc.StatusCode.INVALID_ARGUMENT, f"cannot score the clip: {REFUSED}")}, answers


@pytest.mark.distributed
def test_a_stalled_store_is_cut_off_and_a_failing_one_tells_no_secrets(services):
    with grpc.insecure_channel(services.grpc_address("aligner")) as channel:
        stub = api_grpc.AlignerServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as stalled:
            stub.Score(api.ScoreRequest(clip=pb.Clip(clip_id="s", uri=f"http://127.0.0.1:{STALL_PORT}/x.wav"),
                                        labels=["rain"]), timeout=30)
        took = time.monotonic() - started
        with pytest.raises(grpc.RpcError) as failed:
            stub.Score(api.ScoreRequest(clip=pb.Clip(clip_id="l", uri=f"http://127.0.0.1:{LEAKY_PORT}/x.wav"),
                                        labels=["rain"]), timeout=30)
    # The read timeout (1 s here) ends the wait: a transient storage error, retry later.
    assert stalled.value.code() == grpc.StatusCode.UNAVAILABLE and "storage" in stalled.value.details()
    assert took < 10, took
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE and "HTTP 500" in failed.value.details()
    assert "SECRET" not in failed.value.details()


@pytest.mark.distributed
def test_a_kafka_clip_outside_the_policy_is_dead_lettered_with_the_policy_reason(services):
    bus = KafkaBus(services.bootstrap, client_id="test-uri-policy")
    for clip_id, uri in (("outside-existing", "/etc/passwd"), ("outside-missing", "/nonexistent/x.wav")):
        bus.publish(topics.CLIPS, clip_id, pb.Clip(clip_id=clip_id, uri=uri, dataset="uri-policy"))
    bus.flush()
    bus.close()
    letters, deadline = {}, time.monotonic() + 60
    while len(letters) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        for record in read_topics(services.bootstrap, [topics.DLQ]):
            message = record.message()
            if message.stage == "labeler" and message.clip_id.startswith("outside-"):
                letters[message.clip_id] = message.reason
    assert letters == {"outside-existing": REFUSED, "outside-missing": REFUSED}
