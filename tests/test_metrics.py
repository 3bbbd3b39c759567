"""The stream worker's Prometheus metrics, reported by a real worker on the in-memory bus."""

from __future__ import annotations

from prometheus_client import REGISTRY

from auditoryhum import topics
from auditoryhum.bus.memory import InMemoryBus
from auditoryhum.config import Settings
from auditoryhum.pipeline import audio_loader
from auditoryhum.runner import StageWorker
from auditoryhum.service.metrics import StageMetrics
from auditoryhum.stages.labeler import LabelerStage
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import TRAFFIC

SAMPLES = {  # what a labeler worker reports: name → (metric sample, labels)
    "in": ("auditoryhum_records_in_total", {"stage": "labeler", "topic": topics.CLIPS}),
    "labels": ("auditoryhum_records_out_total", {"stage": "labeler", "topic": topics.LABELS}),
    "dlq": ("auditoryhum_records_out_total", {"stage": "labeler", "topic": topics.DLQ}),
    "dead": ("auditoryhum_dead_letters_total", {"stage": "labeler"}),
    "batches": ("auditoryhum_batch_seconds_count", {"stage": "labeler"}),
}


def snapshot() -> dict[str, float]:
    return {key: REGISTRY.get_sample_value(name, labels) or 0.0 for key, (name, labels) in SAMPLES.items()}


def test_a_batch_counts_records_in_and_out_and_dead_letters(models):
    bus = InMemoryBus()
    worker = StageWorker(bus, LabelerStage(models.labeler, audio_loader(Settings())), metrics=StageMetrics())
    for clip in (pb.Clip(clip_id="a", uri=str(TRAFFIC[0])), pb.Clip(clip_id="b", uri="/nonexistent/b.wav")):
        bus.publish(topics.CLIPS, clip.clip_id, clip)
    before = snapshot()
    assert worker.step() == 2
    after = snapshot()
    assert {key: after[key] - before[key] for key in after} == {"in": 2, "labels": 1, "dlq": 1, "dead": 1,
                                                                "batches": 1}
