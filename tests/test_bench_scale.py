"""The scale benchmark's pure parts: the clips a seed gives, their manifest, and the figures taken from samples.
The benchmark itself (`make bench-scale`) is not part of the suite."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_scale  # noqa: E402
import scale_clips  # noqa: E402


@pytest.fixture()
def recordings() -> dict[str, list[scale_clips.Recording]]:
    """Two recordings per category, of 1 s and 3 s: distinct ramps, so a clip's samples show where it came from."""
    by_category = {}
    for c, category in enumerate(scale_clips.categories_of(17)):
        by_category[category] = [
            scale_clips.Recording(category, f"{category}{r}",
                                  np.linspace(-0.5, 0.5, seconds * scale_clips.RATE, dtype=np.float32) * (c + 1) / 17)
            for r, seconds in enumerate((1, 3))]
    return by_category


def test_clips_are_one_second_in_balanced_categories_and_reproducible(recordings):
    categories = scale_clips.categories_of(68)
    assert [categories.count(c) for c in set(categories)] == [4] * 17
    for i in (0, 5, 16, 17, 40):
        category, samples = scale_clips.cut(recordings, "main", i)
        assert category == categories[i]
        assert samples.shape == (scale_clips.RATE,) and np.abs(samples).max() <= 1.0
        again = scale_clips.cut(recordings, "main", i)[1]
        np.testing.assert_array_equal(samples, again)  # a seed of (set, i): a cache serves any later run
    # Another set, or another clip of the same recording, differs (offset and gain).
    assert not np.array_equal(scale_clips.cut(recordings, "main", 17)[1], scale_clips.cut(recordings, "more", 17)[1])
    assert not np.array_equal(scale_clips.cut(recordings, "main", 17)[1], scale_clips.cut(recordings, "main", 51)[1])


def test_the_manifest_lists_the_first_n_clips_with_their_category(tmp_path: Path):
    path = scale_clips.manifest(tmp_path, "more", 40)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40
    assert [r["class"] for r in rows] == scale_clips.categories_of(40)
    assert rows[18]["uri"] == scale_clips.relative("more", rows[18]["class"], 18)
    assert len({r["uri"] for r in rows}) == 40  # one clip id per row


def test_memory_rows_compare_rss_at_10_and_100_percent_with_the_peak():
    samples = [bench_scale.Sample(t=float(t), lag={}, rss={"labeler": 100.0 + t, "kafka": 300.0},
                                  hwm={"labeler": 150.0 + t, "kafka": 310.0}) for t in range(0, 101, 5)]
    rows = bench_scale.memory_rows(samples, 0.0, 100.0)
    assert rows == [("labeler", 110.0, 200.0, 250.0), ("kafka", 300.0, 300.0, 310.0)]  # services first


def test_percentiles_in_milliseconds():
    p50, p95, p99 = bench_scale.percentile_row(list(range(1, 101)))
    assert p50 == pytest.approx(50.5) and p95 == pytest.approx(95.05) and p99 == pytest.approx(99.01)


def test_assignment_latency_counts_each_clip_once_from_its_first_assignment():
    from auditoryhum.v1 import pipeline_pb2 as pb

    def assignment(clip_id: str, category: str, cluster: int, novel: bool) -> pb.ClipAssignment:
        return pb.ClipAssignment(clip=pb.Clip(clip_id=clip_id, dataset="scale-more", ground_truth=category),
                                 taxonomy="scale", version=1, cluster_id=cluster, novel=novel)

    ingested = {"a": 1_000, "b": 1_000, "c": 1_000, "d": 1_000}
    finals = {"a": 5_000, "b": 5_000, "c": 5_000, "d": 5_000}
    assignments = [(5_040, assignment("a", "fire", 0, False)), (5_080, assignment("b", "fire", 0, False)),
                   (5_020, assignment("c", "rain", 1, True)), (5_060, assignment("d", "rain", 1, False)),
                   (9_000, assignment("a", "fire", 1, False))]  # a replay of a's final label: not counted again
    figures = bench_scale.assignment_figures(assignments, finals, ingested)
    assert figures["assigned"] == 4 and figures["novel"] == 1 and figures["novel_share"] == 0.25
    assert figures["final_to_assignment_ms"][0] == pytest.approx(50.0)  # the median of 20, 40, 60, 80
    assert figures["ingest_to_assignment_ms"][0] == pytest.approx(4_050.0)
    assert figures["agreement"]["nmi"] == pytest.approx(1.0)  # clusters 0/1 are exactly fire/rain
