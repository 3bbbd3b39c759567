"""The offline audio–text scorer: it bridges audio and text through the tagger's classes.

A clip's "audio embedding" is the probability-weighted mean of the text embeddings of its strongest tagger
classes; a label's score is the cosine between that and the label's own text embedding. It stands in for
Human-CLAP where no CLAP weights can be had, and like CLAP it is higher for labels that describe the audio.

The classes usually come with the item (the tagger labeler's proposal carries them). Items without them (a
label proposal of a labeler that has no tags, a Score call on bare audio) are tagged from their audio by
``labeler`` when one is given: its evidence classes become the item's tags, as in the pipeline's proposals.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from auditoryhum.backends import Labeler, ScoreItem, Scores, TextEmbedder
from auditoryhum.backends.yamnet import short_name


class TagBridgeScorer:
    def __init__(self, embedder: TextEmbedder, tagger_id: str, class_names: Sequence[str] = (), *,
                 labeler: Labeler | None = None):
        self.embedder, self.labeler = embedder, labeler
        self.scorer_id = f"tag-bridge({tagger_id}|{embedder.model_id})"
        # The tagger's classes are also most labels: one batched call now, cache hits while scoring.
        embedder.embed(list(dict.fromkeys(_tag_text(n) for n in class_names)))

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Scores]:
        items = self._with_tags(items)
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

    def _with_tags(self, items: Sequence[ScoreItem]) -> Sequence[ScoreItem]:
        untagged = [i for i, item in enumerate(items) if not item.tags]
        if not untagged:
            return items
        if self.labeler is None or any(items[i].audio is None for i in untagged):
            raise ValueError("the tag-bridge scorer needs the tagger's classes for the clip")
        # AudioError from a loader propagates: the aligner stage turns it into the clip's dead letter.
        described = self.labeler.describe([items[i].audio() for i in untagged])
        items = list(items)
        for i, description in zip(untagged, described):
            items[i] = replace(items[i], tags=description.tags)
        return items


def _tag_text(class_name: str) -> str:
    return short_name(class_name).lower()
