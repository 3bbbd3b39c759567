"""Choosing the number of label clusters k with a penalised silhouette.

The duplicate-weighted silhouette alone is maximised by very fine partitions:
once a frequent label sits in its own cluster, all of its clips have a(i) = 0
and s(i) = 1. AuditoryHuM therefore ranks k by an adjusted silhouette with an
AIC-derived penalty λ. We read it as

    S_adj(k) = S(k) − λ · k / U        (form "linear", λ = 2 by default)

AIC charges 2 per free parameter; here the parameter is a cluster, priced in
silhouette units per unique label U, so a new cluster must lift S by 2/U to
pay for itself. See docs/taxonomy.md for the derivation and measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .cluster import ALGORITHMS
from .silhouette import silhouette, unit_rows

__all__ = ["PENALTIES", "CurvePoint", "Selection", "penalised", "select_k"]


PENALTIES: dict[str, Callable[[float, int, int, float], float]] = {
    "linear": lambda s, k, u, lam: s - lam * k / u,
}
"""Penalty forms by name: ``(silhouette, k, U, λ) -> adjusted``."""


def penalised(s: float, k: int, u: int, lam: float, form: str = "linear") -> float:
    """Adjusted silhouette ``S − λ·k/U`` ("linear"; AIC's 2 per parameter with
    one parameter per cluster, in silhouette units per unique label)."""
    if form not in PENALTIES:
        raise ValueError(f"unknown penalty form {form!r}; known: {sorted(PENALTIES)}")
    return PENALTIES[form](s, k, u, lam)


@dataclass(frozen=True)
class CurvePoint:
    """One k of the sweep; ``k`` counts the clusters actually produced."""

    k: int
    silhouette: float
    adjusted: float
    stderr: float


@dataclass(frozen=True)
class Selection:
    """Result of :func:`select_k`; ``labels`` give the cluster of each unique row."""

    k: int
    labels: np.ndarray
    curve: list[CurvePoint]
    lam: float
    algorithm: str
    raw_best_k: int
    form: str = "linear"


def select_k(
    x: np.ndarray,
    weights: np.ndarray,
    *,
    k_min: int = 2,
    k_max: int = 64,
    lam: float = 2.0,
    algorithm: str = "kmeans",
    form: str = "linear",
    seed: int = 0,
    nredo: int = 1,
    exact_limit: int = 500_000,
) -> Selection:
    """Cluster the U unique label embeddings for each k and keep the best S_adj.

    ``weights`` are clip counts; clustering and silhouette both use them. The
    k range is clipped to ``[2, U-1]``: a silhouette needs two clusters, and
    k = U would leave every label alone, grouping nothing. With ``U < 3`` there is
    nothing to choose: every unique label is its own cluster, ``k = U`` and
    the curve is empty. Ties go to the smaller k. The curve's ``k`` is the
    number of clusters actually produced (k-means may rarely leave one empty)
    and is what the penalty charges for. ``nredo`` k-means restarts per k
    steady the curve on small label sets (cost × nredo).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {sorted(ALGORITHMS)}")
    penalised(0.0, 1, 1, lam, form)  # fail fast on an unknown form
    weights = np.asarray(weights, dtype=np.float64)
    u = len(x)
    if u < 3:
        return Selection(u, np.arange(u), [], lam, algorithm, u, form)
    x64 = unit_rows(x)
    x32 = x64.astype(np.float32)
    lo, hi = (int(np.clip(v, 2, u - 1)) for v in (k_min, k_max))
    if lo > hi:
        raise ValueError(f"k_min={k_min} > k_max={k_max}")

    cluster = ALGORITHMS[algorithm]
    curve: list[CurvePoint] = []
    best: tuple[CurvePoint, np.ndarray] | None = None
    for k in range(lo, hi + 1):
        labels = cluster(x32, k, weights, seed=seed, nredo=nredo)
        kk = int(labels.max()) + 1
        res = silhouette(x64, labels, weights, exact_limit=exact_limit, seed=seed)
        point = CurvePoint(kk, res.value, penalised(res.value, kk, u, lam, form), res.stderr)
        curve.append(point)
        if best is None or point.adjusted > best[0].adjusted:  # strict: ties → smaller k
            best = (point, labels)
    raw = max(curve, key=lambda p: p.silhouette)  # max keeps the first maximum
    return Selection(best[0].k, best[1], curve, lam, algorithm, raw.k, form)
