"""Lineage of a rebuilt taxonomy: which new clusters continue which old ones, and what was born, retired, split or
merged.

Two clusters are compared by the clips they share (a weighted Jaccard of their labels' clip counts) and by their
centroids' cosine; their mean is matched one-to-one (Hungarian, maximal total) and a pair at or above
:data:`MATCH_MIN` is the same cluster: the new one takes the old id, composite label and birth version. Every other
new cluster gets a fresh id (ids are never reused). Splits and merges follow the clips: an old cluster "goes into" a
new one when at least :data:`FLOW_MIN` of its clips do.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy.optimize import linear_sum_assignment

from auditoryhum.taxonomy.index import Vectors, centroids
from auditoryhum.v1 import pipeline_pb2 as pb

# Without shared clips even identical centroids reach only 0.5 · 1: a persisting cluster must share clips.
MATCH_MIN = 0.5
FLOW_MIN = 0.25
OVERLAP_WEIGHT = 0.5


def _counts(cluster: pb.TaxonomyCluster) -> Counter[str]:
    return Counter({lc.label: lc.count for lc in cluster.labels})


def first_version(taxonomy: pb.Taxonomy) -> None:
    """Version 1: every cluster is born now; ids as the builder numbered them."""
    for c in taxonomy.clusters:
        c.born_version = taxonomy.version
    taxonomy.next_cluster_id = max((c.cluster_id for c in taxonomy.clusters), default=-1) + 1


def link(previous: pb.Taxonomy, new: pb.Taxonomy, vectors: Vectors) -> None:
    """Renumber ``new`` (a fresh build, version set) against ``previous`` and record the lineage in it.
    ``vectors`` holds the embedding of every label of both."""
    old, fresh = list(previous.clusters), list(new.clusters)
    lineage = new.lineage
    lineage.previous_version = previous.version
    if not old or not fresh:
        ids = _renumber(new, {}, previous)
        lineage.born.extend(sorted(ids.values()))
        lineage.retired.extend(sorted(c.cluster_id for c in old))
        return
    old_counts, new_counts = [_counts(c) for c in old], [_counts(c) for c in fresh]
    shared = np.array([[sum((a & b).values()) for b in new_counts] for a in old_counts], dtype=np.float64)
    sizes_old = np.array([sum(a.values()) for a in old_counts], dtype=np.float64)
    sizes_new = np.array([sum(b.values()) for b in new_counts], dtype=np.float64)
    overlap = shared / np.maximum(sizes_old[:, None] + sizes_new[None, :] - shared, 1)
    cosine = centroids(previous, vectors) @ centroids(new, vectors).T
    similarity = OVERLAP_WEIGHT * overlap + (1 - OVERLAP_WEIGHT) * cosine
    rows, cols = linear_sum_assignment(-similarity)
    matched = {int(j): int(i) for i, j in zip(rows, cols) if similarity[i, j] >= MATCH_MIN}

    ids = _renumber(new, {j: old[i] for j, i in matched.items()}, previous)
    for j, i in sorted(matched.items(), key=lambda m: ids[m[0]]):
        lineage.persisted.append(pb.ClusterMatch(cluster_id=ids[j], overlap=overlap[i, j], cosine=cosine[i, j],
                                                 similarity=similarity[i, j]))
    lineage.born.extend(sorted(ids[j] for j in range(len(fresh)) if j not in matched))
    lineage.retired.extend(sorted(old[i].cluster_id for i in range(len(old)) if i not in matched.values()))
    goes = shared / np.maximum(sizes_old[:, None], 1) >= FLOW_MIN  # old i's clips go (in part) into new j
    for i in range(len(old)):
        if goes[i].sum() >= 2:
            lineage.splits.append(pb.ClusterSplit(cluster_id=old[i].cluster_id,
                                                  into=sorted(ids[j] for j in np.flatnonzero(goes[i]))))
    for j in range(len(fresh)):
        if goes[:, j].sum() >= 2:
            lineage.merges.append(pb.ClusterMerge(sources=sorted(old[i].cluster_id for i in np.flatnonzero(goes[:, j])),
                                                  cluster_id=ids[j]))
    lineage.splits.sort(key=lambda s: s.cluster_id)
    lineage.merges.sort(key=lambda m: m.cluster_id)


def _renumber(new: pb.Taxonomy, persisting: dict[int, pb.TaxonomyCluster], previous: pb.Taxonomy) -> dict[int, int]:
    """New cluster index → its id: a persisting one's old id, name and birth; else the next unused id."""
    next_id = previous.next_cluster_id or max((c.cluster_id for c in previous.clusters), default=-1) + 1
    ids, renumber = {}, {}
    for j, c in enumerate(new.clusters):
        if j in persisting:
            ancestor = persisting[j]
            ids[j] = ancestor.cluster_id
            c.composite_label, c.born_version = ancestor.composite_label, ancestor.born_version or previous.version
        else:
            ids[j], next_id = next_id, next_id + 1
            c.born_version = new.version
        renumber[c.cluster_id] = ids[j]
        c.cluster_id = ids[j]
    for cc in new.clip_clusters:
        cc.cluster_id = renumber[cc.cluster_id]
    for scene in new.scenes:  # the broad scenes name their clusters by id too
        scene.cluster_ids[:] = [renumber[i] for i in scene.cluster_ids]
    new.next_cluster_id = next_id
    return ids
