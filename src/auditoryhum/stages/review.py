"""Review stage: picks the least-aligned clips for a human check and emits every clip's final label.

Selection is per dataset: the lowest ``fraction`` of clip scores (at least one clip) once every clip of the
dataset is scored or dead-lettered, or, with an absolute ``threshold``, every clip below it as it streams in.
Without reviewers (``auto_accept``, the embedded default) selected clips are queued and keep the model's label.
When all final labels of a dataset are out, a ``DatasetSealed`` tells the clusterer how many to expect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from google.protobuf.message import Message

from auditoryhum import topics
from auditoryhum.labels import parse_labels
from auditoryhum.stages.base import Out, Stage, dead_letter
from auditoryhum.stages.labeler import HINT_KEY
from auditoryhum.v1 import pipeline_pb2 as pb

# Dead letters from these stages mean a clip will never reach review: they count towards dataset completion.
UPSTREAM_STAGES = frozenset({"ingest", "labeler", "aligner"})


@dataclass(frozen=True)
class ReviewPolicy:
    fraction: float = 0.01
    threshold: float | None = None
    auto_accept: bool = True

    def __post_init__(self):
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError("review fraction must be in (0, 1]")


@dataclass
class _Dataset:
    expected: int | None = None
    scored: dict[str, bytes] = field(default_factory=dict)  # clip id → serialized Alignment, until selection
    seen: set[str] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)
    pending: dict[str, bytes] = field(default_factory=dict)  # task id → serialized Alignment, awaiting a decision
    relabelling: set[str] = field(default_factory=set)
    complete: bool = False
    sealed: bool = False
    finals: int = 0


class ReviewStage(Stage):
    name = "review"
    consumes = (topics.DATASETS, topics.ALIGNMENTS, topics.DLQ, topics.REVIEW_DECISIONS)

    def __init__(self, policy: ReviewPolicy = ReviewPolicy(), max_words: int = 2):
        self.policy, self.max_words = policy, max_words
        self._datasets: dict[str, _Dataset] = {}

    def handle(self, message: Message) -> list[Out]:
        if isinstance(message, pb.DatasetAnnouncement):
            state = self._state(message.dataset)
            state.expected = message.expected_clips
            return self._progress(message.dataset, state)
        if isinstance(message, pb.Alignment):
            return self._on_alignment(message)
        if isinstance(message, pb.DeadLetter):
            if message.stage not in UPSTREAM_STAGES or not message.clip_id:
                return []
            state = self._state(message.dataset)
            if message.clip_id not in state.seen:
                state.dead.add(message.clip_id)
                state.relabelling.discard(message.clip_id)
            return self._progress(message.dataset, state)
        if isinstance(message, pb.ReviewDecision):
            return self._on_decision(message)
        return []

    def _state(self, dataset: str) -> _Dataset:
        return self._datasets.setdefault(dataset, _Dataset())

    def _on_alignment(self, alignment: pb.Alignment) -> list[Out]:
        clip = alignment.clip
        state = self._state(clip.dataset)
        if clip.clip_id in state.relabelling:  # the labeler's new answer after a reviewer's hint
            state.relabelling.discard(clip.clip_id)
            return [self._final(state, alignment, alignment.best_label, pb.LABEL_SOURCE_MODEL), *self._seal(clip.dataset, state)]
        if clip.clip_id in state.seen or clip.clip_id in state.dead:
            return []  # a replay: its outputs were already emitted
        state.seen.add(clip.clip_id)
        if self.policy.threshold is None:
            state.scored[clip.clip_id] = alignment.SerializeToString()
            return self._progress(clip.dataset, state)
        if alignment.best_score < self.policy.threshold:
            outs = self._select(state, alignment, f"score below {self.policy.threshold:g}")
        else:
            outs = [self._final(state, alignment, alignment.best_label, pb.LABEL_SOURCE_MODEL)]
        return outs + self._progress(clip.dataset, state)

    def _progress(self, dataset: str, state: _Dataset) -> list[Out]:
        if state.complete or state.expected is None or len(state.seen) + len(state.dead) < state.expected:
            return []
        state.complete = True
        outs: list[Out] = []
        if state.scored:
            alignments = [pb.Alignment.FromString(b) for b in state.scored.values()]
            alignments.sort(key=lambda a: (a.best_score, a.clip.clip_id))
            n = max(1, math.ceil(self.policy.fraction * len(alignments)))
            reason = f"lowest {self.policy.fraction:.0%} of dataset scores"
            for a in alignments[:n]:
                outs += self._select(state, a, reason)
            outs += [self._final(state, a, a.best_label, pb.LABEL_SOURCE_MODEL) for a in alignments[n:]]
            state.scored.clear()
        return outs + self._seal(dataset, state)

    def _select(self, state: _Dataset, alignment: pb.Alignment, reason: str) -> list[Out]:
        task = pb.ReviewTask(task_id=f"{alignment.clip.clip_id}/review", alignment=alignment, reason=reason)
        task.created_at.GetCurrentTime()
        outs = [Out(topics.REVIEW_TASKS, alignment.clip.clip_id, task)]
        if self.policy.auto_accept:
            outs.append(self._final(state, alignment, alignment.best_label, pb.LABEL_SOURCE_MODEL))
        else:
            state.pending[task.task_id] = alignment.SerializeToString()
        return outs

    def _on_decision(self, decision: pb.ReviewDecision) -> list[Out]:
        for dataset, state in self._datasets.items():
            if decision.task_id in state.pending:
                break
        else:
            return []  # unknown or already decided: decisions are idempotent
        alignment = pb.Alignment.FromString(state.pending.pop(decision.task_id))
        action = decision.action
        if action == pb.REVIEW_ACTION_ACCEPT:
            outs = [self._final(state, alignment, alignment.best_label, pb.LABEL_SOURCE_HUMAN)]
        elif action == pb.REVIEW_ACTION_CORRECT:
            labels = parse_labels(decision.label, self.max_words)
            if not labels:
                state.pending[decision.task_id] = alignment.SerializeToString()
                return [dead_letter(self.name, f"correction has no usable label: {decision.label[:200]!r}", decision,
                                    clip=alignment.clip)]
            outs = [self._final(state, alignment, labels[0], pb.LABEL_SOURCE_HUMAN)]
        elif action == pb.REVIEW_ACTION_RELABEL:
            clip = pb.Clip()
            clip.CopyFrom(alignment.clip)
            clip.metadata[HINT_KEY] = decision.hint
            state.relabelling.add(clip.clip_id)
            outs = [Out(topics.CLIPS, clip.clip_id, clip)]
        elif action == pb.REVIEW_ACTION_UNUSABLE:
            outs = []
        else:
            state.pending[decision.task_id] = alignment.SerializeToString()
            return [dead_letter(self.name, "decision has no action", decision, clip=alignment.clip)]
        return outs + self._seal(dataset, state)

    def _final(self, state: _Dataset, alignment: pb.Alignment, label: str, source: int) -> Out:
        state.finals += 1
        final = pb.FinalLabel(clip=alignment.clip, label=label, source=source, score=alignment.best_score,
                              model_id=alignment.model_id, audio_embedding=alignment.audio_embedding)
        return Out(topics.FINAL_LABELS, alignment.clip.clip_id, final)

    def _seal(self, dataset: str, state: _Dataset) -> list[Out]:
        if state.sealed or not state.complete or state.pending or state.relabelling:
            return []
        state.sealed = True
        sealed = pb.DatasetSealed(dataset=dataset, final_labels=state.finals, dead_letters=len(state.dead))
        return [Out(topics.FINAL_LABELS, dataset, sealed)]
