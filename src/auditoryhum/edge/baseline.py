"""The tagger as a classifier, the baseline a trained recogniser must beat: no training beyond a lookup table.

Each YAMNet class is mapped to the cluster it co-occurs with most on the train split: over the training clips
whose top ``TOP`` classes (mean sigmoid over patches) include it, the cluster with the largest share of its
clips (each cluster's count divided by its training clips, so a large cluster does not take every class). A clip's
prediction is the mapped cluster of its strongest class that has one; a clip none of whose classes were seen in
training gets the largest training class. In the lite profile the clusters were built from these same tagger
labels, so this baseline is strong on its own run.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from auditoryhum.edge.dataset import TrainingSet
from auditoryhum.edge.features import Features

TOP = 3


def clip_tag_probabilities(feats: Features, clip_indexes: list[int]) -> np.ndarray:
    """``[len, 521]`` clip-level YAMNet probabilities from the graded patches (as the tagger tags a clip)."""
    rows = feats.rows(clip_indexes, graded=True)
    probs = expit(feats.tagger_logits[rows])
    order = {c: i for i, c in enumerate(clip_indexes)}
    sums = np.zeros((len(clip_indexes), probs.shape[1]))
    counts = np.zeros(len(clip_indexes))
    for r, p in zip(rows, probs):
        sums[order[feats.clip_of[r]]] += p
        counts[order[feats.clip_of[r]]] += 1
    return sums / np.maximum(counts, 1)[:, None]


class TaggerBaseline:
    def __init__(self, data: TrainingSet, feats: Features):
        train = data.split["train"]
        n_classes = len(data.classes)
        tags = clip_tag_probabilities(feats, train)
        labels = np.array([data.clips[i].label for i in train])
        hits = np.zeros((tags.shape[1], n_classes))
        for probs, label in zip(tags, labels):
            hits[np.argsort(-probs)[:TOP], label] += 1
        share = hits / np.maximum(data.counts("train"), 1)[None, :]
        self.mapping = np.where(hits.sum(axis=1) > 0, share.argmax(axis=1), -1)  # YAMNet class → class or -1
        self.fallback = int(np.argmax(data.counts("train")))

    def predict(self, feats: Features, clip_indexes: list[int]) -> np.ndarray:
        tags = clip_tag_probabilities(feats, clip_indexes)
        out = []
        for probs in tags:
            mapped = self.mapping[np.argsort(-probs)]
            hit = mapped[mapped >= 0]
            out.append(int(hit[0]) if len(hit) else self.fallback)
        return np.array(out, dtype=int)
