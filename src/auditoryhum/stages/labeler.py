"""Labeler stage: a clip → its label proposal (the model's raw text, the post-processed labels and the tags)."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Callable, Sequence

from auditoryhum import topics
from auditoryhum.audio import Audio, AudioError
from auditoryhum.backends import Labeler
from auditoryhum.labels import parse_labels
from auditoryhum.stages.base import Out, Stage, dead_letter
from auditoryhum.v1 import pipeline_pb2 as pb

HINT_KEY = "review_hint"  # Clip.metadata key of a reviewer's hint for re-labelling


class LabelerStage(Stage):
    """With an executor, a batch is split into one chunk per worker, each decoded and labelled on its own thread:
    decoding, features and the model all release the GIL, so two workers keep two cores busy."""

    name = "labeler"
    consumes = (topics.CLIPS,)

    def __init__(self, labeler: Labeler, load_audio: Callable[[pb.Clip, int], Audio], *, max_words: int = 2,
                 executor: Executor | None = None, workers: int = 1):
        self.labeler, self.load_audio, self.max_words = labeler, load_audio, max_words
        self._executor, self._workers = executor, max(1, workers)

    def handle(self, message: pb.Clip) -> list[Out]:
        return self.handle_batch([message])[0]

    def handle_batch(self, clips: Sequence[pb.Clip]) -> list[list[Out]]:
        if self._executor is None or self._workers == 1 or len(clips) < 2:
            return self._label(clips)
        size = -(-len(clips) // self._workers)
        chunks = [clips[i : i + size] for i in range(0, len(clips), size)]
        return [outs for chunk in self._executor.map(self._label, chunks) for outs in chunk]

    def _label(self, clips: Sequence[pb.Clip]) -> list[list[Out]]:
        outs: list[list[Out]] = [[] for _ in clips]
        loaded = [self._load(clip) for clip in clips]
        for i, audio in enumerate(loaded):
            if isinstance(audio, str):
                outs[i].append(dead_letter(self.name, audio, clips[i]))
        ready = [i for i, audio in enumerate(loaded) if isinstance(audio, Audio)]
        hints = [clips[i].metadata.get(HINT_KEY, "") for i in ready]
        descriptions = self.labeler.describe([loaded[i] for i in ready], hints) if ready else []
        for i, description, hint in zip(ready, descriptions, hints):
            clip = clips[i]
            labels = parse_labels(description.raw_text, self.max_words)
            if not labels:
                outs[i].append(dead_letter(self.name, f"no usable label in model output {description.raw_text[:200]!r}",
                                           clip))
                continue
            proposal = pb.LabelProposal(clip=clip, model_id=self.labeler.model_id, prompt_id=self.labeler.prompt_id,
                                        raw_text=description.raw_text, labels=labels, hint=hint)
            proposal.tags.extend(pb.Tag(name=n, score=s) for n, s in description.tags)
            proposal.class_probabilities.extend(description.probabilities)
            outs[i].append(Out(topics.LABELS, clip.clip_id, proposal))
        return outs

    def _load(self, clip: pb.Clip) -> Audio | str:
        try:
            return self.load_audio(clip, self.labeler.sample_rate)
        except AudioError as exc:
            return str(exc)
