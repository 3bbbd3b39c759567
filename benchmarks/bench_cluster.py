"""Benchmark ``select_k`` against the naive duplicate-expanded path.

Naive: for every k, scikit-learn ``KMeans(n_init=1)`` on the expanded points
(each unique label repeated once per clip) and ``silhouette_score(metric=
"cosine")`` on them, which is O(N²·d) per k. Ours: weighted spherical k-means
on the U unique labels plus the O(U·k·d) weighted silhouette. Both pick k by
the same penalised silhouette S − λ·k/U.

The naive sweep only runs if its estimated time fits ``--naive-budget-s``:
the silhouette cost is timed on a subsample and scaled by (N/m)², k-means is
timed on the first few k of the full expanded set and scaled linearly in k.

    python benchmarks/bench_cluster.py [--sizes 2000 20000 100000] [--k-max 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from auditoryhum.taxonomy import penalised, select_k, unit_rows  # noqa: E402

PROBE_POINTS = 3000
PROBE_KS = 3


def synthetic(u: int, *, groups: int = 40, dim: int = 384, seed: int = 0):
    """Unique-label embeddings around ``groups`` random unit centres with
    different spreads and group sizes, and Zipf-like clip counts."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.normal(size=(groups, dim)))
    spread = rng.uniform(0.5, 1.5, groups)
    group = rng.choice(groups, u, p=rng.dirichlet(np.full(groups, 2.0)))
    x = centres[group] + rng.normal(size=(u, dim)) * (spread[group, None] / np.sqrt(dim))
    counts = np.minimum(rng.zipf(2.2, u), 2000)
    return x.astype(np.float32), counts


@dataclass
class Naive:
    seconds: float | None  # None: not run
    estimate_s: float
    k: int | None = None
    labels: np.ndarray | None = None


def _expanded(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.repeat(unit_rows(x, np.float32), counts, axis=0)


def estimate_naive(xe: np.ndarray, ks: range, seed: int) -> float:
    rng = np.random.default_rng(seed)
    m = min(len(xe), PROBE_POINTS)
    sub = xe[rng.choice(len(xe), m, replace=False)]
    t = time.perf_counter()
    silhouette_score(sub, rng.integers(0, ks.stop - 1, m), metric="cosine")
    sil = (time.perf_counter() - t) * (len(xe) / m) ** 2
    probe = list(ks)[:PROBE_KS]
    t = time.perf_counter()
    for k in probe:
        KMeans(k, n_init=1, random_state=seed).fit(xe)
    per_k_unit = (time.perf_counter() - t) / sum(probe)
    return sum(per_k_unit * k + sil for k in ks)


def naive_select(xe: np.ndarray, ks: range, u: int, lam: float, seed: int, budget: float) -> Naive:
    estimate = estimate_naive(xe, ks, seed)
    if estimate > budget:
        return Naive(None, estimate)
    t = time.perf_counter()
    best = None
    for k in ks:
        labels = KMeans(k, n_init=1, random_state=seed).fit_predict(xe)
        adj = penalised(silhouette_score(xe, labels, metric="cosine"), k, u, lam)
        if best is None or adj > best[0]:
            best = (adj, k, labels)
    return Naive(time.perf_counter() - t, estimate, best[1], best[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    ap.add_argument("--k-max", type=int, default=64)
    ap.add_argument("--lam", type=float, default=2.0)
    ap.add_argument("--naive-budget-s", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    console = Console()
    table = Table(title=f"select_k vs naive expanded sweep (k = 2..{args.k_max}, λ = {args.lam})")
    for col in ("U", "N expanded", "ours (s)", "naive (s)", "ratio", "k ours", "k naive", "ARI"):
        table.add_column(col, justify="right")
    for u in args.sizes:
        x, counts = synthetic(u, seed=args.seed)
        t = time.perf_counter()
        ours = select_k(x, counts, k_max=args.k_max, lam=args.lam, seed=args.seed)
        ours_s = time.perf_counter() - t
        ks = range(2, min(args.k_max, u - 1) + 1)
        naive = naive_select(_expanded(x, counts), ks, u, args.lam, args.seed, args.naive_budget_s)
        if naive.seconds is None:
            cells = (f"not run (est. {naive.estimate_s / 60:.0f} min > {args.naive_budget_s / 60:.0f} min)", "-", "-", "-")
        else:
            ari = adjusted_rand_score(np.repeat(ours.labels, counts), naive.labels)
            cells = (f"{naive.seconds:.1f}", f"{naive.seconds / ours_s:.0f}×", str(naive.k), f"{ari:.3f}")
        table.add_row(str(u), str(int(counts.sum())), f"{ours_s:.1f}", cells[0], cells[1], str(ours.k), *cells[2:])
        console.print(f"U={u}: ours k={ours.k} (raw best {ours.raw_best_k}); naive estimate {naive.estimate_s:.0f} s")
    console.print(table)


if __name__ == "__main__":
    main()
