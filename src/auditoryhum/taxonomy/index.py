"""Classify: label text → nearest cluster of an existing taxonomy, on a FAISS inner-product index of centroids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import faiss
import numpy as np

from auditoryhum.backends import TextEmbedder
from auditoryhum.v1 import pipeline_pb2 as pb


@dataclass(frozen=True)
class Match:
    label: str
    cluster_id: int
    composite_label: str
    similarity: float


class TaxonomyIndex:
    """Cluster centroids are the count-weighted means of their labels' embeddings (cosine, so normalised).

    A label the taxonomy already holds maps to its own cluster; any other goes to the most similar centroid.
    """

    def __init__(self, taxonomy: pb.Taxonomy, embedder: TextEmbedder):
        if not taxonomy.clusters:
            raise ValueError(f"taxonomy of {taxonomy.dataset!r} has no clusters")
        self.embedder = embedder
        self.clusters = list(taxonomy.clusters)
        self.known = {lc.label: i for i, c in enumerate(self.clusters) for lc in c.labels}
        centroids = []
        for c in self.clusters:
            vectors = embedder.embed([lc.label for lc in c.labels])
            weights = np.array([lc.count for lc in c.labels], dtype=np.float32)
            centroid = weights @ vectors
            centroids.append(centroid / max(float(np.linalg.norm(centroid)), 1e-12))
        self.centroids = np.stack(centroids).astype(np.float32)
        self.index = faiss.IndexFlatIP(self.centroids.shape[1])
        self.index.add(self.centroids)

    def classify(self, labels: Sequence[str]) -> list[Match]:
        if not labels:
            return []
        vectors = self.embedder.embed(list(labels)).astype(np.float32)
        similarity, nearest = self.index.search(vectors, 1)
        matches = []
        for label, v, sim, idx in zip(labels, vectors, similarity[:, 0], nearest[:, 0]):
            i = self.known.get(label, int(idx))
            sim = float(self.centroids[i] @ v) if label in self.known else float(sim)
            matches.append(Match(label, self.clusters[i].cluster_id, self.clusters[i].composite_label, sim))
        return matches
