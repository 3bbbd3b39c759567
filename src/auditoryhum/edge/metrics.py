"""Clip-level scores of a recogniser: accuracy, macro-F1 over the classes the split has, per-class F1, confusion."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over the classes present in ``y_true`` (a class a split lacks is neither rewarded nor punished)."""
    if not len(y_true):
        return 0.0
    return float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    labels = np.arange(n_classes)
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0) if len(y_true) else \
        np.zeros(n_classes)
    present = set(np.unique(y_true).tolist())
    return {
        "clips": int(len(y_true)),
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "macro_f1": macro_f1(y_true, y_pred),
        # None for a class without test clips: its F1 says nothing
        "per_class_f1": [float(f) if i in present else None for i, f in enumerate(per_class)],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist() if len(y_true) else
        np.zeros((n_classes, n_classes), int).tolist(),
    }
