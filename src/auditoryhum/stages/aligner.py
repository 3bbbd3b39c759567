"""Aligner stage: a label proposal → every label's score against the clip; the clip's score is its best label's."""

from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import numpy as np

from auditoryhum import topics
from auditoryhum.audio import Audio, AudioError
from auditoryhum.backends import ScoreItem, Scorer
from auditoryhum.stages.base import Out, Stage, dead_letter
from auditoryhum.v1 import pipeline_pb2 as pb


class AlignerStage(Stage):
    name = "aligner"
    consumes = (topics.LABELS,)

    def __init__(self, scorer: Scorer, load_audio: Callable[[pb.Clip, int], Audio], sample_rate: int = 16_000, *,
                 keep_audio_embedding: bool = False):
        self.scorer, self.load_audio, self.sample_rate = scorer, load_audio, sample_rate
        self.keep_audio_embedding = keep_audio_embedding  # only the class-vector clusterer needs it

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
        for i, result in zip(todo, results):
            alignment = align(proposals[i], result.scores, self.scorer.scorer_id)
            if self.keep_audio_embedding and result.audio_embedding is not None:
                alignment.audio_embedding.extend(result.audio_embedding.tolist())
            outs[i].append(Out(topics.ALIGNMENTS, proposals[i].clip.clip_id, alignment))
        return outs


def align(proposal: pb.LabelProposal, scores: np.ndarray, scorer_id: str) -> pb.Alignment:
    best = int(np.argmax(scores))
    return pb.Alignment(
        clip=proposal.clip, model_id=proposal.model_id, scorer_id=scorer_id,
        scores=[pb.LabelScore(label=label, score=float(s)) for label, s in zip(proposal.labels, scores)],
        best_label=proposal.labels[best], best_score=float(scores[best]), tags=proposal.tags,
    )
