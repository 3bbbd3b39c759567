"""Aligner stage: a label proposal → every label's score against the clip; the clip's score is its best label's.

A proposal of several labelers is scored as one: all their labels against the clip, the best of them kept. Each
labeler's own best label is recorded, and the labelers' disagreement: 1 − the mean pairwise cosine of those labels'
text embeddings (a labeler with no usable label counts 1 from every other), 0 when they all propose one label.
"""

from __future__ import annotations

from functools import partial
from itertools import combinations
from typing import Callable, Sequence

import numpy as np

from auditoryhum import topics
from auditoryhum.audio import Audio, AudioError
from auditoryhum.backends import ScoreItem, Scorer, TextEmbedder
from auditoryhum.stages.base import Out, Stage, dead_letter
from auditoryhum.v1 import pipeline_pb2 as pb


class AlignerStage(Stage):
    name = "aligner"
    consumes = (topics.LABELS,)

    def __init__(self, scorer: Scorer, load_audio: Callable[[pb.Clip, int], Audio], sample_rate: int = 16_000, *,
                 keep_audio_embedding: bool = False, embedder: Callable[[], TextEmbedder] | None = None):
        """``embedder``: gives the text embedder that measures labelers' disagreement, called when a proposal of
        several labelers first comes (a one-labeler run never loads it)."""
        self.scorer, self.load_audio, self.sample_rate = scorer, load_audio, sample_rate
        self.keep_audio_embedding = keep_audio_embedding  # only the class-vector clusterer needs it
        self.embedder = embedder

    def handle(self, proposal: pb.LabelProposal) -> list[Out]:
        return self.handle_batch([proposal])[0]

    def handle_batch(self, proposals: Sequence[pb.LabelProposal]) -> list[list[Out]]:
        outs: list[list[Out]] = [[dead_letter(self.name, "proposal has no labels", p)] if not p.labels else []
                                 for p in proposals]
        todo = [i for i, p in enumerate(proposals) if p.labels]
        items = [ScoreItem(list(proposals[i].labels), [(t.name, t.score) for t in proposals[i].tags],
                           list(proposals[i].class_probabilities),
                           partial(self.load_audio, proposals[i].clip, self.sample_rate)) for i in todo]
        try:
            results = self.scorer.score_batch(items)
        except (AudioError, ValueError) as exc:
            if len(items) > 1:  # find the proposal at fault, score the rest
                return [self.handle(p) for p in proposals]
            return [[dead_letter(self.name, str(exc), proposals[todo[0]])]] if todo else outs
        alignments = [align(proposals[i], result.scores, self.scorer.scorer_id) for i, result in zip(todo, results)]
        if several := [a for a in alignments if a.labelers]:
            if self.embedder is None:
                raise ValueError("a proposal of several labelers needs an aligner with a text embedder")
            measure_disagreement(several, self.embedder())
        for i, result, alignment in zip(todo, results, alignments):
            if self.keep_audio_embedding and result.audio_embedding is not None:
                alignment.audio_embedding.extend(result.audio_embedding.tolist())
            outs[i].append(Out(topics.ALIGNMENTS, proposals[i].clip.clip_id, alignment))
        return outs


def align(proposal: pb.LabelProposal, scores: np.ndarray, scorer_id: str) -> pb.Alignment:
    best = int(np.argmax(scores))
    alignment = pb.Alignment(
        clip=proposal.clip, model_id=proposal.model_id, scorer_id=scorer_id,
        scores=[pb.LabelScore(label=label, score=float(s)) for label, s in zip(proposal.labels, scores)],
        best_label=proposal.labels[best], best_score=float(scores[best]), tags=proposal.tags,
    )
    if proposal.labelers:
        score = dict(zip(proposal.labels, (float(s) for s in scores)))
        for answer in proposal.labelers:
            label = max(answer.labels, key=score.__getitem__, default="")  # the first of equal scores
            alignment.labelers.append(pb.LabelerBest(model_id=answer.model_id, label=label,
                                                     score=score.get(label, 0.0)))
        alignment.model_id = next(a.model_id for a in proposal.labelers if alignment.best_label in a.labels)
    return alignment


def measure_disagreement(alignments: Sequence[pb.Alignment], embedder: TextEmbedder) -> None:
    """Sets each alignment's disagreement from its labelers' best labels, embedded in one call."""
    texts = list(dict.fromkeys(b.label for a in alignments for b in a.labelers if b.label))
    vector = dict(zip(texts, embedder.embed(texts))) if texts else {}
    for a in alignments:
        a.disagreement = disagreement([vector.get(b.label) for b in a.labelers])


def disagreement(vectors: Sequence[np.ndarray | None]) -> float:
    """1 − the mean pairwise cosine of unit vectors; a missing one (no label) is 1 from every other. The same
    vector twice (one label) is exactly 0 apart, whatever float rounding says."""
    pairs = [1.0 if u is None or v is None else 0.0 if u is v else 1.0 - min(1.0, float(u @ v))
             for u, v in combinations(vectors, 2)]
    return float(np.mean(pairs)) if pairs else 0.0
