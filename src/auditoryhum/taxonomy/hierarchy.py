"""Broad scenes over fine clusters: the taxonomy's second level.

BERTopic's ``hierarchical_topics`` merges topics by clustering their embeddings; here each fine cluster becomes one
row, its centroid (the clip-weighted mean direction of the rows it was clustered from: unique-label embeddings, or
clips' class vectors), and those rows are grouped by the algorithm that made the fine clusters (k-means weighted by
the clusters' clip counts, or Ward; the reference protocol's Ward), for every scene count s = 2 .. ⌈√k⌉ (a scene
holds a few clusters, not one or two). The count is the one with the highest silhouette of the centroids, each
cluster counted once (the ``plateau`` criterion's label silhouette L, one level up; ties: fewer scenes). Neither
k criterion carries over as it is, measured on families of labels (tests/test_taxonomy_hierarchy.py): with k ≈ 10
rows ``plateau``'s band of two standard errors (≈ 0.06) admits 2 scenes where there are 3 families, and
``linear`` charges λ/k = 0.2 per scene, so it always picks 2.

With fewer than ``MIN_CLUSTERS`` clusters there is nothing to group (2 scenes of 1 cluster each would only repeat
the clusters). Each scene is named like a cluster, from the labels of its clusters. The fine clusters are not
touched: scenes are computed after them, from them.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from auditoryhum.taxonomy.cluster import ALGORITHMS
from auditoryhum.taxonomy.naming import ranked
from auditoryhum.taxonomy.selection import CurvePoint, Selection
from auditoryhum.taxonomy.silhouette import label_silhouette, silhouette, unit_rows
from auditoryhum.v1 import pipeline_pb2 as pb

MIN_CLUSTERS = 4
MAX_SCENE_LABELS = 50  # what the naming prompt shows; a scene's full label list is its clusters'


def scene_k_max(k: int) -> int:
    """Most scenes tried over ``k`` fine clusters."""
    return max(2, math.ceil(math.sqrt(k)))


def no_scenes_note(k: int) -> str:
    """Why a taxonomy of ``k`` clusters has no scenes; empty when it can have them."""
    return "" if k >= MIN_CLUSTERS else f"{k} clusters: broad scenes need at least {MIN_CLUSTERS}"


def centroids(x: np.ndarray, weights: np.ndarray, cluster_of_row: np.ndarray, k: int) -> tuple[np.ndarray,
                                                                                                np.ndarray]:
    """Each cluster's unit centroid (weighted mean of its unit rows) and its weight (clips), clusters 0..k-1."""
    xn = unit_rows(x)
    w = np.asarray(weights, dtype=np.float64)
    sums = np.zeros((k, xn.shape[1]))
    np.add.at(sums, cluster_of_row, w[:, None] * xn)
    return unit_rows(sums), np.bincount(cluster_of_row, weights=w, minlength=k)


def choose_scenes(centres: np.ndarray, sizes: np.ndarray, *, algorithm: str, seed: int = 0,
                  nredo: int = 4) -> Selection | None:
    """Partitions of the ``k`` cluster centroids into 2 .. ``scene_k_max(k)`` scenes; the one with the highest
    centroid silhouette (each cluster once). The curve's ``silhouette`` is clip-weighted, ``adjusted`` the ranked
    one; None if no partition had two scenes (k-means on duplicate centroids). ``nredo`` k-means restarts: k rows are cheap, and one seeding can leave a family of clusters split.
    One thread: on so few rows faiss' OpenMP threads only spin when the cores are busy (10 rows: 7 s with two
    threads on a loaded machine, 1 s with one)."""
    k = len(centres)
    if k < MIN_CLUSTERS:
        raise ValueError(no_scenes_note(k))
    cluster = ALGORITHMS["ward" if algorithm not in ALGORITHMS else algorithm]
    x32 = centres.astype(np.float32)
    points: list[tuple[CurvePoint, np.ndarray]] = []
    for s in range(2, scene_k_max(k) + 1):
        with threadpool_limits(1):
            labels = cluster(x32, s, sizes, seed=seed, nredo=nredo)
        if labels.max() < 1:
            continue
        weighted = silhouette(centres, labels, sizes, seed=seed).value
        once, stderr = label_silhouette(centres, labels, seed=seed)
        points.append((CurvePoint(int(labels.max()) + 1, weighted, once, 0.0, once, stderr), labels))
    if not points:
        return None
    best, labels = max(reversed(points), key=lambda p: p[0].adjusted)  # reversed: ties go to fewer scenes
    raw = max(reversed(points), key=lambda p: p[0].silhouette)[0]
    return Selection(best.k, labels, [p for p, _ in points], 0.0, algorithm, raw.k, "centroid silhouette")


def add_scenes(taxonomy: pb.Taxonomy, selection: Selection, names: Callable[[list[Counter[str]]], list[str]]) -> None:
    """Write the scenes ``selection`` found over ``taxonomy.clusters`` (row i: cluster i) into the taxonomy:
    scenes numbered by size, largest first (ties by name), each cluster's ``scene_id``, the scene curve."""
    clusters = list(taxonomy.clusters)
    groups: dict[int, list[pb.TaxonomyCluster]] = {}
    for cluster, scene in zip(clusters, selection.labels):
        groups.setdefault(int(scene), []).append(cluster)
    merged = {s: sum((Counter({lc.label: lc.count for lc in c.labels}) for c in members), Counter())
              for s, members in groups.items()}
    named = dict(zip(groups, names([merged[s] for s in groups])))
    order = sorted(groups, key=lambda s: (-sum(c.size for c in groups[s]), named[s]))
    for scene_id, s in enumerate(order):
        members = sorted(groups[s], key=lambda c: c.cluster_id)
        for c in members:
            c.scene_id = scene_id
        taxonomy.scenes.append(pb.Scene(
            scene_id=scene_id, composite_label=named[s], cluster_ids=[c.cluster_id for c in members],
            size=sum(c.size for c in members),
            labels=[pb.LabelCount(label=l, count=n) for l, n in ranked(merged[s])[:MAX_SCENE_LABELS]]))
    taxonomy.scene_curve.extend(pb.SelectionPoint(k=p.k, silhouette=p.silhouette, adjusted=p.adjusted)
                                for p in selection.curve)
    chosen = next((p for p in selection.curve if p.k == selection.k), None)
    taxonomy.scene_silhouette = chosen.silhouette if chosen is not None else 0.0
