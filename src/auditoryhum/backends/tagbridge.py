"""The offline audio–text scorer: it bridges audio and text through the tagger's classes.

A clip's "audio embedding" is the probability-weighted mean of the text embeddings of its strongest tagger
classes; a label's score is the cosine between that and the label's own text embedding. It stands in for
Human-CLAP where no CLAP weights can be had, and like CLAP it is higher for labels that describe the audio.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from auditoryhum.backends import ScoreItem, Scores, TextEmbedder
from auditoryhum.backends.yamnet import short_name


class TagBridgeScorer:
    def __init__(self, embedder: TextEmbedder, tagger_id: str, class_names: Sequence[str] = ()):
        self.embedder = embedder
        self.scorer_id = f"tag-bridge({tagger_id}|{embedder.model_id})"
        # The tagger's classes are also most labels: one batched call now, cache hits while scoring.
        embedder.embed(list(dict.fromkeys(_tag_text(n) for n in class_names)))

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Scores]:
        for item in items:
            if not item.tags:
                raise ValueError("the tag-bridge scorer needs the tagger's classes for the clip")
        # One embedding call for the whole batch; the embedder's cache makes repeated texts free.
        texts = list(dict.fromkeys(t for item in items for t in [*item.labels, *(_tag_text(n) for n, _ in item.tags)]))
        row = {t: i for i, t in enumerate(texts)}
        vectors = self.embedder.embed(texts)
        results = []
        for item in items:
            weights = np.array([max(s, 0.0) for _, s in item.tags], dtype=np.float32)
            if weights.sum() <= 0:
                weights[:] = 1.0
            clip = weights @ vectors[[row[_tag_text(n)] for n, _ in item.tags]]
            clip /= max(float(np.linalg.norm(clip)), 1e-12)
            labels = vectors[[row[t] for t in item.labels]] if item.labels else np.zeros((0, len(clip)), np.float32)
            results.append(Scores((labels @ clip).astype(np.float32), clip.astype(np.float32)))
        return results


def _tag_text(class_name: str) -> str:
    return short_name(class_name).lower()
