"""Clustering of unique label embeddings into k groups.

Every algorithm has the signature ``(x, k, weights, *, seed, nredo) -> labels`` where
``x`` holds U unique-label embeddings, ``weights`` their clip counts, and the
returned labels are contiguous ids ``0..k'-1`` (``k' <= k``) for each row.
"""

from __future__ import annotations

from typing import Protocol

import faiss
import numpy as np
import scipy.sparse as sp
from sklearn.cluster import AgglomerativeClustering, kmeans_plusplus

from .silhouette import unit_rows

__all__ = ["ALGORITHMS", "Clusterer", "kmeans", "ward"]


class Clusterer(Protocol):
    def __call__(
        self, x: np.ndarray, k: int, weights: np.ndarray, *, seed: int = 0, nredo: int = 1
    ) -> np.ndarray: ...


def _check_k(k: int, u: int) -> None:
    if not 1 <= k <= u:
        raise ValueError(f"k={k} must be between 1 and the number of rows ({u})")


_INIT_ROWS_PER_CLUSTER = 64
"""Rows sampled per cluster for k-means++ seeding: seeding is O(n·k·d·log k)."""


def _objective(sums: np.ndarray) -> float:
    """Weighted spherical k-means objective Σ_c ‖S_c‖ = Σ_i w_i cos(x_i, μ_c)."""
    return float(np.sqrt(np.einsum("ij,ij->i", sums, sums)).sum())


def _transfer_delta(
    x: np.ndarray, w: np.ndarray, src: np.ndarray, dst: np.ndarray, k: int
) -> np.ndarray:
    """Change of the (float64) cluster sums when rows ``x`` move from ``src`` to ``dst``."""
    n = len(x)
    coo = (np.r_[w, -w], (np.r_[dst, src], np.r_[np.arange(n), np.arange(n)]))
    return np.asarray(sp.csr_matrix(coo, shape=(k, n)) @ x.astype(np.float64))


def _best_transfers(
    dots: np.ndarray, labels: np.ndarray, w: np.ndarray, norm: np.ndarray, sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best target cluster of each row and the exact objective change of moving there.

    Unlike Lloyd's nearest-centroid rule this accounts for the row's own pull
    on its centroid: ‖S ± w x‖ − ‖S‖ = (w² ± 2w x·S) / (‖S ± w x‖ + ‖S‖),
    written in that cancellation-free form (float32 suffices for the k × U
    part). ``dots`` is S_b·x_i (k × U), ``norm`` is ‖S_b‖. Rows alone in
    their cluster get gain −inf: they stay.
    """
    cols = np.arange(dots.shape[1])
    own_dot = dots[labels, cols].astype(np.float64)
    w32 = w.astype(np.float32)
    g = dots * (2 * w32)  # becomes the gain of joining each cluster
    g += w32 * w32
    denom = g + (norm * norm).astype(np.float32)[:, None]
    np.sqrt(denom, out=denom)
    denom += norm.astype(np.float32)[:, None]
    g /= denom
    g[labels, cols] = -np.inf
    target = g.argmax(axis=0)
    n_own = norm[labels]
    d_out = w * w - 2 * w * own_dot
    loss = d_out / (np.sqrt(np.maximum(n_own * n_own + d_out, 0.0)) + n_own)
    gain = g[target, cols] + loss
    gain[sizes[labels] <= 1] = -np.inf
    return target, gain


def _non_interacting(gain: np.ndarray, src: np.ndarray, dst: np.ndarray, k: int) -> np.ndarray:
    """Indices of the best moves such that each cluster is touched at most once."""
    touched = np.zeros(k, dtype=bool)
    keep = []
    for j in np.argsort(-gain):
        if not (touched[src[j]] or touched[dst[j]]):
            touched[src[j]] = touched[dst[j]] = True
            keep.append(j)
    return np.asarray(keep, dtype=np.intp)


def _refine(
    x: np.ndarray, labels: np.ndarray, w: np.ndarray, max_rounds: int
) -> tuple[np.ndarray, float]:
    """Hartigan-style transfer refinement of a weighted spherical k-means result.

    Lloyd iterations get trapped when a frequent label sits in the wrong
    cluster: its own weight drags that centroid towards it, so it stays
    nearest. Here every row moves to the cluster with the best exact gain.
    A round first tries all improving moves at once and keeps them if the
    objective rises; otherwise it applies the best moves that touch each
    cluster at most once, whose gains do not interact and so are exact.
    Only the dot products of changed clusters are recomputed. Never empties
    a cluster; stops when no move gains or after ``max_rounds``. Returns the
    labels and their objective.
    """
    k = int(labels.max()) + 1
    labels = labels.copy()
    # float32 accumulation is enough for the starting sums: acceptance only
    # compares objectives that share them; the moves are added in float64.
    onehot = sp.csr_matrix((w.astype(np.float32), (labels, np.arange(len(x)))), shape=(k, len(x)))
    sums = np.asarray(onehot @ x, dtype=np.float64)
    sizes = np.bincount(labels, minlength=k)
    objective = _objective(sums)
    dots = sums.astype(np.float32) @ x.T
    for _ in range(max_rounds):
        norm = np.sqrt(np.einsum("ij,ij->i", sums, sums))
        target, gain = _best_transfers(dots, labels, w, norm, sizes)
        movers = np.flatnonzero(gain > 1e-5 * w)
        if len(movers) == 0:
            break
        src, dst = labels[movers], target[movers]
        moved = sizes - np.bincount(src, minlength=k) + np.bincount(dst, minlength=k)
        delta = _transfer_delta(x[movers], w[movers], src, dst, k)
        if moved.min() == 0 or _objective(sums + delta) <= objective:
            keep = _non_interacting(gain[movers], src, dst, k)
            movers, src, dst = movers[keep], src[keep], dst[keep]
            moved = sizes - np.bincount(src, minlength=k) + np.bincount(dst, minlength=k)
            delta = _transfer_delta(x[movers], w[movers], src, dst, k)
        labels[movers] = dst
        sums, sizes = sums + delta, moved
        objective = _objective(sums)
        changed = np.union1d(src, dst)
        dots[changed] = sums[changed].astype(np.float32) @ x.T
    return labels, objective


def kmeans(
    x: np.ndarray,
    k: int,
    weights: np.ndarray,
    *,
    seed: int = 0,
    niter: int = 25,
    nredo: int = 1,
    refine_rounds: int = 10,
) -> np.ndarray:
    """Weighted spherical k-means (faiss) on L2-normalised rows, then refined.

    Spherical k-means maximises within-cluster cosine, matching the cosine
    silhouette used to score it. Clip counts enter as sample weights, so a
    label seen 200 times pulls its centroid like 200 duplicates would.
    Centres are seeded by scikit-learn's greedy k-means++ on a random
    64·k-row subsample: faiss' uniform random seeding leaves some
    well-separated groups without a centre, a merge that no later move
    undoes. Seeding ignores the weights on purpose: weighted D² sampling
    keeps re-seeding groups that hold a very frequent label and starves the
    others (measured: lower objective and silhouette near the true k).
    faiss then runs Lloyd on a subsample of at most 256·k rows (weights
    kept), which bounds the cost per k at large U; every row is
    assigned to its nearest centroid and the partition is improved by up to
    ``refine_rounds`` rounds of exact transfer moves (see :func:`_refine`;
    0 disables), which escape the traps Lloyd falls into under Zipf weights.
    ``nredo`` restarts (seeds ``seed .. seed+nredo-1``) keep the refined
    partition with the best objective. Deterministic for a given ``seed``
    (and thread count). Labels are contiguous ``0..k'-1``; k' < k only if a
    centroid attracted no rows.
    """
    xn = unit_rows(x, np.float32)
    _check_k(k, len(xn))
    if nredo < 1:
        raise ValueError(f"nredo={nredo} must be at least 1")
    w = np.asarray(weights, dtype=np.float64)
    best: tuple[float, np.ndarray] | None = None
    for attempt in range(nredo):
        rng = np.random.default_rng(seed + attempt)
        n_init = min(len(xn), _INIT_ROWS_PER_CLUSTER * k)
        sub = rng.choice(len(xn), n_init, replace=False)
        # float64: scikit-learn computes float32 distances through a slow chunked upcast
        centres, _ = kmeans_plusplus(xn[sub].astype(np.float64), int(k), random_state=seed + attempt)
        km = faiss.Kmeans(
            xn.shape[1],
            int(k),
            niter=niter,
            seed=seed + attempt,
            spherical=True,
            min_points_per_centroid=1,  # silence faiss' "too few points" warning
        )
        km.train(xn, weights=w.astype(np.float32), init_centroids=unit_rows(centres, np.float32))
        _, assign = km.assign(xn)
        labels, objective = _refine(xn, np.unique(assign, return_inverse=True)[1], w, refine_rounds)
        if best is None or objective > best[0]:
            best = (objective, labels)
    return best[1]


def ward(
    x: np.ndarray, k: int, weights: np.ndarray, *, seed: int = 0, nredo: int = 1
) -> np.ndarray:
    """Ward agglomerative clustering of the unique, L2-normalised rows.

    scikit-learn's ward takes no sample weights, so ``weights`` are ignored:
    like the paper, ward groups the distinct labels themselves. (Expanding
    duplicates would be exactly weighted ward, as copies merge first at
    height 0, but only when the expanded set is small; switching behaviour
    with data size would make results jump, so we never do.) Unit rows make
    squared Euclidean distance ``2 − 2·cos``, so ward's variance criterion is
    a cosine criterion. Deterministic, so ``seed`` and ``nredo`` are unused;
    memory is O(U²).
    """
    xn = unit_rows(x, np.float64)
    _check_k(k, len(xn))
    return AgglomerativeClustering(n_clusters=int(k), linkage="ward").fit_predict(xn)


ALGORITHMS: dict[str, Clusterer] = {"kmeans": kmeans, "ward": ward}
