"""From a table of unique labels with clip counts to a named taxonomy (the clusterer's core)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from auditoryhum.backends import TextEmbedder
from auditoryhum.taxonomy.naming import TextGenerator, clean_name, cluster_prompt, frequent_labels_name, ranked
from auditoryhum.taxonomy.selection import select_k
from auditoryhum.v1 import pipeline_pb2 as pb


class TaxonomyBuilder:
    def __init__(self, embedder: TextEmbedder, *, k_min: int = 2, k_max: int = 64, lam: float = 2.0,
                 algorithm: str = "kmeans", seed: int = 0, namer: TextGenerator | None = None):
        self.embedder, self.namer = embedder, namer
        self.k_min, self.k_max, self.lam, self.algorithm, self.seed = k_min, k_max, lam, algorithm, seed

    def build(self, dataset: str, counts: Mapping[str, int]) -> pb.Taxonomy:
        labels = sorted(counts)
        weights = np.array([counts[label] for label in labels], dtype=np.float64)
        taxonomy = pb.Taxonomy(dataset=dataset, penalty_lambda=self.lam, unique_labels=len(labels),
                               clips=int(weights.sum()), algorithm=self.algorithm,
                               embedder_id=self.embedder.model_id)
        taxonomy.created_at.GetCurrentTime()
        if not labels:
            return taxonomy
        selection = select_k(self.embedder.embed(labels), weights, k_min=self.k_min, k_max=self.k_max,
                             lam=self.lam, algorithm=self.algorithm, seed=self.seed)
        taxonomy.k = selection.k
        taxonomy.curve.extend(pb.SelectionPoint(k=p.k, silhouette=p.silhouette, adjusted=p.adjusted)
                              for p in selection.curve)
        chosen = next((p for p in selection.curve if p.k == selection.k), None)
        if chosen is not None:
            taxonomy.silhouette, taxonomy.adjusted_silhouette = chosen.silhouette, chosen.adjusted
        members: dict[int, dict[str, int]] = {}
        for label, cluster in zip(labels, selection.labels):
            members.setdefault(int(cluster), {})[label] = counts[label]
        # Clusters are numbered by size, largest first, so ids are stable across identical inputs.
        ordered = sorted(members.values(), key=lambda m: (-sum(m.values()), frequent_labels_name(m)))
        names = self._names(ordered)
        for cluster_id, (member_counts, name) in enumerate(zip(ordered, names)):
            taxonomy.clusters.append(pb.TaxonomyCluster(
                cluster_id=cluster_id, composite_label=name, size=sum(member_counts.values()),
                labels=[pb.LabelCount(label=l, count=c) for l, c in ranked(member_counts)]))
        return taxonomy

    def _names(self, clusters: list[dict[str, int]]) -> list[str]:
        offline = [frequent_labels_name(m) for m in clusters]
        if self.namer is None:
            return offline
        answers = self.namer.generate([cluster_prompt(m) for m in clusters])
        return [clean_name(a) or fallback for a, fallback in zip(answers, offline)]
