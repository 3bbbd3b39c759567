"""Choosing the number of label clusters k.

Two criteria, picked by name (``select_k(criterion=...)``, setting ``k_criterion``):

``plateau`` (default)
    Cluster the unique labels as labels (k-means without clip weights) and rank k by the **label silhouette**
    L(k): the cosine silhouette over the U unique labels, each counted once (a label alone in its cluster scores
    0, as in scikit-learn, so isolating a frequent label earns nothing). Choose the smallest k whose L(k) is not
    clearly below the best L of the sweep: within two standard errors of it (the spread of the labels' s(i) over
    √U, about a 95 % band) and at least ``PLATEAU_TOLERANCE``. Silhouette curves have flat tops where groups
    split into their sub-types at almost no cost; the coarser level is the taxonomy. If even the best L is below
    ``STRUCTURE_THRESHOLD`` (Kaufman & Rousseeuw: under 0.25 "no substantial structure"), the labels form no
    groups, no label should be merged with another on the strength of the silhouette, and k is the argmax of the
    clip-weighted silhouette S(k) instead, which keeps the labels that carry the clips apart.
``linear``
    The paper's penalised silhouette, ``S_adj(k) = S(k) − λ·k/U`` (λ = ``lam``, 2 by default) on the
    duplicate-weighted silhouette S, argmax. AIC charges 2 per free parameter; here the parameter is a cluster,
    priced in silhouette units per unique label U, so a new cluster must lift S by 2/U to pay for itself. It is
    scale-bound: at U = 23 each cluster costs 0.087 and small sets collapse, while mixed sub-type sets over-split.

Neither number depends on U the way λ·k/U does, which is why ``plateau`` holds from ten labels to 100 000
(docs/taxonomy.md has the measurements). The sweep covers ``k_min .. k_max`` (``k_max`` None: ``auto_k_max``,
growing as 2√U); up to ``DENSE_SWEEP`` values it tries every k, above that a geometric grid refined by bisection
near the chosen k, which bounds the cost at large U. Every tried k is on the reported curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .cluster import ALGORITHMS
from .silhouette import label_silhouette, silhouette, unit_rows

__all__ = ["CRITERIA", "DEFAULT_CRITERION", "PENALTIES", "CurvePoint", "Selection", "auto_k_max", "penalised",
           "select_k"]


PENALTIES: dict[str, Callable[[float, int, int, float], float]] = {
    "linear": lambda s, k, u, lam: s - lam * k / u,
}
"""Penalty forms by name: ``(silhouette, k, U, λ) -> adjusted``."""

DEFAULT_CRITERION = "plateau"
CRITERIA = (DEFAULT_CRITERION, *PENALTIES)
PLATEAU_TOLERANCE = 0.04
PATIENCE = 4
STRUCTURE_THRESHOLD = 0.25
DENSE_SWEEP = 64  # k values tried one by one; more: geometric grid, then bisection
GRID_RATIO = 1.1


def penalised(s: float, k: int, u: int, lam: float, form: str = "linear") -> float:
    """Adjusted silhouette ``S − λ·k/U`` ("linear"; AIC's 2 per parameter with
    one parameter per cluster, in silhouette units per unique label)."""
    if form not in PENALTIES:
        raise ValueError(f"unknown penalty form {form!r}; known: {sorted(PENALTIES)}")
    return PENALTIES[form](s, k, u, lam)


def auto_k_max(u: int) -> int:
    """Largest k tried when none is given: 64, or 2√U once that is larger (632 at U = 100 000), so that sets with
    hundreds of groups are reachable; the criterion's own number decides within it."""
    return max(64, math.ceil(2 * math.sqrt(u)))


@dataclass(frozen=True)
class CurvePoint:
    """One k of the sweep; ``k`` counts the clusters actually produced. ``silhouette`` is the clip-weighted S(k)
    (``stderr``: its sampling error, 0 when exact), ``label_silhouette`` L(k) (each unique label once) with its
    standard error (``plateau`` only), ``adjusted`` the number the criterion ranks."""

    k: int
    silhouette: float
    adjusted: float
    stderr: float
    label_silhouette: float = float("nan")
    label_stderr: float = float("nan")


@dataclass(frozen=True)
class Selection:
    """Result of :func:`select_k`; ``labels`` give the cluster of each unique row, ``form`` the criterion."""

    k: int
    labels: np.ndarray
    curve: list[CurvePoint]
    lam: float
    algorithm: str
    raw_best_k: int
    form: str = "linear"


def _grid(lo: int, hi: int) -> list[int]:
    if hi - lo + 1 <= DENSE_SWEEP:
        return list(range(lo, hi + 1))
    ks, k = [], float(lo)
    while k < hi:
        ks.append(int(round(k)))
        k = max(k * GRID_RATIO, k + 1)
    return sorted(set(ks) | {hi})


class _Sweep:
    """Partitions and scores by requested k, each computed once."""

    def __init__(self, x: np.ndarray, weights: np.ndarray, algorithm: str, seed: int, nredo: int,
                 exact_limit: int, lam: float, criterion: str):
        self.x64, self.x32, self.w = x, x.astype(np.float32), weights
        # plateau asks how the labels group, so it clusters them as labels; linear weighs them by their clips
        self.fit_w = np.ones(len(x)) if criterion == DEFAULT_CRITERION else weights
        self.cluster = ALGORITHMS[algorithm]
        self.seed, self.nredo, self.exact_limit, self.lam, self.criterion = seed, nredo, exact_limit, lam, criterion
        self.points: dict[int, tuple[CurvePoint, np.ndarray]] = {}

    def __call__(self, k: int) -> CurvePoint:
        if k not in self.points:
            labels = self.cluster(self.x32, k, self.fit_w, seed=self.seed, nredo=self.nredo)
            kk = int(labels.max()) + 1
            u = len(self.x64)
            res = silhouette(self.x64, labels, self.w, exact_limit=self.exact_limit, seed=self.seed)
            if self.criterion == DEFAULT_CRITERION:
                lab, se = label_silhouette(self.x64, labels, exact_limit=self.exact_limit, seed=self.seed)
                point = CurvePoint(kk, res.value, lab, res.stderr, lab, se)
            else:
                point = CurvePoint(kk, res.value, penalised(res.value, kk, u, self.lam, self.criterion), res.stderr)
            self.points[k] = (point, labels)
        return self.points[k][0]

    def tried(self) -> list[int]:
        return sorted(self.points)


Rule = Callable[[list[int], list[CurvePoint]], int]
"""Picks one of the tried k (sorted) from their points."""


def _refined(sweep: _Sweep, rule: Rule) -> int:
    """Apply ``rule`` to the tried k, then bisect the gaps next to its pick and apply it again, until the pick's
    neighbours are adjacent k: on a grid this finds the k a full sweep would pick near there, at log cost."""
    while True:
        ks = sweep.tried()
        pick = rule(ks, [sweep(k) for k in ks])
        i = ks.index(pick)
        mids = [(a + b) // 2 for a, b in ((ks[max(i - 1, 0)], pick), (pick, ks[min(i + 1, len(ks) - 1)]))
                if b - a > 1]
        if not mids:
            return pick
        for m in mids:
            sweep(m)


def _argmax(key: Callable[[CurvePoint], float]) -> Rule:
    """The k with the largest key; ties → smaller k."""
    return lambda ks, points: ks[max(range(len(ks)), key=lambda i: (key(points[i]), -i))]


def _first_peak(ks: list[int], points: list[CurvePoint]) -> int:
    """``plateau``'s pick: the smallest k whose label silhouette is a peak (the next tried k is not above it by
    more than two standard errors) within the tolerance band of the best."""
    lab = [p.label_silhouette for p in points]
    top = max(range(len(ks)), key=lambda i: (lab[i], -i))
    se = points[top].label_stderr
    floor = lab[top] - max(PLATEAU_TOLERANCE, 2 * se)
    return next(ks[i] for i in range(len(ks))
                if lab[i] >= floor and (i + 1 == len(ks) or lab[i] >= lab[i + 1] - 2 * se))


def _sweep_grid(sweep: _Sweep, ks: list[int]) -> None:
    """Try the grid in order; ``plateau`` stops once the label silhouette has stayed below its best's band for
    ``PATIENCE`` grid steps in a row (a coarser peak is already in hand, finer structure would not be chosen over
    it unless clearly better, which a falling curve will not become) and there is structure to speak of."""
    best, below = -np.inf, 0
    for k in ks:
        p = sweep(k)
        if sweep.criterion != DEFAULT_CRITERION:
            continue
        if p.label_silhouette > best:
            best = p.label_silhouette
        below = below + 1 if p.label_silhouette < best - 2 * PLATEAU_TOLERANCE else 0
        if below >= PATIENCE and best >= STRUCTURE_THRESHOLD:
            return


def select_k(
    x: np.ndarray,
    weights: np.ndarray,
    *,
    k_min: int = 2,
    k_max: int | None = None,
    lam: float = 2.0,
    algorithm: str = "kmeans",
    criterion: str = DEFAULT_CRITERION,
    seed: int = 0,
    nredo: int = 1,
    exact_limit: int = 500_000,
) -> Selection:
    """Cluster the U unique label embeddings for a sweep of k and choose k by ``criterion`` (module docstring).

    ``weights`` are clip counts; clustering and the silhouette S both use them. The k range is clipped to
    ``[2, U-1]``: a silhouette needs two clusters, and k = U would leave every label alone, grouping nothing;
    ``k_max`` None means :func:`auto_k_max`. With ``U < 3`` there is nothing to choose: every unique label is its
    own cluster, ``k = U`` and the curve is empty. Ties go to the smaller k. The curve's ``k`` is the number of
    clusters actually produced (k-means may rarely leave one empty). ``nredo`` k-means restarts per k steady the
    curve on small label sets (cost × nredo).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {sorted(ALGORITHMS)}")
    if criterion not in CRITERIA:
        raise ValueError(f"unknown k criterion {criterion!r}; known: {list(CRITERIA)}")
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"penalty λ={lam} must be a finite number ≥ 0")
    weights = np.asarray(weights, dtype=np.float64)
    u = len(x)
    if u < 3:
        return Selection(u, np.arange(u), [], lam, algorithm, u, criterion)
    if k_max is None:
        k_max = auto_k_max(u)
    lo, hi = (int(np.clip(v, 2, u - 1)) for v in (k_min, k_max))
    if lo > hi:
        raise ValueError(f"k_min={k_min} > k_max={k_max}")

    sweep = _Sweep(unit_rows(x), weights, algorithm, seed, nredo, exact_limit, lam, criterion)
    _sweep_grid(sweep, _grid(lo, hi))
    raw = _refined(sweep, _argmax(lambda p: p.silhouette))
    if criterion == DEFAULT_CRITERION:
        structured = max(sweep(k).label_silhouette for k in sweep.tried()) >= STRUCTURE_THRESHOLD
        chosen = _refined(sweep, _first_peak) if structured else raw
    else:
        chosen = _refined(sweep, _argmax(lambda p: p.adjusted))
    curve = [sweep(k) for k in sweep.tried()]
    point, labels = sweep.points[chosen]
    return Selection(point.k, labels, curve, lam, algorithm, sweep(raw).k, criterion)
