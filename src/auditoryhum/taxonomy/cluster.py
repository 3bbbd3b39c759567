"""Clustering of unique label embeddings into k groups.

Every algorithm has the signature ``(x, k, weights, *, seed) -> labels`` where
``x`` holds U unique-label embeddings, ``weights`` their clip counts, and the
returned labels are contiguous ids ``0..k'-1`` (``k' <= k``) for each row.
"""

from __future__ import annotations

from typing import Protocol

import faiss
import numpy as np
import scipy.sparse as sp
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


def _objective(sums: np.ndarray) -> float:
    """Weighted spherical k-means objective Σ_c ‖S_c‖ = Σ_i w_i cos(x_i, μ_c)."""
    return float(np.sqrt(np.einsum("ij,ij->i", sums, sums)).sum())


def _best_transfers(
    x: np.ndarray, labels: np.ndarray, w: np.ndarray, sums: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best target cluster of each row and the exact objective change of moving there.

    Unlike Lloyd's nearest-centroid rule this accounts for the row's own pull
    on its centroid: ‖S ± w x‖ − ‖S‖ = (w² ± 2w x·S) / (‖S ± w x‖ + ‖S‖),
    written in that cancellation-free form (float32 suffices for the U × k
    part). Rows alone in their cluster get gain −inf: they stay.
    """
    norm = np.sqrt(np.einsum("ij,ij->i", sums, sums))
    rows = np.arange(len(x))
    g = x @ sums.T.astype(np.float32)  # x·S_b, then turned into the gain of joining b
    own_dot = g[rows, labels].astype(np.float64)
    w32 = w.astype(np.float32)[:, None]
    g *= 2 * w32
    g += w32 * w32
    denom = g + (norm * norm).astype(np.float32)
    np.sqrt(denom, out=denom)
    denom += norm.astype(np.float32)
    g /= denom
    g[rows, labels] = -np.inf
    target = g.argmax(axis=1)
    n_own = norm[labels]
    d_out = w * w - 2 * w * own_dot
    loss = d_out / (np.sqrt(np.maximum(n_own * n_own + d_out, 0.0)) + n_own)
    gain = g[rows, target] + loss
    gain[sizes[labels] <= 1] = -np.inf
    return target, gain


def _moved_sums(
    x: np.ndarray, w: np.ndarray, sums: np.ndarray, rows: np.ndarray, src: np.ndarray, dst: np.ndarray
) -> np.ndarray:
    """Cluster sums after moving ``rows`` from ``src`` to ``dst`` clusters (O(moves·d))."""
    wx = w[rows, None] * x[rows].astype(np.float64)
    out = sums.copy()
    np.add.at(out, src, -wx)
    np.add.at(out, dst, wx)
    return out


def _refine(x: np.ndarray, labels: np.ndarray, w: np.ndarray, max_rounds: int) -> np.ndarray:
    """Hartigan-style transfer refinement of a weighted spherical k-means result.

    Lloyd iterations get trapped when a frequent label sits in the wrong
    cluster: its own weight drags that centroid towards it, so it stays
    nearest. Here every row moves to the cluster with the best exact gain.
    A round first tries all improving moves at once and keeps them if the
    objective rises; otherwise it applies the best moves that touch each
    cluster at most once, whose gains do not interact and so are exact.
    Never empties a cluster; stops when no move gains or after max_rounds.
    """
    k = int(labels.max()) + 1
    onehot = sp.csr_matrix((w, (labels, np.arange(len(x)))), shape=(k, len(x)))
    sums = np.asarray(onehot @ x.astype(np.float64))
    sizes = np.bincount(labels, minlength=k)
    objective = _objective(sums)
    for _ in range(max_rounds):
        target, gain = _best_transfers(x, labels, w, sums, sizes)
        movers = np.flatnonzero(gain > 1e-5 * w)
        if len(movers) == 0:
            break
        src, dst = labels[movers], target[movers]
        new_sizes = sizes - np.bincount(src, minlength=k) + np.bincount(dst, minlength=k)
        if new_sizes.min() > 0:
            new_sums = _moved_sums(x, w, sums, movers, src, dst)
            new_objective = _objective(new_sums)
            if new_objective > objective:
                labels = labels.copy()
                labels[movers] = dst
                sums, sizes, objective = new_sums, new_sizes, new_objective
                continue
        touched = np.zeros(k, dtype=bool)
        keep = []
        for j in np.argsort(-gain[movers]):
            if not (touched[src[j]] or touched[dst[j]]):
                touched[src[j]] = touched[dst[j]] = True
                keep.append(j)
        keep = np.asarray(keep)
        sums = _moved_sums(x, w, sums, movers[keep], src[keep], dst[keep])
        sizes = sizes - np.bincount(src[keep], minlength=k) + np.bincount(dst[keep], minlength=k)
        labels = labels.copy()
        labels[movers[keep]] = dst[keep]
        objective = _objective(sums)
    return labels


def kmeans(
    x: np.ndarray,
    k: int,
    weights: np.ndarray,
    *,
    seed: int = 0,
    niter: int = 25,
    nredo: int = 1,
    refine_rounds: int = 30,
) -> np.ndarray:
    """Weighted spherical k-means (faiss) on L2-normalised rows, then refined.

    Spherical k-means maximises within-cluster cosine, matching the cosine
    silhouette used to score it. Clip counts enter as sample weights, so a
    label seen 200 times pulls its centroid like 200 duplicates would.
    faiss trains on a subsample of at most 256·k rows (weights kept), which
    bounds the cost per k at large U; every row is then assigned to its
    nearest centroid and the partition is improved by up to ``refine_rounds``
    rounds of exact transfer moves (see :func:`_refine`; 0 disables), which
    escape the local optima Lloyd falls into under Zipf-like weights.
    Deterministic for a given ``seed`` (and thread count). Labels are
    contiguous ``0..k'-1``; k' < k only if a centroid attracted no rows.
    """
    xn = unit_rows(x, np.float32)
    _check_k(k, len(xn))
    w = np.asarray(weights, dtype=np.float64)
    km = faiss.Kmeans(
        xn.shape[1],
        int(k),
        niter=niter,
        nredo=nredo,
        seed=seed,
        spherical=True,
        min_points_per_centroid=1,  # silence faiss' "too few points" warning
    )
    km.train(xn, weights=w.astype(np.float32))
    _, assign = km.assign(xn)
    labels = np.unique(assign, return_inverse=True)[1]
    return _refine(xn, labels, w, refine_rounds)


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
