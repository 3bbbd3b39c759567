"""Clusterer stage: collects a dataset's final labels and, once the dataset is sealed, builds its taxonomy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import Message

from auditoryhum import topics
from auditoryhum.stages.base import Out, Stage, dead_letter
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.v1 import pipeline_pb2 as pb


@dataclass
class _Labels:
    by_clip: dict[str, str] = field(default_factory=dict)
    audio: dict[str, np.ndarray] = field(default_factory=dict)  # class-vector representation only
    expected: int | None = None
    built: bool = False


class ClustererStage(Stage):
    name = "clusterer"
    consumes = (topics.FINAL_LABELS,)

    def __init__(self, builder: TaxonomyBuilder):
        self.builder = builder
        self._datasets: dict[str, _Labels] = {}
        self.taxonomies: dict[str, pb.Taxonomy] = {}

    def handle(self, message: Message) -> list[Out]:
        if isinstance(message, pb.FinalLabel):
            state = self._datasets.setdefault(message.clip.dataset, _Labels())
            state.by_clip[message.clip.clip_id] = message.label  # a later decision for a clip replaces the earlier
            if self.builder.representation == "class-vector":
                if not message.audio_embedding:
                    return [dead_letter(self.name, "class-vector clustering needs the clip's audio embedding", message)]
                state.audio[message.clip.clip_id] = np.asarray(message.audio_embedding, dtype=np.float32)
            return self._maybe_build(message.clip.dataset, state)
        if isinstance(message, pb.DatasetSealed):
            state = self._datasets.setdefault(message.dataset, _Labels())
            state.expected = message.final_labels
            return self._maybe_build(message.dataset, state)
        return []

    def counts(self, dataset: str) -> Counter[str]:
        return Counter(self._datasets[dataset].by_clip.values()) if dataset in self._datasets else Counter()

    def build(self, dataset: str) -> pb.Taxonomy:
        state = self._datasets.get(dataset, _Labels())
        if self.builder.representation == "class-vector" and state.audio:
            clips = [c for c in state.by_clip if c in state.audio]
            taxonomy = self.builder.build_class_vectors(dataset, clips, [state.by_clip[c] for c in clips],
                                                        np.stack([state.audio[c] for c in clips]))
        else:
            taxonomy = self.builder.build(dataset, self.counts(dataset))
        self.taxonomies[dataset] = taxonomy
        return taxonomy

    def _maybe_build(self, dataset: str, state: _Labels) -> list[Out]:
        if state.built or state.expected is None or len(state.by_clip) < state.expected:
            return []
        state.built = True
        return [Out(topics.TAXONOMY, dataset, self.build(dataset))]
