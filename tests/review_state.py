"""Review state for the web UI tests, built for real: the review stage in its worker on the in-memory bus, fed a
dataset announcement and alignments of real recordings, and the desk over that worker."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from auditoryhum import topics
from auditoryhum.bus.memory import InMemoryBus, InMemoryConsumer
from auditoryhum.review.desk import ReviewDesk
from auditoryhum.runner import StageWorker, drain
from auditoryhum.stages.review import ReviewPolicy, ReviewStage
from auditoryhum.uris import UriPolicy
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import TEST_URIS

SOUNDS = Path("/usr/share/games/lincity-ng/sounds")
# Hostile text as a model might write it after hearing speech; each sets a flag if it ever runs in a browser.
HOSTILE_LABELS = ['<script>window.__xss=2</script>', '<img src=x onerror="window.__xss=1">',
                  '" onmouseover="window.__xss=3" x="']
HOSTILE_SCORES = dict(zip(HOSTILE_LABELS, [0.10, 0.08, 0.05], strict=True))  # the first is the best label
HOSTILE_TAG = "<svg onload=window.__xss=4>"
HOSTILE_DATASET = "<b>site</b><script>window.__xss=5</script>"


def recording(name: str) -> Path:
    path = SOUNDS / name
    assert path.is_file(), f"{path} is missing: lincity-ng-data is not installed (make setup)"
    return path


def alignment(clip_id: str, dataset: str, uri: str, scores: dict[str, float],
              tags: dict[str, float] | None = None) -> pb.Alignment:
    best = max(scores, key=scores.get)
    return pb.Alignment(clip=pb.Clip(clip_id=clip_id, uri=uri, dataset=dataset), model_id="test-labeler",
                        scorer_id="test-scorer", scores=[pb.LabelScore(label=k, score=v) for k, v in scores.items()],
                        best_label=best, best_score=scores[best],
                        tags=[pb.Tag(name=k, score=v) for k, v in (tags or {}).items()])


@dataclass
class ReviewState:
    bus: InMemoryBus
    worker: StageWorker
    desk: ReviewDesk
    finals: InMemoryConsumer  # the final-labels topic, in a consumer group of the test's own

    def final_labels(self) -> list[pb.FinalLabel]:
        """The final labels published since the last call."""
        records = self.finals.poll(10_000)
        for record in records:
            self.finals.ack(record)
        return [m for m in (r.message() for r in records) if isinstance(m, pb.FinalLabel)]


def review_state(alignments: list[pb.Alignment], fraction: float, lease_s: float = 300.0) -> ReviewState:
    """Every clip of each dataset scored: the lowest ``fraction`` become pending tasks, the rest final labels."""
    bus = InMemoryBus()
    finals = bus.subscribe("test-final-labels", [topics.FINAL_LABELS])
    worker = StageWorker(bus, ReviewStage(ReviewPolicy(fraction=fraction, auto_accept=False)))
    for dataset, count in Counter(a.clip.dataset for a in alignments).items():
        bus.publish(topics.DATASETS, dataset, pb.DatasetAnnouncement(dataset=dataset, expected_clips=count))
    for a in alignments:
        bus.publish(topics.ALIGNMENTS, a.clip.clip_id, a)
    drain([worker])
    return ReviewState(bus, worker, ReviewDesk(worker, lease_s=lease_s, audio_uris=UriPolicy.parse(TEST_URIS)), finals)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)
