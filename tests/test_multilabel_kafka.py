"""Several labelers per clip over a real Kafka broker: the labeler, aligner and review stages as the services wire
them (service.app.WIRING), each in its own consumer group on the real topics. Every clip comes out once, with
both labelers' answers and its disagreement, exactly as the embedded mode gives it."""

from __future__ import annotations

import csv
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from auditoryhum import topics
from auditoryhum.bus.kafka import KafkaBus, ensure_topics, read_topics
from auditoryhum.models import Models
from auditoryhum.pipeline import run
from auditoryhum.runner import StageWorker, Threads
from auditoryhum.service.app import WIRING
from auditoryhum.service.settings import ServiceSettings
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import LINCITY, SIMUTRANS, TEST_URIS

pytestmark = pytest.mark.distributed
FILES = [LINCITY / "TraficHigh1.wav", LINCITY / "School1.wav", SIMUTRANS / "forest.wav", SIMUTRANS / "seagulls.wav",
         LINCITY / "Harbor1.wav"]
DATASET = "multi-labelers"


def test_kafka_gives_every_clip_once_with_both_labelers_as_embedded(kafka, tiny_qwen2_audio, tmp_path):
    settings = ServiceSettings(bootstrap=kafka.bootstrap, labelers=f"yamnet,qwen={tiny_qwen2_audio}",
                               review_fraction=0.2, review_rank="disagreement", state_dir=str(tmp_path / "state"),
                               partitions=2, allowed_uris=TEST_URIS)
    models = Models(settings)
    ensure_topics(settings.bootstrap, topics.ALL, settings.partitions)
    folder = tmp_path / "audio" / DATASET
    folder.mkdir(parents=True)
    for f in FILES:
        (folder / f.name).symlink_to(f)
    embedded = tmp_path / "embedded"
    run(folder, embedded, settings, dataset=DATASET, models=models)

    bus = KafkaBus(settings.bootstrap, client_id="multi-labelers-test")
    with ExitStack() as stack:
        stack.callback(bus.close)
        workers = [StageWorker(bus, WIRING[name](settings, models, stack)[0], batch_size=4)
                   for name in ("labeler", "aligner", "review")]
        for worker in workers:  # leave the groups: a member that stays would hold the next test's labeler back
            stack.callback(worker.consumer.close)
        bus.publish(topics.DATASETS, DATASET, pb.DatasetAnnouncement(dataset=DATASET, expected_clips=len(FILES)))
        expected = {}
        for f in sorted(folder.iterdir()):
            with (embedded / "labels.csv").open(newline="") as src:
                clip_id = next(r["clip_id"] for r in csv.DictReader(src) if Path(r["path"]).name == f.name)
            clip = pb.Clip(clip_id=clip_id, uri=str(f), dataset=DATASET)
            expected[clip_id] = clip
            bus.publish(topics.CLIPS, clip_id, clip)
        bus.flush()
        with Threads(workers) as threads:
            deadline = time.monotonic() + 180
            while not _sealed(settings.bootstrap):
                threads.check()
                assert time.monotonic() < deadline, "the dataset was not sealed in time"
                time.sleep(1.0)

    finals = [m for m in _messages(settings.bootstrap, topics.FINAL_LABELS) if isinstance(m, pb.FinalLabel)]
    assert sorted(f.clip.clip_id for f in finals) == sorted(expected)  # each clip once
    proposals = _messages(settings.bootstrap, topics.LABELS)
    for p in proposals:
        assert [a.model_id for a in p.labelers] == [models.tagger.model_id, "qwen"]
    assert sorted(p.clip.clip_id for p in proposals) == sorted(expected)

    with (embedded / "final_labels.csv").open(newline="") as src:
        same = {r["clip_id"]: r for r in csv.DictReader(src)}
    for f in finals:
        row = same[f.clip.clip_id]
        assert (f.label, f.model_id) == (row["label"], row["model"])
        assert f.disagreement == pytest.approx(float(row["disagreement"]), abs=1e-5)
        assert f.score == pytest.approx(float(row["score"]), abs=1e-5)
    tasks = _messages(settings.bootstrap, topics.REVIEW_TASKS)
    with (embedded / "review_queue.csv").open(newline="") as src:
        assert [t.alignment.clip.clip_id for t in tasks] == [r["clip_id"] for r in csv.DictReader(src)]
    assert len(tasks) == 1 and tasks[0].alignment.disagreement == max(f.disagreement for f in finals)


def _messages(bootstrap: str, topic: str) -> list:
    """This dataset's records on ``topic`` (other tests of the session share the broker)."""
    messages = [r.message() for r in read_topics(bootstrap, [topic])]
    clips = [m.alignment.clip if isinstance(m, pb.ReviewTask) else getattr(m, "clip", m) for m in messages]
    return [m for m, clip in zip(messages, clips) if clip.dataset == DATASET]


def _sealed(bootstrap: str) -> bool:
    return any(isinstance(m := r.message(), pb.DatasetSealed) and m.dataset == DATASET
               for r in read_topics(bootstrap, [topics.FINAL_LABELS]))
