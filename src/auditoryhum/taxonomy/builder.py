"""From final labels to a named taxonomy (the clusterer's core), in one of two representations.

- ``labels`` (default): each unique label's text embedding, weighted by its clip count.
- ``class-vector`` (the paper's newer one): each clip is the vector of cosines between its audio embedding and
  every unique label's text embedding; clips are clustered, so one label may fall in several clusters.

and one of two protocols: ``default`` (:func:`~auditoryhum.taxonomy.selection.select_k`: k-means or Ward on unique
labels, duplicate-weighted cosine silhouette) or ``reference`` (:func:`~auditoryhum.taxonomy.reference.
reference_select_k`: the authors' Ward and euclidean silhouette on every clip, computed on unique labels).

Over the chosen clusters, broad scenes (:mod:`~auditoryhum.taxonomy.hierarchy`): the clusters' centroids grouped by
the same algorithm, named by the same prompt; the fine clusters stay as chosen.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from auditoryhum.backends import TextEmbedder
from auditoryhum.taxonomy import hierarchy
from auditoryhum.taxonomy.naming import TextGenerator, clean_name, cluster_prompt, frequent_labels_name, ranked
from auditoryhum.taxonomy.reference import ALGORITHM as REFERENCE_ALGORITHM
from auditoryhum.taxonomy.reference import reference_select_k
from auditoryhum.taxonomy.selection import CRITERIA, DEFAULT_CRITERION, Selection, select_k
from auditoryhum.v1 import pipeline_pb2 as pb

REPRESENTATIONS = ("labels", "class-vector")
PROTOCOLS = ("default", "reference")


class TaxonomyBuilder:
    def __init__(self, embedder: TextEmbedder, *, k_min: int = 2, k_max: int | None = 64, lam: float = 2.0,
                 algorithm: str = "kmeans", seed: int = 0, namer: TextGenerator | None = None,
                 representation: str = "labels", protocol: str = "default", criterion: str = DEFAULT_CRITERION):
        """``k_max`` None: up to the unique count (the reference protocol's sweep), else ``auto_k_max``.
        ``criterion`` chooses k in the default protocol; the reference protocol always uses the paper's."""
        if representation not in REPRESENTATIONS:
            raise ValueError(f"unknown representation {representation!r}; known: {REPRESENTATIONS}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
        if criterion not in CRITERIA:
            raise ValueError(f"unknown k criterion {criterion!r}; known: {list(CRITERIA)}")
        if protocol == "reference":
            algorithm = REFERENCE_ALGORITHM
        self.embedder, self.namer, self.representation, self.protocol = embedder, namer, representation, protocol
        self.k_min, self.k_max, self.lam, self.algorithm, self.seed = k_min, k_max, lam, algorithm, seed
        self.criterion = criterion

    def build(self, dataset: str, counts: Mapping[str, int]) -> pb.Taxonomy:
        """Cluster the unique labels, each weighted by its number of clips."""
        labels = sorted(counts)
        weights = np.array([counts[label] for label in labels], dtype=np.float64)
        taxonomy = self._empty(dataset, len(labels), int(weights.sum()), "labels")
        if not labels:
            return taxonomy
        x = self.embedder.embed(labels)
        selection = self._select(x, weights)
        members: dict[int, Counter[str]] = {}
        for label, cluster in zip(labels, selection.labels):
            members.setdefault(int(cluster), Counter())[label] = counts[label]
        return self._assemble(taxonomy, selection, members, x, weights)

    def build_class_vectors(self, dataset: str, clip_ids: Sequence[str], labels: Sequence[str],
                            audio: np.ndarray) -> pb.Taxonomy:
        """Cluster clips by their class vectors: cos(audio embedding, every unique label's text embedding)."""
        unique = sorted(set(labels))
        taxonomy = self._empty(dataset, len(unique), len(labels), "class-vector")
        if not unique:
            return taxonomy
        audio = audio / np.maximum(np.linalg.norm(audio, axis=1, keepdims=True), 1e-12)
        vectors = audio.astype(np.float32) @ self.embedder.embed(unique).T
        selection = self._select(vectors, np.ones(len(labels)))
        members: dict[int, Counter[str]] = {}
        for label, cluster in zip(labels, selection.labels):
            members.setdefault(int(cluster), Counter())[label] += 1
        self._assemble(taxonomy, selection, members, vectors, np.ones(len(labels)))
        renumber = {old: new for new, old in enumerate(self._order(members))}
        taxonomy.clip_clusters.extend(pb.ClipCluster(clip_id=c, cluster_id=renumber[int(k)])
                                      for c, k in zip(clip_ids, selection.labels))
        return taxonomy

    def _empty(self, dataset: str, unique: int, clips: int, representation: str) -> pb.Taxonomy:
        taxonomy = pb.Taxonomy(dataset=dataset, penalty_lambda=self.lam, unique_labels=unique, clips=clips,
                               algorithm=self.algorithm, embedder_id=self.embedder.model_id,
                               representation=representation,
                               k_criterion="linear" if self.protocol == "reference" else self.criterion)
        taxonomy.created_at.GetCurrentTime()
        return taxonomy

    def _select(self, x: np.ndarray, weights: np.ndarray) -> Selection:
        if self.protocol == "reference":
            return reference_select_k(x, weights, k_min=self.k_min, k_max=self.k_max, lam=self.lam)
        return select_k(x, weights, k_min=self.k_min, k_max=self.k_max, lam=self.lam, algorithm=self.algorithm,
                        criterion=self.criterion, seed=self.seed)

    @staticmethod
    def _order(members: dict[int, Counter[str]]) -> list[int]:
        # Clusters are numbered by size, largest first, so ids are stable across identical inputs.
        return sorted(members, key=lambda k: (-sum(members[k].values()), frequent_labels_name(members[k])))

    def _assemble(self, taxonomy: pb.Taxonomy, selection: Selection, members: dict[int, Counter[str]],
                  x: np.ndarray, weights: np.ndarray) -> pb.Taxonomy:
        taxonomy.k = selection.k
        taxonomy.curve.extend(pb.SelectionPoint(k=p.k, silhouette=p.silhouette, adjusted=p.adjusted)
                              for p in selection.curve)
        chosen = next((p for p in selection.curve if p.k == selection.k), None)
        if chosen is not None:
            taxonomy.silhouette, taxonomy.adjusted_silhouette = chosen.silhouette, chosen.adjusted
        order = self._order(members)
        ordered = [members[k] for k in order]
        for cluster_id, (counts, name) in enumerate(zip(ordered, self._names(ordered))):
            taxonomy.clusters.append(pb.TaxonomyCluster(
                cluster_id=cluster_id, composite_label=name, size=sum(counts.values()),
                labels=[pb.LabelCount(label=l, count=c) for l, c in ranked(counts)]))
        renumber = {old: new for new, old in enumerate(order)}
        self._scenes(taxonomy, x, weights, np.array([renumber[int(k)] for k in selection.labels]))
        return taxonomy

    def _scenes(self, taxonomy: pb.Taxonomy, x: np.ndarray, weights: np.ndarray, cluster_of_row: np.ndarray) -> None:
        """Broad scenes over the clusters: their centroids, grouped by this taxonomy's algorithm."""
        k = len(taxonomy.clusters)
        if note := hierarchy.no_scenes_note(k):
            taxonomy.scenes_note = note
            return
        centres, sizes = hierarchy.centroids(x, weights, cluster_of_row, k)
        selection = hierarchy.choose_scenes(centres, sizes, algorithm=self.algorithm, seed=self.seed)
        if selection is None:
            taxonomy.scenes_note = "the clusters' centroids do not split into two scenes"
            return
        # Three labels, not two: a scene's name should reach past its largest cluster's.
        hierarchy.add_scenes(taxonomy, selection, lambda groups: self._names(groups, top=3))

    def _names(self, clusters: list[Counter[str]], top: int = 2) -> list[str]:
        offline = [frequent_labels_name(m, top) for m in clusters]
        if self.namer is None:
            return offline
        answers = self.namer.generate([cluster_prompt(m) for m in clusters])
        return [clean_name(a) or fallback for a, fallback in zip(answers, offline)]


def labels_in_several_clusters(taxonomy: pb.Taxonomy) -> dict[str, list[int]]:
    """Labels whose clips fall in more than one cluster (only possible with the class-vector representation)."""
    where: dict[str, list[int]] = {}
    for c in taxonomy.clusters:
        for lc in c.labels:
            where.setdefault(lc.label, []).append(c.cluster_id)
    return {label: ids for label, ids in sorted(where.items()) if len(ids) > 1}
