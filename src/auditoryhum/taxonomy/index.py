"""Classify: label text → nearest cluster of an existing taxonomy, on a FAISS inner-product index of centroids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import faiss
import numpy as np

from auditoryhum.backends import TextEmbedder
from auditoryhum.v1 import pipeline_pb2 as pb

Vectors = Mapping[str, np.ndarray]  # label → its (unit) text embedding
# The novelty threshold of a taxonomy whose clusters hold one label each. Measured with all-MiniLM-L6-v2 on the
# lincity recordings' YAMNet labels: related labels sit at 0.5 or more from their kind ("police car" 0.69 from
# "vehicle", "frog" 0.61 and "duck" 0.51 from "animal"), unrelated ones below ("speech", "clock", "neigh" 0.35-0.38).
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class Match:
    label: str
    cluster_id: int
    composite_label: str
    similarity: float
    known: bool  # the taxonomy holds the label itself (then it is never novel)


def label_vectors(embedder: TextEmbedder, labels: Sequence[str], known: Vectors | None = None) -> dict[str, np.ndarray]:
    """Each unique label's embedding, embedding only those ``known`` lacks (one model call)."""
    known = known or {}
    missing = sorted({label for label in labels if label not in known})
    vectors = {label: known[label] for label in labels if label in known}
    if missing:
        vectors |= dict(zip(missing, embedder.embed(missing).astype(np.float32)))
    return vectors


def centroids(taxonomy: pb.Taxonomy, vectors: Vectors) -> np.ndarray:
    """One row per cluster, in order: the count-weighted mean of its labels' embeddings, normalised (cosine)."""
    rows = []
    for c in taxonomy.clusters:
        weights = np.array([lc.count for lc in c.labels], dtype=np.float32)
        centroid = weights @ np.stack([vectors[lc.label] for lc in c.labels])
        rows.append(centroid / max(float(np.linalg.norm(centroid)), 1e-12))
    return np.stack(rows).astype(np.float32)


def novelty_threshold(taxonomy: pb.Taxonomy, vectors: Vectors, percentile: float) -> float:
    """How close a new label must be to a centroid to belong, learnt from how the built clusters hold their own
    labels: the ``percentile``-th percentile, over every label of a cluster of several, of its cosine to the centroid
    of the cluster's other labels (leave-one-out: what the cluster would have made of it had it been new). A
    singleton cluster says nothing (its one label is its centroid); with none of several, :data:`FALLBACK_THRESHOLD`.
    """
    sims = []
    for c in taxonomy.clusters:
        if len(c.labels) < 2:
            continue
        x = np.stack([vectors[lc.label] for lc in c.labels])
        weighted = np.array([lc.count for lc in c.labels], dtype=np.float32)[:, None] * x
        for i, v in enumerate(x):
            others = weighted.sum(axis=0) - weighted[i]
            sims.append(float(v @ others) / max(float(np.linalg.norm(others)), 1e-12))
    return float(np.percentile(sims, percentile)) if sims else FALLBACK_THRESHOLD


class TaxonomyIndex:
    """Cluster centroids are the count-weighted means of their labels' embeddings (cosine, so normalised).

    A label the taxonomy already holds maps to its own cluster; any other goes to the most similar centroid.
    """

    def __init__(self, taxonomy: pb.Taxonomy, embedder: TextEmbedder, vectors: Vectors | None = None):
        if not taxonomy.clusters:
            raise ValueError(f"taxonomy of {taxonomy.dataset!r} has no clusters")
        self.embedder = embedder
        self.clusters = list(taxonomy.clusters)
        self.known = {lc.label: i for i, c in enumerate(self.clusters) for lc in c.labels}
        self.centroids = centroids(taxonomy, label_vectors(embedder, list(self.known), vectors))
        self.index = faiss.IndexFlatIP(self.centroids.shape[1])
        self.index.add(self.centroids)

    def classify(self, labels: Sequence[str], vectors: Vectors | None = None) -> list[Match]:
        """``vectors``: embeddings already at hand (e.g. a batch's labels, embedded in one call)."""
        if not labels:
            return []
        got = label_vectors(self.embedder, labels, vectors)
        x = np.stack([got[label] for label in labels]).astype(np.float32)
        similarity, nearest = self.index.search(x, 1)
        matches = []
        for label, v, sim, idx in zip(labels, x, similarity[:, 0], nearest[:, 0]):
            known = label in self.known
            i = self.known[label] if known else int(idx)
            sim = float(self.centroids[i] @ v) if known else float(sim)
            matches.append(Match(label, self.clusters[i].cluster_id, self.clusters[i].composite_label, sim, known))
        return matches
