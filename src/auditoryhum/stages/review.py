"""Review stage: picks the least-aligned clips for a human check and emits every clip's final label.

Selection is per dataset: the lowest ``fraction`` of clip scores (at least one clip) once every clip of the
dataset is scored or dead-lettered, or, with an absolute ``threshold``, every clip below it as it streams in.
Without reviewers (``auto_accept``, the embedded default) selected clips are queued and keep the model's label.
When all final labels of a dataset are out, a ``DatasetSealed`` tells the clusterer how many to expect.

State lives in a :class:`~auditoryhum.store.Store`, one row per clip, so a restarted service resumes where the
committed state left it and a replayed record is recognised by its clip id and ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ContextManager

from google.protobuf.message import Message
from sqlalchemy import Connection, func, insert, select, update

from auditoryhum import topics
from auditoryhum.labels import parse_labels
from auditoryhum.stages.base import Out, Stage, dead_letter
from auditoryhum.stages.labeler import HINT_KEY
from auditoryhum.store import Store, review_clips, review_datasets
from auditoryhum.v1 import pipeline_pb2 as pb

# Dead letters from these stages mean a clip will never reach review: they count towards dataset completion.
UPSTREAM_STAGES = frozenset({"ingest", "labeler", "aligner"})
SCORED, PENDING, RELABELLING, FINAL, REMOVED, DEAD = "scored", "pending", "relabelling", "final", "removed", "dead"


@dataclass(frozen=True)
class ReviewPolicy:
    fraction: float = 0.01
    threshold: float | None = None
    auto_accept: bool = True

    def __post_init__(self):
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError("review fraction must be in (0, 1]")


class ReviewStage(Stage):
    name = "review"
    consumes = (topics.DATASETS, topics.ALIGNMENTS, topics.DLQ, topics.REVIEW_DECISIONS)

    def __init__(self, policy: ReviewPolicy = ReviewPolicy(), max_words: int = 2, store: Store | None = None):
        self.policy, self.max_words = policy, max_words
        self.store = store or Store()

    def transaction(self) -> ContextManager:
        return self.store.transaction()

    def handle(self, message: Message) -> list[Out]:
        with self.store.transaction() as db:
            if isinstance(message, pb.DatasetAnnouncement):
                self._dataset(db, message.dataset)
                db.execute(update(review_datasets).where(review_datasets.c.dataset == message.dataset)
                           .values(expected=message.expected_clips))
                return self._progress(db, message.dataset)
            if isinstance(message, pb.Alignment):
                return self._on_alignment(db, message)
            if isinstance(message, pb.DeadLetter):
                return self._on_dead_letter(db, message)
            if isinstance(message, pb.ReviewDecision):
                return self._on_decision(db, message)
            return []

    # -- queries for the API --------------------------------------------------------------------------------------

    def tasks(self, dataset: str = "", limit: int = 100, offset: int = 0) -> list[pb.ReviewTask]:
        """Tasks awaiting a decision, worst score first."""
        query = select(review_clips).where(review_clips.c.status == PENDING)
        if dataset:
            query = query.where(review_clips.c.dataset == dataset)
        query = query.order_by(review_clips.c.score, review_clips.c.clip_id).limit(limit).offset(offset)
        with self.store.transaction() as db:
            return [_task(row) for row in db.execute(query)]

    def task(self, task_id: str) -> pb.ReviewTask | None:
        with self.store.transaction() as db:
            row = db.execute(select(review_clips).where(review_clips.c.task_id == task_id,
                                                        review_clips.c.status == PENDING)).first()
            return _task(row) if row else None

    # -- handlers ---------------------------------------------------------------------------------------------------

    def _dataset(self, db: Connection, dataset: str):
        row = db.execute(select(review_datasets).where(review_datasets.c.dataset == dataset)).first()
        if row is None:
            db.execute(insert(review_datasets).values(dataset=dataset, complete=False, sealed=False))
            row = db.execute(select(review_datasets).where(review_datasets.c.dataset == dataset)).first()
        return row

    def _status(self, db: Connection, dataset: str, clip_id: str) -> str | None:
        return db.execute(select(review_clips.c.status).where(review_clips.c.dataset == dataset,
                                                              review_clips.c.clip_id == clip_id)).scalar()

    def _set(self, db: Connection, clip: pb.Clip, **values) -> None:
        db.execute(update(review_clips).where(review_clips.c.dataset == clip.dataset,
                                              review_clips.c.clip_id == clip.clip_id).values(**values))

    def _on_alignment(self, db: Connection, alignment: pb.Alignment) -> list[Out]:
        clip = alignment.clip
        self._dataset(db, clip.dataset)
        status = self._status(db, clip.dataset, clip.clip_id)
        if status == RELABELLING:  # the labeler's new answer after a reviewer's hint
            return [self._final(db, alignment, alignment.best_label, pb.LABEL_SOURCE_MODEL),
                    *self._seal(db, clip.dataset)]
        if status is not None:
            return []  # a replay: its outputs were already emitted
        db.execute(insert(review_clips).values(dataset=clip.dataset, clip_id=clip.clip_id, status=SCORED,
                                               score=alignment.best_score, alignment=alignment.SerializeToString()))
        if self.policy.threshold is None:
            return self._progress(db, clip.dataset)
        if alignment.best_score < self.policy.threshold:
            outs = self._select(db, alignment, f"score below {self.policy.threshold:g}")
        else:
            outs = [self._final(db, alignment, alignment.best_label, pb.LABEL_SOURCE_MODEL)]
        return outs + self._progress(db, clip.dataset)

    def _on_dead_letter(self, db: Connection, letter: pb.DeadLetter) -> list[Out]:
        if letter.stage not in UPSTREAM_STAGES or not letter.clip_id:
            return []
        self._dataset(db, letter.dataset)
        status = self._status(db, letter.dataset, letter.clip_id)
        if status is None:
            db.execute(insert(review_clips).values(dataset=letter.dataset, clip_id=letter.clip_id, status=DEAD,
                                                   reason=letter.reason))
        elif status == RELABELLING:  # the re-labelling failed: the clip is out
            db.execute(update(review_clips).where(review_clips.c.dataset == letter.dataset,
                                                  review_clips.c.clip_id == letter.clip_id)
                       .values(status=DEAD, reason=letter.reason))
        return self._progress(db, letter.dataset)

    def _progress(self, db: Connection, dataset: str) -> list[Out]:
        state = self._dataset(db, dataset)
        if state.complete or state.expected is None:
            return []
        seen = db.execute(select(func.count()).select_from(review_clips)
                          .where(review_clips.c.dataset == dataset)).scalar()
        if seen < state.expected:
            return []
        db.execute(update(review_datasets).where(review_datasets.c.dataset == dataset).values(complete=True))
        rows = db.execute(select(review_clips.c.alignment).where(review_clips.c.dataset == dataset,
                                                                 review_clips.c.status == SCORED)
                          .order_by(review_clips.c.score, review_clips.c.clip_id)).scalars().all()
        outs: list[Out] = []
        if rows:
            alignments = [pb.Alignment.FromString(b) for b in rows]
            n = max(1, math.ceil(self.policy.fraction * len(alignments)))
            reason = f"lowest {self.policy.fraction:.0%} of dataset scores"
            for a in alignments[:n]:
                outs += self._select(db, a, reason)
            outs += [self._final(db, a, a.best_label, pb.LABEL_SOURCE_MODEL) for a in alignments[n:]]
        return outs + self._seal(db, dataset)

    def _select(self, db: Connection, alignment: pb.Alignment, reason: str) -> list[Out]:
        task = pb.ReviewTask(task_id=f"{alignment.clip.clip_id}/review", alignment=alignment, reason=reason)
        task.created_at.GetCurrentTime()
        outs = [Out(topics.REVIEW_TASKS, alignment.clip.clip_id, task)]
        if self.policy.auto_accept:
            outs.append(self._final(db, alignment, alignment.best_label, pb.LABEL_SOURCE_MODEL))
            self._set(db, alignment.clip, task_id=task.task_id, reason=reason)
        else:
            self._set(db, alignment.clip, status=PENDING, task_id=task.task_id, reason=reason)
        return outs

    def _on_decision(self, db: Connection, decision: pb.ReviewDecision) -> list[Out]:
        row = db.execute(select(review_clips).where(review_clips.c.task_id == decision.task_id,
                                                    review_clips.c.status == PENDING)).first()
        if row is None:
            return []  # unknown or already decided: decisions are idempotent
        alignment = pb.Alignment.FromString(row.alignment)
        action = decision.action
        if action == pb.REVIEW_ACTION_ACCEPT:
            outs = [self._final(db, alignment, alignment.best_label, pb.LABEL_SOURCE_HUMAN)]
        elif action == pb.REVIEW_ACTION_CORRECT:
            labels = parse_labels(decision.label, self.max_words)
            if not labels:  # the task stays pending
                return [dead_letter(self.name, f"correction has no usable label: {decision.label[:200]!r}", decision,
                                    clip=alignment.clip)]
            outs = [self._final(db, alignment, labels[0], pb.LABEL_SOURCE_HUMAN)]
        elif action == pb.REVIEW_ACTION_RELABEL:
            clip = pb.Clip()
            clip.CopyFrom(alignment.clip)
            clip.metadata[HINT_KEY] = decision.hint
            self._set(db, clip, status=RELABELLING)
            outs = [Out(topics.CLIPS, clip.clip_id, clip)]
        elif action == pb.REVIEW_ACTION_UNUSABLE:
            self._set(db, alignment.clip, status=REMOVED)
            outs = []
        else:
            return [dead_letter(self.name, "decision has no action", decision, clip=alignment.clip)]
        return outs + self._seal(db, row.dataset)

    def _final(self, db: Connection, alignment: pb.Alignment, label: str, source: int) -> Out:
        self._set(db, alignment.clip, status=FINAL)
        final = pb.FinalLabel(clip=alignment.clip, label=label, source=source, score=alignment.best_score,
                              model_id=alignment.model_id, audio_embedding=alignment.audio_embedding)
        return Out(topics.FINAL_LABELS, alignment.clip.clip_id, final)

    def _seal(self, db: Connection, dataset: str) -> list[Out]:
        state = self._dataset(db, dataset)
        if state.sealed or not state.complete:
            return []
        counts = dict(db.execute(select(review_clips.c.status, func.count()).where(review_clips.c.dataset == dataset)
                                 .group_by(review_clips.c.status)).all())
        if counts.get(PENDING) or counts.get(RELABELLING) or counts.get(SCORED):
            return []
        db.execute(update(review_datasets).where(review_datasets.c.dataset == dataset).values(sealed=True))
        sealed = pb.DatasetSealed(dataset=dataset, final_labels=counts.get(FINAL, 0), dead_letters=counts.get(DEAD, 0))
        return [Out(topics.FINAL_LABELS, dataset, sealed)]


def _task(row) -> pb.ReviewTask:
    return pb.ReviewTask(task_id=row.task_id, alignment=pb.Alignment.FromString(row.alignment), reason=row.reason)
