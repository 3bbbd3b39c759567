"""The authors' clustering protocol, computed on unique labels: ``--protocol reference``.

The reference code embeds one label per clip (duplicates included), clusters those rows with scikit-learn's
``AgglomerativeClustering(linkage="ward")`` (euclidean) and scores each partition with ``silhouette_score``
(euclidean), for k from 2 up to the number of unique labels U. On N clips that is O(N²) memory and, per k, an
O(N²) silhouette.

Here the same partitions and the same silhouettes come from the U unique rows and their clip counts:

- **Ward with weights.** In the expanded rows a label's copies are at distance 0, so Ward merges them first, at
  height 0, into one cluster of ``count`` points at the label's embedding. From there Ward's Lance–Williams update
  depends only on cluster sizes, so starting from U clusters of sizes ``counts`` gives the same merges, in the same
  order, as the expanded rows. Ward's heights never decrease, so merging the closest pair each step (a
  nearest-neighbour list, O(U²) memory) yields scikit-learn's partition at every k.
- **Silhouette with weights.** A row's euclidean distance sum to a cluster is ``Σ_j w_j ‖x_i − x_j‖`` over the
  cluster's unique rows, and a row's own copies add 0 to its own cluster's sum, so its mean distance is that sum
  over ``W_own − 1`` (scikit-learn's ``n_own − 1``). The sums live in one U × U matrix whose columns add up as
  clusters merge, so the whole k sweep costs O(U²) per k at most, never O(N²).

Euclidean distances are not linear in the rows, so the cosine trick of :mod:`.silhouette` does not apply; the
U × U matrices bound this protocol to some ten thousand unique labels (three float64 U × U arrays).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from .selection import CurvePoint, Selection, penalised

__all__ = ["reference_select_k", "ward_merges", "partition"]

ALGORITHM = "reference"  # the name taxonomy.json records: weighted Ward, euclidean silhouette
MAX_UNIQUE = 20_000  # three U × U float64 arrays: 9.6 GB here; beyond, the default protocol


def ward_merges(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ward's merges of the unique rows ``x`` with multiplicities ``weights``, in order: ``(U − 1, 2)`` pairs
    ``(kept, absorbed)`` of row indices, each naming the cluster by one of its rows."""
    x = np.asarray(x, dtype=np.float64)
    size = np.asarray(weights, dtype=np.float64).copy()
    u = len(x)
    # Squared Ward distance between clusters A and B: 2·|A|·|B| / (|A| + |B|) · ‖mean A − mean B‖².
    d = cdist(x, x, "sqeuclidean") * (2 * np.outer(size, size) / np.add.outer(size, size))
    np.fill_diagonal(d, np.inf)
    nn = d.argmin(axis=1)
    nnd = d[np.arange(u), nn]
    merges = np.empty((max(u - 1, 0), 2), dtype=np.intp)
    for step in range(u - 1):
        i = int(nnd.argmin())
        j = int(nn[i])
        if i > j:
            i, j = j, i
        merges[step] = i, j
        si, sj = size[i], size[j]
        # Lance–Williams for Ward, on squared distances; absorbed and inactive rows stay at +inf.
        row = ((si + size) * d[i] + (sj + size) * d[j] - size * d[i, j]) / (si + sj + size)
        row[[i, j]] = np.inf
        d[i], d[:, i] = row, row
        d[j], d[:, j] = np.inf, np.inf
        size[i] = si + sj
        nnd[j] = np.inf
        # Rows whose nearest cluster was i or j look again; Ward never brings the merged cluster closer to a row
        # than that row's nearest, but a tie may, so those are taken too.
        stale = np.flatnonzero((nn == i) | (nn == j))
        stale = np.union1d(stale[np.isfinite(nnd[stale])], [i])
        nn[stale] = d[stale].argmin(axis=1)
        nnd[stale] = d[stale, nn[stale]]
        closer = row < nnd
        nn[closer], nnd[closer] = i, row[closer]
    return merges


def partition(merges: np.ndarray, u: int, k: int) -> np.ndarray:
    """Contiguous cluster ids (0..k−1, in order of first row) of the U rows after the first ``U − k`` merges."""
    root = np.arange(u)
    for kept, absorbed in merges[: u - k]:
        root[root == absorbed] = kept
    return np.unique(root, return_inverse=True)[1]


def reference_select_k(x: np.ndarray, weights: np.ndarray, *, k_min: int = 2, k_max: int | None = None,
                       lam: float = 2.0, form: str = "linear") -> Selection:
    """The authors' sweep: weighted Ward partitions for k = k_min .. min(k_max, U) (default: up to U), each scored by
    the euclidean silhouette of the expanded rows, ranked by ``S − λ·k/U`` (ties → smaller k), as
    :func:`~auditoryhum.taxonomy.selection.select_k` ranks its own."""
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    u, n = len(x), w.sum()
    if u < 3:
        return Selection(u, np.arange(u), [], lam, ALGORITHM, u, form)
    if u > MAX_UNIQUE:
        raise ValueError(f"the reference protocol keeps U × U distances: {u} unique labels would need "
                         f"{3 * 8 * u * u / 2**30:.0f} GiB; use the default protocol (at most {MAX_UNIQUE})")
    hi = int(min(u if k_max is None else k_max, u, n - 1))  # a silhouette needs k ≤ N − 1
    lo = int(max(2, k_min))
    if lo > hi:
        raise ValueError(f"k_min={k_min} > k_max={hi}")
    merges = ward_merges(x, w)
    curve = _sweep(x, w, merges, lo, hi, lam, form)
    best = max(reversed(curve), key=lambda p: p.adjusted)  # reversed: the first maximum is the smallest k
    raw = max(reversed(curve), key=lambda p: p.silhouette)
    return Selection(best.k, partition(merges, u, best.k), curve, lam, ALGORITHM, raw.k, form)


def _sweep(x: np.ndarray, w: np.ndarray, merges: np.ndarray, lo: int, hi: int, lam: float,
           form: str) -> list[CurvePoint]:
    u = len(x)
    # sums[i, c]: Σ w_j ‖x_i − x_j‖ over the rows j of cluster c (named by its kept row); totals[c]: its weight.
    sums = cdist(x, x) * w[None, :]
    totals = w.copy()
    root = np.arange(u)
    active = np.ones(u, dtype=bool)
    rows = np.arange(u)
    points: dict[int, CurvePoint] = {}
    for k in range(u, lo - 1, -1):
        if k <= hi:
            s = _silhouette(sums, totals, root, active, w, rows)
            points[k] = CurvePoint(k, s, penalised(s, k, u, lam, form), 0.0)
        if k > lo:
            kept, absorbed = merges[u - k]
            sums[:, kept] += sums[:, absorbed]
            totals[kept] += totals[absorbed]
            active[absorbed] = False
            root[root == absorbed] = kept
    return [points[k] for k in range(lo, hi + 1)]


def _silhouette(sums, totals, root, active, w, rows) -> float:
    clusters = np.flatnonzero(active)
    column = np.full(len(active), -1)
    column[clusters] = np.arange(len(clusters))
    mean = sums[:, clusters] / totals[clusters]
    own = column[root]
    w_own = totals[root]
    a = sums[rows, root] / np.where(w_own > 1, w_own - 1, 1.0)
    mean[rows, own] = np.inf
    b = mean.min(axis=1)
    denom = np.maximum(a, b)
    # scikit-learn: s = 0 for a point alone in its cluster (and nan_to_num of 0/0).
    s = np.where((w_own > 1) & (denom > 0), (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    return float(np.dot(w, s) / w.sum())
