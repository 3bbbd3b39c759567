"""The label-quality measures, as pure functions of arrays.

- :func:`swapped_label_auc`: does the scorer rank a clip's true description above the other categories'?
- :func:`clustering_agreement`: NMI and ARI of clusters against the true categories (scikit-learn).
- :func:`k_ratio`: the chosen k against the true group count.
- :func:`precision_at`: how many of a ranking's top 1 / 5 / 10 % are truly wrong (review ranking).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def swapped_label_auc(scores: np.ndarray, true_index: Sequence[int]) -> float:
    """``scores[i, j]``: clip i scored against category j's description; ``true_index[i]``: clip i's category.

    Every clip's true description is compared with each other category's, on the same clip: the AUC is the share
    of those pairs the true one wins, ties counting one half (0.5: chance, 1.0: always the true one on top)."""
    scores = np.asarray(scores, dtype=np.float64)
    true_index = np.asarray(true_index, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be clips × categories (at least 2), got shape {scores.shape}")
    if true_index.shape != (scores.shape[0],) or not len(true_index):
        raise ValueError(f"one true category per clip: {scores.shape[0]} clips, {true_index.shape[0]} categories")
    if true_index.min() < 0 or true_index.max() >= scores.shape[1]:
        raise ValueError("a true category index is out of range")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    rows = np.arange(len(true_index))
    true = scores[rows, true_index][:, None]
    other = np.ones_like(scores, dtype=bool)
    other[rows, true_index] = False
    wins = ((true > scores) & other).sum() + 0.5 * ((true == scores) & other).sum()
    return float(wins / other.sum())


def clustering_agreement(clusters: Sequence, categories: Sequence[str]) -> dict[str, float]:
    """NMI and ARI of a clustering (one cluster id per clip) against the clips' true categories."""
    if len(clusters) != len(categories):
        raise ValueError(f"{len(clusters)} cluster ids for {len(categories)} clips")
    if not len(clusters):
        raise ValueError("no clips")
    return {"nmi": float(normalized_mutual_info_score(categories, clusters)),
            "ari": float(adjusted_rand_score(categories, clusters))}


def k_ratio(k: int, true_k: int) -> float:
    """k / true count: 1.0 recovers the groups; within ±20 % is 0.8 to 1.2."""
    if true_k < 1:
        raise ValueError(f"the true group count must be at least 1, got {true_k}")
    return k / true_k


def precision_at(ranking: Sequence[int], is_wrong: Sequence[bool],
                 fractions: Sequence[float] = (0.01, 0.05, 0.10)) -> dict[float, float]:
    """``ranking``: item indices, the first the most suspect; ``is_wrong[i]``: item i's label is truly wrong.

    For each fraction f: the share of truly wrong items among the first ceil(f · n) of the ranking (at least
    one), n the number of items."""
    ranking = np.asarray(ranking, dtype=np.int64)
    is_wrong = np.asarray(is_wrong, dtype=bool)
    n = len(is_wrong)
    if n == 0:
        raise ValueError("no items")
    if len(ranking) != n or len(np.unique(ranking)) != n or ranking.min() < 0 or ranking.max() >= n:
        raise ValueError(f"the ranking must order all {n} items, each once")
    out = {}
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions are in (0, 1], got {f}")
        top = max(1, math.ceil(round(f * n, 9)))  # round: 0.05 · 100 is 5.000000000000001 in floating point
        out[f] = float(is_wrong[ranking[:top]].mean())
    return out
