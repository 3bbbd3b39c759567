"""Clustering of unique label embeddings into k groups.

Every algorithm has the signature ``(x, k, weights, *, seed) -> labels`` where
``x`` holds U unique-label embeddings, ``weights`` their clip counts, and the
returned labels are contiguous ids ``0..k'-1`` (``k' <= k``) for each row.
"""

from __future__ import annotations

from typing import Protocol

import faiss
import numpy as np
from sklearn.cluster import AgglomerativeClustering

from .silhouette import unit_rows

__all__ = ["ALGORITHMS", "Clusterer", "kmeans", "ward"]


class Clusterer(Protocol):
    def __call__(
        self, x: np.ndarray, k: int, weights: np.ndarray, *, seed: int = 0
    ) -> np.ndarray: ...


def _check_k(k: int, u: int) -> None:
    if not 1 <= k <= u:
        raise ValueError(f"k={k} must be between 1 and the number of rows ({u})")


def kmeans(
    x: np.ndarray,
    k: int,
    weights: np.ndarray,
    *,
    seed: int = 0,
    niter: int = 25,
    nredo: int = 1,
) -> np.ndarray:
    """Weighted spherical k-means (faiss) on L2-normalised rows.

    Spherical k-means maximises within-cluster cosine, matching the cosine
    silhouette used to score it. Clip counts enter as sample weights, so a
    label seen 200 times pulls its centroid like 200 duplicates would.
    Deterministic for a given ``seed`` (and thread count). faiss trains on a
    subsample of at most 256·k rows (weights kept), which bounds the cost per
    k at large U; every row is then assigned to its nearest centroid. Ids are
    relabelled contiguously in case a centroid ends up with no rows.
    """
    xn = unit_rows(x, np.float32)
    _check_k(k, len(xn))
    km = faiss.Kmeans(
        xn.shape[1],
        int(k),
        niter=niter,
        nredo=nredo,
        seed=seed,
        spherical=True,
        min_points_per_centroid=1,  # silence faiss' "too few points" warning
    )
    km.train(xn, weights=np.ascontiguousarray(weights, dtype=np.float32))
    _, assign = km.assign(xn)
    return np.unique(assign, return_inverse=True)[1]


def ward(x: np.ndarray, k: int, weights: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Ward agglomerative clustering of the unique, L2-normalised rows.

    scikit-learn's ward takes no sample weights, so ``weights`` are ignored:
    like the paper, ward groups the distinct labels themselves. (Expanding
    duplicates would be exactly weighted ward, as copies merge first at
    height 0, but only when the expanded set is small; switching behaviour
    with data size would make results jump, so we never do.) Unit rows make
    squared Euclidean distance ``2 − 2·cos``, so ward's variance criterion is
    a cosine criterion. Deterministic, so ``seed`` is unused; memory is O(U²).
    """
    xn = unit_rows(x, np.float64)
    _check_k(k, len(xn))
    return AgglomerativeClustering(n_clusters=int(k), linkage="ward").fit_predict(xn)


ALGORITHMS: dict[str, Clusterer] = {"kmeans": kmeans, "ward": ward}
