"""Benchmark ``select_k`` against the naive duplicate-expanded path.

Naive: for every k, scikit-learn ``KMeans(n_init=1)`` on the expanded points
(each unique label repeated once per clip) and ``silhouette_score(metric=
"cosine")`` on them, which is O(N²·d) per k. Ours: weighted spherical k-means
on the U unique labels plus the O(U·k·d) weighted silhouette. Both pick k by
the same penalised silhouette S − λ·k/U.

The naive sweep runs only if its estimated time fits ``--naive-budget-s``:
the silhouette cost is timed on a subsample and scaled by (N/m)², k-means is
timed on the first few k of the full expanded set and scaled linearly in k.
When only the naive k-means part fits, its partitions are still computed and
scored with ``weighted_silhouette`` (equal to ``silhouette_score`` on the
expanded points), so the naive k is exact while its time is partly
estimated: such cells are marked "≈" (time) and "†" (k).

    python benchmarks/bench_cluster.py [--sizes 2000 20000 100000] [--k-max 64]

``--protocol reference`` times the authors' protocol instead: the full k sweep (2 .. U) of weighted Ward and the
euclidean silhouette on U = 700 unique labels carrying 20 000 clips (``reference_select_k``), against
scikit-learn's path on the 20 000 expanded rows, as the reference code runs it: one
``AgglomerativeClustering(linkage="ward")`` tree (cached, cut at each k) and ``silhouette_score`` per k. The
scikit-learn silhouettes are timed at ``--reference-probe-ks`` evenly spaced k and the sweep's total is scaled from
their mean unless ``--reference-full``; at each probed k both partitions and silhouettes are compared.

    python benchmarks/bench_cluster.py --protocol reference [--reference-full]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from auditoryhum.taxonomy import penalised, select_k, unit_rows, weighted_silhouette  # noqa: E402
from auditoryhum.taxonomy.reference import partition, reference_select_k, ward_merges  # noqa: E402

PROBE_POINTS = 3000
PROBE_KS = 3
COLUMNS = ("U", "N expanded", "ours (s)", "naive (s)", "ratio", "k ours", "k naive",
           "S_adj ours", "S_adj naive", "ARI")


def synthetic(u: int, *, groups: int = 40, dim: int = 384, seed: int = 0):
    """Unique-label embeddings around ``groups`` random unit centres with
    different spreads (within-group cosine ≈ 0.5–0.85) and sizes, and Zipf
    clip counts (exponent 2, capped at 100: N ≈ 3.7·U)."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.normal(size=(groups, dim)))
    spread = rng.uniform(0.4, 1.0, groups)
    group = rng.choice(groups, u, p=rng.dirichlet(np.full(groups, 20.0)))
    x = centres[group] + rng.normal(size=(u, dim)) * (spread[group, None] / np.sqrt(dim))
    counts = np.minimum(rng.zipf(2.0, u), 100)
    return x.astype(np.float32), counts


@dataclass
class Estimate:
    kmeans_s: float
    silhouette_s: float

    @property
    def total_s(self) -> float:
        return self.kmeans_s + self.silhouette_s


@dataclass
class Naive:
    seconds: float
    exact_time: bool  # False: silhouette time estimated, partitions scored by weighted_silhouette
    k: int
    adjusted: float
    labels: np.ndarray


def estimate_naive(xe: np.ndarray, ks: range, seed: int) -> Estimate:
    rng = np.random.default_rng(seed)
    m = min(len(xe), PROBE_POINTS)
    sub = xe[rng.choice(len(xe), m, replace=False)]
    t = time.perf_counter()
    silhouette_score(sub, rng.integers(0, ks.stop - 1, m), metric="cosine")
    per_k_silhouette = (time.perf_counter() - t) * (len(xe) / m) ** 2
    probe = list(ks)[:PROBE_KS]
    t = time.perf_counter()
    for k in probe:
        KMeans(k, n_init=1, random_state=seed).fit(xe)
    per_cluster = (time.perf_counter() - t) / sum(probe)
    return Estimate(per_cluster * sum(ks), per_k_silhouette * len(ks))


def naive_sweep(xe: np.ndarray, ks: range, u: int, lam: float, seed: int,
                score: Callable[[np.ndarray], float]) -> tuple[float, int, float, np.ndarray]:
    t = time.perf_counter()
    best = None
    for k in ks:
        labels = KMeans(k, n_init=1, random_state=seed).fit_predict(xe)
        adj = penalised(score(labels), k, u, lam)
        if best is None or adj > best[0]:
            best = (adj, k, labels)
    return time.perf_counter() - t, best[1], best[0], best[2]


def naive_select(x: np.ndarray, counts: np.ndarray, ks: range, lam: float, seed: int,
                 budget: float) -> tuple[Estimate, Naive | None]:
    xe = np.repeat(unit_rows(x, np.float32), counts, axis=0)
    est = estimate_naive(xe, ks, seed)
    if est.total_s <= budget:
        seconds, k, adj, labels = naive_sweep(
            xe, ks, len(x), lam, seed, lambda lab: silhouette_score(xe, lab, metric="cosine"))
        return est, Naive(seconds, True, k, adj, labels)
    if est.kmeans_s <= budget:
        first = np.r_[0, np.cumsum(counts)[:-1]]  # duplicates of a row always share a label
        seconds, k, adj, labels = naive_sweep(
            xe, ks, len(x), lam, seed, lambda lab: weighted_silhouette(x, lab[first], counts))
        return est, Naive(seconds + est.silhouette_s, False, k, adj, labels)
    return est, None


def reference_counts(u: int, clips: int, seed: int) -> np.ndarray:
    """``clips`` clips over ``u`` labels, Zipf-like (a few labels on hundreds of clips, many on one), each ≥ 1."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, u + 1) ** 1.1
    counts = 1 + rng.multinomial(clips - u, p / p.sum())
    return rng.permutation(counts)


def bench_reference(args, console: Console) -> None:
    import tempfile

    from sklearn.cluster import AgglomerativeClustering

    u, clips = args.reference_labels, args.reference_clips
    x, _ = synthetic(u, seed=args.seed)
    x = unit_rows(x, np.float64)  # sentence embeddings are unit rows; euclidean distances on them, as the authors
    counts = reference_counts(u, clips, args.seed)
    rows = np.repeat(x, counts, axis=0)
    t = time.perf_counter()
    ours = reference_select_k(x, counts, lam=args.lam)
    ours_s = time.perf_counter() - t
    merges = ward_merges(x, counts)
    curve = {p.k: p for p in ours.curve}
    ks = list(range(2, u + 1))
    probe = ks if args.reference_full else sorted({int(k) for k in np.linspace(2, u, args.reference_probe_ks)})
    with tempfile.TemporaryDirectory() as cache:
        tree = AgglomerativeClustering(linkage="ward", compute_full_tree=True, memory=cache)
        t = time.perf_counter()
        tree.set_params(n_clusters=2).fit(rows)
        tree_s = time.perf_counter() - t
        sil_s, worst, same = [], 0.0, True
        for k in probe:
            t = time.perf_counter()
            labels = tree.set_params(n_clusters=k).fit_predict(rows)
            s = silhouette_score(rows, labels)
            sil_s.append(time.perf_counter() - t)
            worst = max(worst, abs(s - curve[k].silhouette))
            same &= adjusted_rand_score(labels, np.repeat(partition(merges, u, k), counts)) == 1.0
    sklearn_s = tree_s + float(np.mean(sil_s)) * len(ks)
    mark = "" if args.reference_full else "≈"
    table = Table(title=f"reference protocol: full sweep k = 2..{u}, U = {u} unique labels, N = {len(rows)} clips")
    for col in ("ours (s)", "scikit-learn (s)", "ratio", "k ours", "same partitions", "max |ΔS|"):
        table.add_column(col, justify="right")
    table.add_row(f"{ours_s:.2f}", f"{mark}{sklearn_s:.0f}", f"{mark}{sklearn_s / ours_s:.0f}×", str(ours.k),
                  f"{'yes' if same else 'NO'} ({len(probe)} k)", f"{worst:.1e}")
    console.print(table)
    console.print(f"scikit-learn: Ward tree {tree_s:.1f} s once, then {np.mean(sil_s):.2f} s per k (cut + "
                  f"silhouette_score), measured at {len(probe)} k" + ("" if args.reference_full else
                                                                     f" and scaled to all {len(ks)}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000])
    ap.add_argument("--k-max", type=int, default=64)
    ap.add_argument("--lam", type=float, default=2.0)
    ap.add_argument("--naive-budget-s", type=float, default=600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--protocol", choices=("default", "reference"), default="default")
    ap.add_argument("--reference-labels", type=int, default=700)
    ap.add_argument("--reference-clips", type=int, default=20_000)
    ap.add_argument("--reference-probe-ks", type=int, default=8)
    ap.add_argument("--reference-full", action="store_true", help="time scikit-learn at every k (about an hour)")
    args = ap.parse_args()
    if args.protocol == "reference":
        bench_reference(args, Console(width=160))
        return

    console = Console(width=160)
    table = Table(title=f"select_k vs naive expanded sweep (k = 2..{args.k_max}, λ = {args.lam})")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    for u in args.sizes:
        x, counts = synthetic(u, seed=args.seed)
        t = time.perf_counter()
        ours = select_k(x, counts, k_max=args.k_max, lam=args.lam, seed=args.seed)
        ours_s = time.perf_counter() - t
        ks = range(2, min(args.k_max, u - 1) + 1)
        est, naive = naive_select(x, counts, ks, args.lam, args.seed, args.naive_budget_s)
        cells = dict.fromkeys(COLUMNS, "-")
        cells.update({"U": str(u), "N expanded": str(int(counts.sum())), "ours (s)": f"{ours_s:.1f}",
                      "k ours": str(ours.k), "S_adj ours": f"{max(p.adjusted for p in ours.curve):.3f}"})
        if naive is None:
            cells["naive (s)"] = f"not run (est. {est.total_s / 60:.0f} min)"
            cells["ratio"] = f"≈{est.total_s / ours_s:.0f}×"
        else:
            mark, dagger = ("", "") if naive.exact_time else ("≈", "†")
            ari = adjusted_rand_score(np.repeat(ours.labels, counts), naive.labels)
            cells.update({"naive (s)": f"{mark}{naive.seconds:.0f}", "ratio": f"{mark}{naive.seconds / ours_s:.0f}×",
                          "k naive": f"{naive.k}{dagger}", "S_adj naive": f"{naive.adjusted:.3f}",
                          "ARI": f"{ari:.3f}"})
        table.add_row(*cells.values())
        console.print(f"U={u}: ours {ours_s:.1f} s, k={ours.k} (raw best {ours.raw_best_k}); naive estimated "
                      f"{est.kmeans_s:.0f} s k-means + {est.silhouette_s:.0f} s silhouette")
    console.print(table)
    console.print("≈ naive time = measured k-means + estimated silhouette; † naive partitions scored by the "
                  "exact weighted silhouette (= silhouette_score on the expanded points).")


if __name__ == "__main__":
    main()
