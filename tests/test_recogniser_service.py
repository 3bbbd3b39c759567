"""ClassifierService/ClassifyAudio: the scene recogniser served over gRPC (in-process server on a real channel, and
the `auditoryhum serve recogniser` process), and the Triton model `scene_recogniser` against the in-process one.

The model is trained by `auditoryhum train` on a run folder cut from real recordings of three scenes (traffic,
water, crowd), as tests/test_edge_train.py writes one. Ports 31700-31799: Triton 31720-31722, gRPC 31751+.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auditoryhum import audio
from auditoryhum.backends import features, triton
from auditoryhum.config import Settings
from auditoryhum.edge.recogniser import Recogniser
from auditoryhum.edge.serving import SceneRecognisers, model_id
from auditoryhum.edge.triton import TritonRecogniser
from auditoryhum.pipeline import audio_limits, audio_loader
from auditoryhum.service import grpc_server
from auditoryhum.service.classifier_api import ClassifierServicer
from auditoryhum.uris import UriPolicy
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2 as api
from auditoryhum.v1 import services_pb2_grpc as api_grpc
from tests.conftest import LINCITY, TEST_URIS, write_bad_files
from tests.test_edge_train import write_run

ROOT = Path(__file__).resolve().parents[1]
GRPC_PORT, PROCESS_PORT, PROCESS_METRICS, TRITON_HTTP = 31751, 31752, 31799, 31720  # in-process servers: 31761+
SERVICE = "auditoryhum.v1.ClassifierService"
MAX_REQUEST_MB = 1.0


# cluster id (the order of write_run's families) → (composite label, the recordings its clips are cut from)
SCENES = {0: ("traffic / scene", ["TraficHigh1", "TraficHigh2", "TraficHigh3", "TraficLow1", "TraficLow2",
                                  "TraficLow3"]),
          1: ("water / scene", ["Water1", "Water2", "Water3", "Water4", "Water5", "ParklandLake1", "ParklandLake2"]),
          2: ("crowd / scene", ["SportsCroud1", "SportsCroud2", "SportsCroud3", "School1", "School2", "School3"])}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """What `auditoryhum train` writes for the run (both models, seed 0): ~7 s on one core."""
    folder = tmp_path_factory.mktemp("recogniser")
    run = write_run(folder, {label.split(" /")[0]: names for label, names in SCENES.values()})
    result = subprocess.run([sys.executable, "-m", "auditoryhum", "train", str(run), "--out", str(folder / "model"),
                             "--epochs", "40", "--seed", "0"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])})
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "model"


@pytest.fixture(scope="module")
def cnn_only(model_dir, tmp_path_factory) -> Path:
    """The MODEL_DIR without its head: as `auditoryhum train --models cnn` leaves it."""
    folder = tmp_path_factory.mktemp("cnn-only") / "model"
    shutil.copytree(model_dir, folder)
    manifest = json.loads((folder / "recogniser.json").read_text())
    del manifest["models"]["head"]
    (folder / "recogniser.json").write_text(json.dumps(manifest))
    return folder


def _servicer(model_dir: Path, **limits) -> ClassifierServicer:
    settings = Settings(**limits)
    return ClassifierServicer(SceneRecognisers(model_dir), audio_loader(settings, UriPolicy.parse(TEST_URIS)),
                              audio_limits(settings))


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """Starts a server of the given servicer on the next port from 31751; stops them all at the end."""
    started, ports = [], iter(range(GRPC_PORT + 10, GRPC_PORT + 40))

    def start(servicer: ClassifierServicer, port: int | None = None, **kwargs) -> grpc.Channel:
        server, health, bound = grpc_server.build_server(
            [(api_grpc.add_ClassifierServiceServicer_to_server, servicer)], port=port or next(ports),
            max_message_mb=MAX_REQUEST_MB, workers=2, **kwargs)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{bound}")
        started.append((server, health, channel))
        return channel

    yield start
    for server, health, channel in started:
        channel.close()
        grpc_server.stop(server, health, grace_s=0).wait()


@pytest.fixture(scope="module")
def classifier(model_dir, serve) -> api_grpc.ClassifierServiceStub:
    return api_grpc.ClassifierServiceStub(serve(_servicer(model_dir, max_duration_s=10.0), port=GRPC_PORT))


def recording(name: str) -> Path:
    path = LINCITY / f"{name}.wav"
    assert path.exists(), "lincity-ng-data is not installed (make setup)"
    return path


def classify(stub, **fields) -> api.ClassifyAudioResponse:
    return stub.ClassifyAudio(api.ClassifyAudioRequest(**fields), timeout=30)


def status_of(stub, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        classify(stub, **fields)
    return error.value


def test_real_recordings_are_classified_into_their_scenes_by_uri_and_by_bytes(classifier, model_dir):
    """The whole recordings the run's clips were cut from, by each model: the answers are the in-process
    Recogniser's; each model puts at least 17 of the 19 in their scene (both put 18 there)."""
    for model in ("head", "cnn"):
        local, right = Recogniser(model_dir, model=model), []
        for cluster_id, (label, names) in SCENES.items():
            for name in names:
                path = recording(name)
                by_uri = classify(classifier, clip=pb.Clip(uri=str(path)), model=model)
                by_bytes = classify(classifier, inline=api.InlineAudio(name=path.name, data=path.read_bytes()),
                                    model=model)
                assert by_uri == by_bytes
                clip = audio.load(path, 16_000)
                expected = local.classify([clip])[0]
                np.testing.assert_allclose([p.probability for p in by_uri.probabilities], expected, rtol=0,
                                           atol=1e-6)
                assert by_uri.scene.cluster_id == int(np.argmax(expected))
                assert [(p.cluster_id, p.composite_label) for p in by_uri.probabilities] == \
                    [(cid, scene[0]) for cid, scene in SCENES.items()]
                assert sum(p.probability for p in by_uri.probabilities) == pytest.approx(1, abs=1e-5)
                assert by_uri.patches == len(features.patches(clip.samples))
                assert by_uri.duration_s == pytest.approx(clip.duration_s)
                assert (by_uri.model, by_uri.precision, by_uri.taxonomy_version) == (model, "int8", 1)
                assert by_uri.model_id == model_id(model_dir, model, "int8")
                if by_uri.scene.cluster_id == cluster_id:
                    assert by_uri.scene.composite_label == label
                    right.append(name)
        assert len(right) >= 17, f"{model}: only {right} in their scene"


def test_the_float_model_is_asked_for_by_its_own_service(model_dir, serve):
    held = SceneRecognisers(model_dir, precision="float")
    stub = api_grpc.ClassifierServiceStub(serve(ClassifierServicer(held, audio_loader(Settings()), audio_limits(
        Settings()))))
    answer = classify(stub, clip=pb.Clip(uri=str(recording("TraficHigh3"))))
    assert answer.precision == "float" and answer.model_id == model_id(model_dir, "cnn", "float")
    assert answer.model_id != model_id(model_dir, "cnn", "int8")


@pytest.mark.parametrize("fields, code, words", [
    ({}, "INVALID_ARGUMENT", "no audio"),
    ({"inline": api.InlineAudio(name="x.wav")}, "INVALID_ARGUMENT", "has no data"),
    ({"clip": pb.Clip(uri=str(LINCITY / "Water1.wav")), "model": "resnet"}, "INVALID_ARGUMENT", "unknown model"),
    ({"clip": pb.Clip(uri="/etc/passwd")}, "PERMISSION_DENIED", "not allowed by the URI policy"),
    ({"clip": pb.Clip(uri="/etc/no-such-file.wav")}, "PERMISSION_DENIED", "not allowed by the URI policy"),
    ({"clip": pb.Clip(uri="relative.wav")}, "PERMISSION_DENIED", "not allowed by the URI policy"),
    ({"clip": pb.Clip(uri=str(LINCITY / "NoSuchRecording.wav"))}, "NOT_FOUND", "cannot open"),
    ({"inline": api.InlineAudio(name="noise.wav", data=b"RIFF" + bytes(200))}, "INVALID_ARGUMENT", "not readable"),
])
def test_bad_requests_get_clear_status_codes(classifier, fields, code, words):
    error = status_of(classifier, **fields)
    assert error.code() == getattr(grpc.StatusCode, code) and words in error.details(), error.details()


def test_bad_audio_files_are_invalid_arguments_naming_the_reason(classifier, tmp_path):
    for name, words in write_bad_files(tmp_path).items():  # tmp_path lies under the test URI policy
        for fields in ({"clip": pb.Clip(uri=str(tmp_path / name))},
                       {"inline": api.InlineAudio(name=name, data=(tmp_path / name).read_bytes() or b"\0")}):
            error = status_of(classifier, **fields)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
            assert name in error.details()
            if fields.get("clip") or words != "empty":  # one zero byte sent inline is not an empty file
                assert words in error.details(), (name, error.details())


def test_malformed_protobuf_is_invalid_argument(classifier, model_dir, serve):
    call = serve(_servicer(model_dir)).unary_unary(f"/{SERVICE}/ClassifyAudio")
    for raw in (b"\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05ab", bytes(range(256))):
        with pytest.raises(grpc.RpcError) as error:
            call(raw, timeout=10)
        assert (error.value.code(), error.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                               "cannot parse the request")


def test_a_request_over_the_size_limit_is_refused(classifier):
    error = status_of(classifier, inline=api.InlineAudio(name="big.wav", data=bytes(int(1.5 * 1024 * 1024))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_model_the_model_dir_lacks_is_a_failed_precondition(cnn_only, serve):
    stub = api_grpc.ClassifierServiceStub(serve(_servicer(cnn_only)))
    assert classify(stub, clip=pb.Clip(uri=str(recording("Water1")))).model == "cnn"
    error = status_of(stub, clip=pb.Clip(uri=str(recording("Water1"))), model="head")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "no 'head' model" in error.details()


def test_a_missing_model_dir_is_a_failed_precondition(serve, tmp_path):
    stub = api_grpc.ClassifierServiceStub(serve(_servicer(tmp_path / "gone")))
    error = status_of(stub, clip=pb.Clip(uri=str(recording("Water1"))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "gone: no such folder" in error.details() and "AUDITORYHUM_RECOGNISER_DIR" in error.details()
    (tmp_path / "empty").mkdir()
    stub = api_grpc.ClassifierServiceStub(serve(_servicer(tmp_path / "empty")))
    error = status_of(stub, clip=pb.Clip(uri=str(recording("Water1"))))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "recogniser.json: not found" in error.details()


def test_a_token_guards_classify_but_not_health(model_dir, serve):
    channel = serve(_servicer(model_dir), token="t" * 32)
    stub = api_grpc.ClassifierServiceStub(channel)
    assert status_of(stub, clip=pb.Clip(uri=str(recording("Water1")))).code() == grpc.StatusCode.UNAUTHENTICATED
    answer = stub.ClassifyAudio(api.ClassifyAudioRequest(clip=pb.Clip(uri=str(recording("Water1")))),
                                metadata=[("authorization", "Bearer " + "t" * 32)], timeout=30)
    assert len(answer.probabilities) == len(SCENES)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert health.status == health_pb2.HealthCheckResponse.SERVING


# The service process, as the image and the chart run it.

def _service_env(**settings: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
           "AUDITORYHUM_ALLOWED_URIS": TEST_URIS, "AUDITORYHUM_METRICS_PORT": str(PROCESS_METRICS)}
    return env | {f"AUDITORYHUM_{k.upper()}": v for k, v in settings.items()}


def _wait_ready(channel: grpc.Channel, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, "the service exited"
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
            return
        except grpc.FutureTimeoutError:
            assert time.monotonic() < deadline, "the service did not start"


def test_the_service_process_serves_the_model_and_stops_on_sigterm(model_dir):
    process = subprocess.Popen([sys.executable, str(ROOT / "services" / "recogniser" / "main.py")],
                               env=_service_env(recogniser_dir=str(model_dir), grpc_port=str(PROCESS_PORT)),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{PROCESS_PORT}") as channel:
            _wait_ready(channel, process)
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE))
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            answer = classify(api_grpc.ClassifierServiceStub(channel), clip=pb.Clip(uri=str(recording("TraficHigh3"))))
            assert answer.model_id == model_id(model_dir, "cnn", "int8") and len(answer.probabilities) == 3
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate()[0]
    assert '"msg": "serving"' in output and model_id(model_dir, "cnn", "int8") in output


@pytest.mark.parametrize("settings, words", [
    ({}, "AUDITORYHUM_RECOGNISER_DIR is not set"),
    ({"recogniser_dir": "/nonexistent/model"}, "/nonexistent/model: no such folder"),
    ({"recogniser_model": "head"}, "no 'head' model"),
    ({"recogniser_precision": "int4"}, "invalid settings: recogniser_precision"),
])
def test_the_service_refuses_to_start_without_its_model(cnn_only, settings, words):
    settings = {"recogniser_dir": str(cnn_only), **settings} if settings.get("recogniser_model") else settings
    result = subprocess.run([sys.executable, "-m", "auditoryhum", "serve", "recogniser"], capture_output=True,
                            text=True, timeout=60, env=_service_env(grpc_port=str(PROCESS_PORT + 1), **settings))
    assert result.returncode == 2 and words in result.stderr, result.stderr


# Triton: scripts/triton.sh serving a model repository whose scene_recogniser/config.pbtxt names the MODEL_DIR (the
# way a deployment sets it), against the in-process Recogniser.

@pytest.fixture(scope="module")
def triton_server(model_dir, tmp_path_factory) -> Iterator[str]:
    repository = tmp_path_factory.mktemp("repository")
    shutil.copytree(triton.REPOSITORY / "scene_recogniser", repository / "scene_recogniser")
    # Triton's Python stub does not read PYTHONPATH: the adapter imports this checkout's auditoryhum (a git worktree's
    # venv may have another checkout installed); its code below that line is the repository's own.
    adapter = repository / "scene_recogniser" / "1" / "model.py"
    adapter.write_text(f"import sys\nsys.path.insert(0, {str(ROOT / 'src')!r})\n" + adapter.read_text())
    config = repository / "scene_recogniser" / "config.pbtxt"
    config.write_text(config.read_text().replace('key: "model_dir", value: { string_value: "/models/recogniser" }',
                                                 f'key: "model_dir", value: {{ string_value: "{model_dir}" }}'))
    home = tmp_path_factory.mktemp("triton")
    env = {**os.environ, "TRITON_HOME_DIR": str(home), "TRITON_MODELS": "scene_recogniser",
           "TRITON_MODEL_REPOSITORY": str(repository), "TRITON_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "TRITON_HTTP_PORT": str(TRITON_HTTP),
           "TRITON_GRPC_PORT": str(TRITON_HTTP + 1), "TRITON_METRICS_PORT": str(TRITON_HTTP + 2)}
    script = [str(ROOT / "scripts" / "triton.sh")]
    started = subprocess.run([*script, "start"], env=env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    yield f"127.0.0.1:{TRITON_HTTP + 1}", (home / "control.key").read_text()
    subprocess.run([*script, "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def clips() -> list[audio.Audio]:
    # Real recordings of 0.13 s to 5 s: one shorter than a patch, most of several.
    files = sorted(LINCITY.glob("*.wav"))[::9]
    return [audio.load(f, 16_000) for f in files]


def test_triton_gives_the_in_process_probabilities(triton_server, model_dir, clips):
    remote = TritonRecogniser(triton.TritonClient(triton_server[0]), model_dir)
    local = Recogniser(model_dir)
    assert (remote.model, remote.precision, remote.classes) == ("cnn", "int8", local.classes)
    assert min(c.duration_s for c in clips) < 0.96 < max(c.duration_s for c in clips)
    np.testing.assert_allclose(remote.classify(clips), local.classify(clips), rtol=0, atol=1e-6)
    assert remote.classify([]).shape == (0, len(local.classes))


def test_the_service_on_triton_answers_as_in_process(triton_server, model_dir, classifier, serve):
    held = SceneRecognisers(model_dir, triton=TritonRecogniser(triton.TritonClient(triton_server[0]), model_dir))
    on_triton = api_grpc.ClassifierServiceStub(serve(ClassifierServicer(held, audio_loader(Settings()),
                                                                        audio_limits(Settings()))))
    for name in ("TraficHigh3", "Water4", "SportsCroud3"):
        request = {"clip": pb.Clip(uri=str(recording(name)))}
        mine, theirs = classify(on_triton, **request), classify(classifier, **request)
        assert (mine.scene.cluster_id, mine.model_id, mine.patches) == (theirs.scene.cluster_id, theirs.model_id,
                                                                        theirs.patches)
        np.testing.assert_allclose([p.probability for p in mine.probabilities],
                                   [p.probability for p in theirs.probabilities], rtol=0, atol=1e-6)
    # Triton runs one model: asking this service for another is a precondition it cannot meet.
    error = status_of(on_triton, clip=pb.Clip(uri=str(recording("Water4"))), model="head")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "runs the 'cnn' model on Triton" in error.details()


def test_the_triton_model_without_its_model_dir_fails_to_load_clearly(triton_server, tmp_path):
    client = triton.TritonClient(triton_server[0], control_key=triton_server[1])
    with pytest.raises(RuntimeError, match="parameter 'model_dir' is empty"):
        client.load("scene_recogniser", {"model_dir": ""})
    with pytest.raises(RuntimeError, match="recogniser.json: not found"):
        client.load("scene_recogniser", {"model_dir": str(tmp_path)})
