"""Quality figures of a run: the paper's alignment means and, with ground truth, agreement of clusters with classes."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def lowest_mean(scores: np.ndarray, fraction: float = 0.01) -> float | None:
    """Mean of the lowest ``fraction`` of scores (at least one): the paper's μ1%."""
    if len(scores) == 0:
        return None
    n = max(1, math.ceil(fraction * len(scores)))
    return float(np.sort(np.asarray(scores, dtype=np.float64))[:n].mean())


def purity(clusters: Sequence[int], classes: Sequence[str]) -> float:
    """Share of clips whose cluster's majority class is their own class."""
    pairs: dict[int, dict[str, int]] = {}
    for c, k in zip(clusters, classes):
        pairs.setdefault(c, {}).setdefault(k, 0)
        pairs[c][k] += 1
    return sum(max(counts.values()) for counts in pairs.values()) / max(1, len(clusters))


def agreement(clusters: Sequence[int], classes: Sequence[str]) -> dict[str, float] | None:
    """NMI, ARI and purity of clip clusters against ground-truth classes; None without ground truth."""
    known = [(c, k) for c, k in zip(clusters, classes) if k]
    if len(known) < 2 or len({k for _, k in known}) < 2:
        return None
    cl, gt = zip(*known)
    return {"nmi": float(normalized_mutual_info_score(gt, cl)), "ari": float(adjusted_rand_score(gt, cl)),
            "purity": purity(cl, gt), "clips_with_ground_truth": len(known)}
