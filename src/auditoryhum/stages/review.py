"""Review stage: picks the least-aligned clips for a human check and emits every clip's final label.

Selection is per dataset: the top ``fraction`` of clips (at least one) in the policy's ``rank`` (lowest score, highest
labelers' disagreement, or both: :mod:`auditoryhum.review.rank`) once every clip of the dataset is scored or
dead-lettered, or, with an absolute ``threshold``, every clip below it as it streams in.
Without reviewers (``auto_accept``, the embedded default) selected clips are queued and keep the model's label.
With reviewers, a selected clip waits for a :class:`ReviewDecision`: accept keeps the label; a correction goes to the
aligner to be scored (the paper's before/after measure) and its best label becomes final with that score (a
reviewer may type several comma-separated pairs: all are scored, as in the authors' code); re-label sends the clip
back to the labeler with the reviewer's hint; unusable removes it. Every decision is recorded once (idempotent).
When all final labels of a dataset are out, a ``DatasetSealed`` tells the clusterer how many to expect.

With a target ``precision`` instead of a threshold, the threshold comes from the reviewers
(:mod:`auditoryhum.review.calibration`): once the dataset is complete, its lowest ``fraction`` of scores become tasks
and the other clips are held; each time a batch is decided, the calibration is refitted and, until it reaches the
target, the next lowest fraction follows. Once the decisions confirm P(accept) ≥ target from some score on (see
:meth:`~auditoryhum.review.calibration.Calibration.threshold`), every clip below it has been reviewed and the held
clips, all above it, are final with the model's label: a stopping rule for reviewing from the bottom up. Closing
the review first, or having no reviewers (``auto_accept``), falls back to the lowest fraction. The calibration is
refitted from the stored decisions whenever it is needed, so it holds across restarts and replicas.

State lives in a :class:`~auditoryhum.store.Store`, one row per clip, so a restarted service resumes where the
committed state left it and a replayed record is recognised by its clip id and ignored.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import ContextManager

from google.protobuf.message import Message
from sqlalchemy import Connection, func, insert, select, update

from auditoryhum import topics
from auditoryhum.labels import parse_labels
from auditoryhum.review.calibration import CALIBRATED, METHODS, calibrated_threshold
from auditoryhum.review.rank import RANKS, REASONS, suspect_order
from auditoryhum.stages.base import Out, Stage, dead_letter
from auditoryhum.stages.labeler import HINT_KEY
from auditoryhum.store import Store, lock_row, review_clips, review_datasets, review_decisions
from auditoryhum.v1 import pipeline_pb2 as pb

# Dead letters from these stages mean a clip will never reach review: they count towards dataset completion. So
# does review's own dead letter of an alignment (its handler failed on it for good); one of a decision does not:
# the task stays pending.
UPSTREAM_STAGES = frozenset({"ingest", "labeler", "aligner"})
ALIGNMENT_TYPE = pb.Alignment.DESCRIPTOR.full_name
SCORED, PENDING, RESCORING, RELABELLING = "scored", "pending", "rescoring", "relabelling"
FINAL, REMOVED, DEAD = "final", "removed", "dead"
ACTIONS = {pb.REVIEW_ACTION_ACCEPT: "accept", pb.REVIEW_ACTION_CORRECT: "correct",
           pb.REVIEW_ACTION_UNUSABLE: "unusable", pb.REVIEW_ACTION_RELABEL: "relabel"}
HUMAN_MODEL_ID = "human"  # model_id of the proposal that asks the aligner to score a reviewer's correction
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewPolicy:
    fraction: float = 0.01
    threshold: float | None = None
    auto_accept: bool = True
    # Exactly these clips are reviewed, once the dataset is complete (the clips a published annotation file
    # reviewed); None: the lowest fraction, or the threshold.
    clips: frozenset[str] | None = None
    rank: str = "score"  # what the fraction is the top of (auditoryhum.review.rank)
    # A target P(reviewer accepts) instead of a raw threshold: the threshold is calibrated from the decisions.
    precision: float | None = None
    calibration: str = "isotonic"

    def __post_init__(self):
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError("review fraction must be in (0, 1]")
        if self.rank not in RANKS:
            raise ValueError(f"review rank must be one of {', '.join(RANKS)}")
        if self.rank != "score" and (self.threshold is not None or self.precision is not None):
            raise ValueError("a review threshold (a score threshold) or precision goes up the scores: rank score only")
        check_precision(self.precision, self.threshold)
        if self.calibration not in METHODS:
            raise ValueError(f"review calibration must be one of {', '.join(METHODS)}, not {self.calibration!r}")


def check_precision(precision: float | None, threshold: float | None) -> None:
    if precision is None:
        return
    if threshold is not None:
        raise ValueError("give a review threshold or a review precision, not both: the precision sets the threshold")
    if not 0.0 < precision < 1.0:
        raise ValueError(f"review precision is a target P(reviewer accepts) in (0, 1), not {precision:g}")


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
                taxonomy = {"taxonomy": message.taxonomy} if message.taxonomy else {}
                db.execute(update(review_datasets).where(review_datasets.c.dataset == message.dataset)
                           .values(expected=message.expected_clips, **taxonomy))
                return self._progress(db, message.dataset)
            if isinstance(message, pb.Alignment):
                return self._on_alignment(db, message)
            if isinstance(message, pb.DeadLetter):
                return self._on_dead_letter(db, message)
            if isinstance(message, pb.ReviewDecision):
                return self._on_decision(db, message)
            return []

    def close_review(self, dataset: str) -> list[Out]:
        """Ends a dataset's human review: tasks nobody decided keep the model's label, as without reviewers, and so
        do clips held for a calibration that was not reached."""
        with self.store.transaction() as db:
            complete = self._dataset(db, dataset).complete  # locked first, as every change to a dataset
            precision = self.policy.precision
            held = [SCORED] if precision is not None and complete else []
            rows = db.execute(select(review_clips.c.alignment).where(
                review_clips.c.dataset == dataset, review_clips.c.status.in_([PENDING, *held]))).scalars().all()
            if held and (n := self._count(db, dataset, SCORED)):
                log.warning("dataset %s: review closed before the calibration reached precision %g; %d held clips "
                            "keep the model's label", dataset, precision, n)
            outs = [self._final(db, pb.Alignment.FromString(b)) for b in rows]
            return outs + self._seal(db, dataset)

    def overdue(self, deadline_s: float, now: float) -> list[str]:
        """Complete datasets whose review is still open ``deadline_s`` after their tasks were issued."""
        with self.store.transaction() as db:
            return list(db.execute(select(review_datasets.c.dataset).where(
                review_datasets.c.complete.is_(True), review_datasets.c.sealed.is_(False),
                review_datasets.c.completed_at <= now - deadline_s)).scalars())

    # -- handlers ---------------------------------------------------------------------------------------------------

    def _dataset(self, db: Connection, dataset: str):
        """The dataset's row, locked: every change to a dataset takes it first (replicas sharing the store)."""
        return lock_row(db, review_datasets, dataset=dataset)

    lock = _dataset  # for the desk: a decision locks the dataset before its task

    def _status(self, db: Connection, dataset: str, clip_id: str) -> str | None:
        return db.execute(select(review_clips.c.status).where(review_clips.c.dataset == dataset,
                                                              review_clips.c.clip_id == clip_id)).scalar()

    def _count(self, db: Connection, dataset: str, status: str) -> int:
        return db.execute(select(func.count()).select_from(review_clips).where(
            review_clips.c.dataset == dataset, review_clips.c.status == status)).scalar()

    def _set(self, db: Connection, clip: pb.Clip, **values) -> None:
        db.execute(update(review_clips).where(review_clips.c.dataset == clip.dataset,
                                              review_clips.c.clip_id == clip.clip_id).values(**values))

    def _on_alignment(self, db: Connection, alignment: pb.Alignment) -> list[Out]:
        clip = alignment.clip
        if clip.taxonomy and self._dataset(db, clip.dataset).taxonomy is None:
            db.execute(update(review_datasets).where(review_datasets.c.dataset == clip.dataset)
                       .values(taxonomy=clip.taxonomy))  # for its DatasetSealed, when the announcement had none
        status = self._status(db, clip.dataset, clip.clip_id)
        if status in (RESCORING, RELABELLING):  # the aligner's score of a reviewer's correction or re-labelling
            return [self._decided(db, alignment), *self._seal(db, clip.dataset)]
        if status is not None:
            return []  # a replay: its outputs were already emitted
        db.execute(insert(review_clips).values(dataset=clip.dataset, clip_id=clip.clip_id, status=SCORED,
                                               score=alignment.best_score, label=alignment.best_label,
                                               alignment=alignment.SerializeToString()))
        if self.policy.threshold is None or self.policy.clips is not None:
            return self._progress(db, clip.dataset)
        if alignment.best_score < self.policy.threshold:
            outs = self._select(db, alignment, f"score below {self.policy.threshold:g}")
        else:
            outs = [self._final(db, alignment)]
        return outs + self._progress(db, clip.dataset)

    def _on_dead_letter(self, db: Connection, letter: pb.DeadLetter) -> list[Out]:
        own = letter.stage == self.name and letter.payload_type == ALIGNMENT_TYPE
        if not (letter.stage in UPSTREAM_STAGES or own) or not letter.clip_id:
            return []
        self._dataset(db, letter.dataset)
        status = self._status(db, letter.dataset, letter.clip_id)
        if status is None:
            db.execute(insert(review_clips).values(dataset=letter.dataset, clip_id=letter.clip_id, status=DEAD,
                                                   reason=letter.reason))
        elif status in (RESCORING, RELABELLING):  # the re-labelling or the re-scoring failed: the clip is out
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
        db.execute(update(review_datasets).where(review_datasets.c.dataset == dataset)
                   .values(complete=True, completed_at=time.time()))
        rows = db.execute(select(review_clips.c.alignment).where(review_clips.c.dataset == dataset,
                                                                 review_clips.c.status == SCORED)
                          .order_by(review_clips.c.score, review_clips.c.clip_id)).scalars().all()
        outs: list[Out] = []
        if rows:
            alignments = [pb.Alignment.FromString(b) for b in rows]
            if self.policy.clips is not None:
                chosen = [a for a in alignments if a.clip.clip_id in self.policy.clips]
                rest = [a for a in alignments if a.clip.clip_id not in self.policy.clips]
                reason = "annotated by a reviewer"
            elif self.policy.precision is not None and not self.policy.auto_accept:
                return outs + self._calibrate(db, dataset) + self._seal(db, dataset)
            else:
                n = max(1, math.ceil(self.policy.fraction * len(alignments)))
                order = suspect_order([a.best_score for a in alignments], [a.disagreement for a in alignments],
                                      self.policy.rank)
                chosen, rest = [alignments[i] for i in order[:n]], [alignments[i] for i in order[n:]]
                reason = REASONS[self.policy.rank].format(self.policy.fraction)
                if self.policy.precision is not None:
                    log.warning("dataset %s: no reviewers, so no calibration for precision %g; reviewing the %s",
                                dataset, self.policy.precision, reason)
            for a in chosen:
                outs += self._select(db, a, reason)
            outs += [self._final(db, a) for a in rest]
        return outs + self._seal(db, dataset)

    def _calibrate(self, db: Connection, dataset: str) -> list[Out]:
        """Precision mode, once the dataset is complete and no task is pending: once calibrated, the held clips are
        final; until then, the next lowest fraction of scores become tasks."""
        if not self._count(db, dataset, SCORED) or self._count(db, dataset, PENDING):
            return []  # nothing held, or reviewers are still on a batch: refitted once it is decided
        precision = self.policy.precision
        threshold, why = calibrated_threshold(db, dataset, precision, self.policy.calibration)
        held = [pb.Alignment.FromString(b) for b in db.execute(
            select(review_clips.c.alignment).where(review_clips.c.dataset == dataset, review_clips.c.status == SCORED)
            .order_by(review_clips.c.score, review_clips.c.clip_id)).scalars()]
        if threshold is not None:
            # Decisions at or above the threshold confirm it, and batches go up from the lowest scores, so every
            # held clip scores at least as high: all of them reach the target and keep the model's label.
            reason = f"{CALIBRATED} at least {precision:g} (score ≥ {threshold:.4g})"
            log.info("dataset %s: %s: %d held clips keep the model's label", dataset, reason, len(held))
            outs = []
            for a in held:
                self._set(db, a.clip, reason=reason)  # the record of why it was not reviewed
                outs.append(self._final(db, a))
            return outs
        scored = db.execute(select(func.count()).select_from(review_clips).where(
            review_clips.c.dataset == dataset, review_clips.c.score.is_not(None))).scalar()
        n = max(1, math.ceil(self.policy.fraction * scored))
        reason = f"lowest scores, {self.policy.fraction:.0%} at a time, until calibrated to precision {precision:g}"
        log.info("dataset %s: not calibrated yet (%s): next %d of %d held clips to review", dataset, why,
                 min(n, len(held)), len(held))
        return [o for a in held[:n] for o in self._select(db, a, reason)]

    def _select(self, db: Connection, alignment: pb.Alignment, reason: str) -> list[Out]:
        task = pb.ReviewTask(task_id=f"{alignment.clip.clip_id}/review", alignment=alignment, reason=reason)
        task.created_at.GetCurrentTime()
        outs = [Out(topics.REVIEW_TASKS, alignment.clip.clip_id, task)]
        if self.policy.auto_accept:
            outs.append(self._final(db, alignment))
            self._set(db, alignment.clip, task_id=task.task_id, reason=reason)
        else:
            self._set(db, alignment.clip, status=PENDING, task_id=task.task_id, reason=reason)
        return outs

    def _on_decision(self, db: Connection, decision: pb.ReviewDecision) -> list[Out]:
        pending = select(review_clips).where(review_clips.c.task_id == decision.task_id,
                                              review_clips.c.status == PENDING)
        if (row := db.execute(pending).first()) is None:
            return []  # unknown or already decided: decisions are idempotent
        self._dataset(db, row.dataset)
        if (row := db.execute(pending).first()) is None:  # decided by another replica while we waited for the lock
            return []
        alignment = pb.Alignment.FromString(row.alignment)
        clip, action = alignment.clip, decision.action
        label = alignment.best_label
        if action == pb.REVIEW_ACTION_CORRECT:
            labels = parse_labels(decision.label, self.max_words)
            if not labels:  # the task stays pending
                return [dead_letter(self.name, f"correction has no usable label: {decision.label[:200]!r}", decision,
                                    clip=clip)]
            label = ", ".join(labels)  # several pairs: the aligner scores them all and the best is final
        elif action not in ACTIONS:
            return [dead_letter(self.name, "decision has no action", decision, clip=clip)]
        db.execute(insert(review_decisions).values(
            task_id=decision.task_id, dataset=row.dataset, clip_id=row.clip_id, action=ACTIONS[action],
            label=label if action == pb.REVIEW_ACTION_CORRECT else None, hint=decision.hint or None,
            reviewer=decision.reviewer or "anonymous", score_before=row.score,
            decided_at=decision.decided_at.ToNanoseconds() / 1e9 if decision.HasField("decided_at") else time.time()))
        if action == pb.REVIEW_ACTION_ACCEPT:
            outs = [self._final(db, alignment, pb.LABEL_SOURCE_HUMAN, pb.REVIEW_ACTION_ACCEPT)]
            self._record_after(db, decision.task_id, label, alignment.best_score)
        elif action == pb.REVIEW_ACTION_CORRECT:  # final once the aligner has scored the new label
            self._set(db, clip, status=RESCORING, lease_owner=None, lease_expires=None)
            proposal = pb.LabelProposal(clip=clip, model_id=HUMAN_MODEL_ID, prompt_id="review", raw_text=decision.label,
                                        labels=labels, tags=alignment.tags)
            outs = [Out(topics.LABELS, clip.clip_id, proposal)]
        elif action == pb.REVIEW_ACTION_RELABEL:
            again = pb.Clip()
            again.CopyFrom(clip)
            again.metadata[HINT_KEY] = decision.hint
            self._set(db, clip, status=RELABELLING, lease_owner=None, lease_expires=None)
            outs = [Out(topics.CLIPS, clip.clip_id, again)]
        else:
            self._set(db, clip, status=REMOVED, lease_owner=None, lease_expires=None)
            outs = []
        if self.policy.precision is not None and self._dataset(db, row.dataset).complete:
            outs += self._calibrate(db, row.dataset)
        return outs + self._seal(db, row.dataset)

    def _decided(self, db: Connection, alignment: pb.Alignment) -> Out:
        """The final label of a corrected or re-labelled clip, with the aligner's score of its new label."""
        clip = alignment.clip
        row = db.execute(select(review_clips.c.task_id, review_clips.c.status, review_clips.c.score,
                                review_clips.c.alignment)
                         .where(review_clips.c.dataset == clip.dataset, review_clips.c.clip_id == clip.clip_id)).one()
        corrected = row.status == RESCORING
        self._record_after(db, row.task_id, alignment.best_label, alignment.best_score)
        # A re-labelled clip's label is still the model's (now with the human hint in its prompt).
        return self._final(db, alignment, pb.LABEL_SOURCE_HUMAN if corrected else pb.LABEL_SOURCE_MODEL,
                           pb.REVIEW_ACTION_CORRECT if corrected else pb.REVIEW_ACTION_RELABEL, score=row.score,
                           disagreement=pb.Alignment.FromString(row.alignment).disagreement)

    def _record_after(self, db: Connection, task_id: str, label: str, score: float) -> None:
        db.execute(update(review_decisions).where(review_decisions.c.task_id == task_id)
                   .values(final_label=label, score_after=score))

    def _final(self, db: Connection, alignment: pb.Alignment, source: int = pb.LABEL_SOURCE_MODEL,
               action: int = pb.REVIEW_ACTION_UNSPECIFIED, score: float | None = None,
               disagreement: float | None = None) -> Out:
        """The clip's final label: the alignment's best label. ``score`` and ``disagreement`` are the model's
        original ones when the alignment is a re-scoring."""
        self._set(db, alignment.clip, status=FINAL, label=alignment.best_label, lease_owner=None, lease_expires=None)
        final = pb.FinalLabel(clip=alignment.clip, label=alignment.best_label, source=source,
                              score=alignment.best_score if score is None else score,
                              final_score=alignment.best_score, review_action=action,
                              model_id=alignment.model_id, audio_embedding=alignment.audio_embedding,
                              disagreement=alignment.disagreement if disagreement is None else disagreement)
        return Out(topics.FINAL_LABELS, alignment.clip.clip_id, final)

    def _seal(self, db: Connection, dataset: str) -> list[Out]:
        state = self._dataset(db, dataset)
        if state.sealed or not state.complete:
            return []
        counts = dict(db.execute(select(review_clips.c.status, func.count()).where(review_clips.c.dataset == dataset)
                                 .group_by(review_clips.c.status)).all())
        if any(counts.get(s) for s in (SCORED, PENDING, RESCORING, RELABELLING)):
            return []
        db.execute(update(review_datasets).where(review_datasets.c.dataset == dataset).values(sealed=True))
        sealed = pb.DatasetSealed(dataset=dataset, final_labels=counts.get(FINAL, 0), dead_letters=counts.get(DEAD, 0),
                                  removed=counts.get(REMOVED, 0), taxonomy=state.taxonomy or "")
        return [Out(topics.FINAL_LABELS, dataset, sealed)]

