"""The distributed mode for real: an Apache Kafka broker and the four services as processes, on real recordings.

The services must give exactly what the embedded mode gives on the same clips, survive kill -9 without losing or
duplicating a clip, and dead-letter a malformed record without stopping.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kafka import KafkaProducer

from auditoryhum import topics
from auditoryhum.backends.triton import connect
from auditoryhum.bus.kafka import read_topics
from auditoryhum.config import Settings
from auditoryhum.pipeline import run
from auditoryhum.service.client import wait_for_taxonomy
from auditoryhum.service.local import SERVICES, LocalStack
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2, services_pb2_grpc
from tests.conftest import LINCITY, SIMUTRANS

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def stack(kafka: LocalStack):
    try:
        kafka.up(SERVICES, kafka=False)
        yield kafka
    finally:
        kafka.stop_services()


def recordings(folder: Path, n: int, copies: int = 1) -> Path:
    """``n`` real recordings (lincity-ng-data, simutrans-pak64) linked into ``folder``; with ``copies`` > 1 each
    appears in that many sub-folders, so every copy is a clip of its own."""
    files = sorted(LINCITY.glob("*.wav")) + sorted(SIMUTRANS.glob("*.wav"))
    assert len(files) >= n, "lincity-ng-data and simutrans-pak64 are not installed (make setup)"
    for c in range(copies):
        (folder / f"copy{c}").mkdir(parents=True)
        for f in files[:n]:
            (folder / f"copy{c}" / f"{f.parent.parent.name}-{f.name}").symlink_to(f)
    return folder


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "auditoryhum", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def metric(stack: LocalStack, name: str, sample: str) -> float:
    text = urllib.request.urlopen(f"http://{stack.metrics_address(name)}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf"^{re.escape(sample)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def final_labels_on_topic(stack: LocalStack, dataset: str) -> list[pb.FinalLabel]:
    finals = []
    for record in read_topics(stack.bootstrap, [topics.FINAL_LABELS]):
        message = record.message()
        if isinstance(message, pb.FinalLabel) and message.clip.dataset == dataset:
            finals.append(message)
    return finals


def test_services_give_what_the_embedded_mode_gives(stack, models, tmp_path):
    """Kafka + Triton + the four services against the embedded mode with in-process models, same clips."""
    audio = recordings(tmp_path / "audio", 120)
    embedded = run(audio, tmp_path / "embedded", Settings(), dataset="same-input", models=models).summary

    announced = json.loads(cli("ingest", str(audio), "--bootstrap", stack.bootstrap, "--dataset", "same-input"))
    assert announced["clips"] == 120
    wait_for_taxonomy(stack.grpc_address("clusterer"), "same-input", wait_s=300)
    out = tmp_path / "distributed"
    cli("taxonomy", "--dataset", "same-input", "--clusterer", stack.grpc_address("clusterer"),
        "--bootstrap", stack.bootstrap, "--out", str(out))

    for name in ("labels.csv", "review_queue.csv", "final_labels.csv", "assignments.csv"):
        ours, theirs = rows(out / name), rows(tmp_path / "embedded" / name)
        key = lambda r: r["clip_id"]  # noqa: E731
        assert len(ours) == len(theirs) > 0, name
        scored = ("score", "final_score")  # Triton's and the in-process embeddings differ in the last float bits
        for a, b in zip(sorted(ours, key=key), sorted(theirs, key=key)):
            assert {k: v for k, v in a.items() if k not in scored} == {k: v for k, v in b.items() if k not in scored}
            for k in scored:
                if k in a:
                    assert float(a[k]) == pytest.approx(float(b[k]), abs=1e-4)
    scores = {(r["clip_id"], r["label"]): float(r["score"]) for r in rows(out / "alignments.csv")}
    expected = {(r["clip_id"], r["label"]): float(r["score"]) for r in rows(tmp_path / "embedded" / "alignments.csv")}
    assert scores.keys() == expected.keys()
    assert all(scores[k] == pytest.approx(v, abs=1e-4) for k, v in expected.items())
    assert len(rows(out / "review_queue.csv")) == 2  # the lowest 1 % of 120 clips, rounded up

    ours, theirs = json.loads((out / "taxonomy.json").read_text()), json.loads(
        (tmp_path / "embedded" / "taxonomy.json").read_text())
    assert ours["k"] == theirs["k"] >= 2
    assert ours["clusters"] == theirs["clusters"]
    assert [p["k"] for p in ours["curve"]] == [p["k"] for p in theirs["curve"]]
    assert [p["adjusted"] for p in ours["curve"]] == pytest.approx([p["adjusted"] for p in theirs["curve"]], abs=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] == embedded["clips"] == 120
    assert summary["mu_c"] == pytest.approx(embedded["mu_c"], abs=1e-5)

    # The services' models ran on Triton, whose dynamic batcher merged their requests.
    client = connect(stack.triton_url)
    for model in ("yamnet_patches", "text_embedder"):
        served, runs = client.statistics(model)
        assert served > runs > 0, model


@pytest.mark.parametrize("victim", [*SERVICES, "triton"])
def test_kill_9_mid_stream_loses_and_duplicates_nothing(stack, tmp_path, victim):
    dataset = f"kill-{victim}"
    audio = recordings(tmp_path / "audio", 100, copies=5)  # 500 clips: time to be killed mid-stream
    watched = "labeler" if victim == "triton" else victim
    consumed_before = metric(stack, watched, "auditoryhum_records_in_total")
    cli("ingest", str(audio), "--bootstrap", stack.bootstrap, "--dataset", dataset)
    deadline = time.monotonic() + 120
    while metric(stack, watched, "auditoryhum_records_in_total") - consumed_before < 40:
        assert time.monotonic() < deadline, f"{watched} consumed nothing"
        time.sleep(0.05)
    if victim == "triton":  # the model server dies: the labeler's calls fail and its batches wait, uncommitted
        stack.kill_triton()
        deadline = time.monotonic() + 60  # the labeler retries with backoff, then gives its batch back
        while metric(stack, "labeler", "auditoryhum_errors_total") == 0:
            assert time.monotonic() < deadline, "the labeler never noticed that Triton is gone"
            time.sleep(0.2)
    else:
        stack.signal(victim, signal.SIGKILL)
    # Killed mid-stream: the dataset's taxonomy is not out yet (read on its topic: a dead clusterer answers nothing).
    assert not [r for r in read_topics(stack.bootstrap, [topics.TAXONOMY]) if r.key == dataset]
    if victim == "triton":
        stack.start_triton()
    else:
        stack.start(victim)

    taxonomy = wait_for_taxonomy(stack.grpc_address("clusterer"), dataset, wait_s=300)
    assert taxonomy.clips == 500
    assert sum(lc.count for c in taxonomy.clusters for lc in c.labels) == 500
    finals: dict[str, set[str]] = {}
    for final in final_labels_on_topic(stack, dataset):
        finals.setdefault(final.clip.clip_id, set()).add(final.label)
    assert len(finals) == 500  # none lost
    assert all(len(labels) == 1 for labels in finals.values())  # a clip never gets two different final labels
    # Not even a duplicate record: upstream replays stop at review, which knows every clip it has seen, and review's
    # own records leave through its outbox (a crash mid-relay: tests/test_review_kafka.py).
    assert len(final_labels_on_topic(stack, dataset)) == 500


def test_every_service_reports_health_reflection_and_metrics(stack):
    for name in SERVICES:
        with grpc.insecure_channel(stack.grpc_address(name)) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            [answer] = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]))
            listed = {s.name for s in answer.list_services_response.service}
        assert f"auditoryhum.v1.{name.capitalize()}Service" in listed and "grpc.health.v1.Health" in listed
        text = urllib.request.urlopen(f"http://{stack.metrics_address(name)}/metrics", timeout=5).read().decode()
        # Every series is there from the start, before any record: this test passes run on its own too.
        for family in ("auditoryhum_records_in_total", "auditoryhum_batch_seconds_bucket", "auditoryhum_consumer_lag",
                       "auditoryhum_consumer_stalls_total", "auditoryhum_errors_total", "auditoryhum_dead_letters_total"):
            assert f"{family}{{" in text, (name, family)
    # The review service also serves its web UI: the sign-in page, under the UI's security headers.
    page = urllib.request.urlopen(f"http://127.0.0.1:{stack.ui_port}/signin", timeout=5)
    assert page.status == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert 'name="csrf"' in page.read().decode()


def test_a_malformed_record_goes_to_the_dlq_and_the_service_keeps_running(stack, tmp_path):
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap)
    producer.send(topics.CLIPS, key=b"garbage", value=b"\x08\x96\x01not a clip",
                  headers=[("message-type", b"auditoryhum.v1.Clip")])
    producer.send(topics.CLIPS, key=b"stranger", value=b"{}", headers=[("message-type", b"com.example.Order")])
    producer.flush()
    producer.close()

    wanted, letters = {b"\x08\x96\x01not a clip", b"{}"}, []
    deadline = time.monotonic() + 60
    while len(letters) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        letters = [m for m in (r.message() for r in read_topics(stack.bootstrap, [topics.DLQ]))
                   if m.stage == "labeler" and m.payload in wanted]
    reasons = sorted(m.reason for m in letters)
    assert len(reasons) == 2, reasons
    assert "malformed auditoryhum.v1.Clip" in reasons[0]
    assert reasons[1] == "unknown message type 'com.example.Order'"

    # Still serving, and still labelling.
    with grpc.insecure_channel(stack.grpc_address("labeler")) as channel:
        stub = services_pb2_grpc.LabelerServiceStub(channel)
        clip = pb.Clip(clip_id="after-garbage", uri=str(sorted(LINCITY.glob("*.wav"))[0]), dataset="probe")
        response = stub.LabelClips(services_pb2.LabelClipsRequest(clips=[clip]), timeout=60)
    assert response.proposals and response.proposals[0].labels
