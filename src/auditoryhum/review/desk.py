"""The review desk: what reviewers do to the review stage's tasks, shared by the web UI, the gRPC API and the
Label Studio import.

A reviewer leases a task before deciding it, so two reviewers never work on the same clip; a lease lapses after
``lease_s`` and the task is free again. Taking a lease is one conditional UPDATE (free or expired → mine), atomic on
SQLite and PostgreSQL alike, so it holds across processes sharing one database. A decision is applied by the stage's
own handler through its worker: the decision, the task's new state and the records they emit (the final label,
the correction to score, the clip to label again, the decision itself) commit in one transaction, through the
stage's outbox, and reach the bus after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import and_, func, or_, select, update

from auditoryhum import topics
from auditoryhum.labels import parse_labels
from auditoryhum.runner import StageWorker
from auditoryhum.stages.base import Out
from auditoryhum.stages.review import ACTIONS, FINAL, PENDING, RELABELLING, RESCORING, ReviewStage
from auditoryhum.store import review_clips, review_datasets, review_decisions
from auditoryhum.uris import UriPolicy, UriRefused
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2 as api

MAX_REVIEWER_CHARS = 100
MAX_TEXT_CHARS = 500


class ReviewError(Exception):
    """A request the desk refuses; the message says why and is safe to show."""


class TaskGone(ReviewError):
    """No pending task of that id: unknown, or decided already."""


class NotComplete(ReviewError):
    """The dataset still has clips to score: its review cannot be closed yet."""


class LeaseHeld(ReviewError):
    def __init__(self, task_id: str, holder: str, expires: float):
        super().__init__(f"task {task_id!r} is being reviewed by {holder!r} for {max(0, expires - time.time()):.0f} s more")
        self.holder, self.expires = holder, expires


@dataclass(frozen=True)
class TaskView:
    task_id: str
    dataset: str
    clip_id: str
    uri: str
    score: float
    best_label: str
    scores: list[tuple[str, float]]
    tags: list[tuple[str, float]]
    reason: str
    lease_owner: str | None
    lease_expires: float | None
    task: pb.ReviewTask = field(repr=False, compare=False)  # the same, as the API sends it


@dataclass(frozen=True)
class Outcome:
    status: str  # final, rescoring, relabelling or removed
    duplicate: bool = False
    final_label: pb.FinalLabel | None = None


class ReviewDesk:
    def __init__(self, worker: StageWorker, lease_s: float = 300.0, clock: Callable[[], float] = time.time, *,
                 audio_uris: UriPolicy = UriPolicy()):
        """``audio_uris``: the clips whose audio the desk serves (:meth:`audio_path`); by default none."""
        if not isinstance(worker.stage, ReviewStage):
            raise TypeError("the review desk needs the review stage's worker")
        self.worker, self.stage, self.store = worker, worker.stage, worker.stage.store
        self.lease_s, self.clock, self.audio_uris = lease_s, clock, audio_uris

    # -- reading ----------------------------------------------------------------------------------------------------

    def datasets(self) -> list[str]:
        with self.store.transaction() as db:
            return list(db.execute(select(review_clips.c.dataset).where(review_clips.c.task_id.is_not(None)).distinct()
                                   .order_by(review_clips.c.dataset)).scalars())

    def tasks(self, dataset: str = "", limit: int = 100, offset: int = 0) -> list[TaskView]:
        """Tasks awaiting a decision, worst score first."""
        query = select(review_clips).where(review_clips.c.status == PENDING)
        if dataset:
            query = query.where(review_clips.c.dataset == dataset)
        query = query.order_by(review_clips.c.score, review_clips.c.clip_id).limit(limit).offset(offset)
        with self.store.transaction() as db:
            return [self._view(row) for row in db.execute(query)]

    def task(self, task_id: str) -> TaskView | None:
        with self.store.transaction() as db:
            row = db.execute(select(review_clips).where(review_clips.c.task_id == task_id,
                                                        review_clips.c.status == PENDING)).first()
            return self._view(row) if row else None

    def labels(self, dataset: str = "", prefix: str = "", limit: int = 50) -> list[str]:
        """Final labels already given in a dataset (model or human), for picking a correction; most used first."""
        count = func.count().label("n")
        query = select(review_clips.c.label, count).where(review_clips.c.status == FINAL,
                                                          review_clips.c.label.startswith(prefix.strip().lower(),
                                                                                          autoescape=True))
        if dataset:
            query = query.where(review_clips.c.dataset == dataset)
        query = query.group_by(review_clips.c.label).order_by(count.desc(), review_clips.c.label).limit(limit)
        with self.store.transaction() as db:
            return list(db.execute(query).scalars())

    def audio_path(self, task_id: str) -> Path | None:
        """The local audio file of a pending task's clip inside the URI policy: the only files the UI ever serves.
        None alike for a uri outside the policy, a remote one and a missing file, so no answer tells them apart."""
        view = self.task(task_id)
        if view is None:
            return None
        try:
            path = Path(self.audio_uris.resolve(view.uri))
        except UriRefused:
            return None
        return path if path.is_absolute() and path.is_file() else None

    def stats(self, dataset: str = "") -> api.ReviewStats:
        now = self.clock()
        where = [review_clips.c.dataset == dataset] if dataset else []
        decided_where = [review_decisions.c.dataset == dataset] if dataset else []
        with self.store.transaction() as db:
            by_status = dict(db.execute(select(review_clips.c.status, func.count()).where(*where)
                                        .group_by(review_clips.c.status)).all())
            leased = db.execute(select(func.count()).select_from(review_clips).where(
                *where, review_clips.c.status == PENDING, review_clips.c.lease_expires > now)).scalar()
            by_action = dict(db.execute(select(review_decisions.c.action, func.count()).where(*decided_where)
                                        .group_by(review_decisions.c.action)).all())
            before, after, n_after = db.execute(select(
                func.avg(review_decisions.c.score_before), func.avg(review_decisions.c.score_after),
                func.count(review_decisions.c.score_after)).where(*decided_where)).one()
        return api.ReviewStats(
            dataset=dataset, pending=by_status.get(PENDING, 0), leased=leased, decided=sum(by_action.values()),
            accepted=by_action.get("accept", 0), corrected=by_action.get("correct", 0),
            unusable=by_action.get("unusable", 0), relabelled=by_action.get("relabel", 0),
            awaiting_score=by_status.get(RESCORING, 0) + by_status.get(RELABELLING, 0),
            mean_score_before=before or 0.0, mean_score_after=after or 0.0, scored_after=n_after)

    # -- leasing ----------------------------------------------------------------------------------------------------

    def claim(self, task_id: str, reviewer: str) -> TaskView:
        """Lease a pending task to ``reviewer`` (renewing their own lease); LeaseHeld while another holds it."""
        reviewer = reviewer_name(reviewer)
        now = self.clock()
        with self.store.transaction() as db:
            taken = db.execute(update(review_clips).where(
                review_clips.c.task_id == task_id, review_clips.c.status == PENDING, _free_or_mine(reviewer, now))
                .values(lease_owner=reviewer, lease_expires=now + self.lease_s)).rowcount
            row = db.execute(select(review_clips).where(review_clips.c.task_id == task_id,
                                                        review_clips.c.status == PENDING)).first()
        if row is None:
            raise TaskGone(f"no pending task {task_id!r}: unknown, or decided already")
        if not taken:
            raise LeaseHeld(task_id, row.lease_owner, row.lease_expires)
        return self._view(row)

    def next(self, reviewer: str, dataset: str = "", skip: str = "") -> TaskView | None:
        """Lease the worst-scoring task that is free (or already the reviewer's); None when none is left. With
        ``skip``, the reviewer puts that task back and gets the next one after it in queue order (or, past the end,
        the worst again)."""
        reviewer = reviewer_name(reviewer)
        after = None
        if skip and (skipped := self.task(skip)) is not None:
            self.release(skip, reviewer)
            after = or_(review_clips.c.score > skipped.score,
                        and_(review_clips.c.score == skipped.score, review_clips.c.clip_id > skipped.clip_id))
        for _ in range(20):  # another reviewer may take the candidate between the read and the lease: try the next
            query = select(review_clips.c.task_id).where(review_clips.c.status == PENDING,
                                                         _free_or_mine(reviewer, self.clock()))
            if dataset:
                query = query.where(review_clips.c.dataset == dataset)
            with self.store.transaction() as db:
                task_id = db.execute((query.where(after) if after is not None else query)
                                     .order_by(review_clips.c.score, review_clips.c.clip_id).limit(1)).scalar()
            if task_id is None and after is not None:  # nothing after the skipped task: from the top
                after = None
                continue
            if task_id is None:
                return None
            try:
                return self.claim(task_id, reviewer)
            except ReviewError:
                continue
        return None

    def release(self, task_id: str, reviewer: str) -> None:
        with self.store.transaction() as db:
            db.execute(update(review_clips).where(review_clips.c.task_id == task_id,
                                                  review_clips.c.lease_owner == reviewer_name(reviewer))
                       .values(lease_owner=None, lease_expires=None))

    # -- deciding ---------------------------------------------------------------------------------------------------

    def decide(self, decision: pb.ReviewDecision) -> Outcome:
        """Apply a reviewer's decision. The reviewer must hold the task's lease, or nobody may; deciding a task that
        is decided already changes nothing and answers ``duplicate``."""
        _check(decision, self.stage.max_words)
        decision.reviewer = reviewer_name(decision.reviewer)
        if not decision.HasField("decided_at"):
            decision.decided_at.FromNanoseconds(int(self.clock() * 1e9))
        with self.store.transaction() as db:
            dataset = db.execute(select(review_clips.c.dataset).where(review_clips.c.task_id == decision.task_id)
                                 ).scalar()
            if dataset is not None:  # the dataset before its task, as the stream does: no lock-order deadlock
                self.stage.lock(db, dataset)
            row = db.execute(select(review_clips).where(review_clips.c.task_id == decision.task_id)
                             .with_for_update()).first()
            if row is None:
                raise TaskGone(f"no task {decision.task_id!r}")
            if row.status != PENDING:
                done = db.execute(select(review_decisions.c.action).where(
                    review_decisions.c.task_id == decision.task_id)).scalar()
                if done is None:
                    raise TaskGone(f"task {decision.task_id!r} is no longer pending ({row.status})")
                return Outcome(row.status, duplicate=True)
            if row.lease_owner and row.lease_owner != decision.reviewer and (row.lease_expires or 0) > self.clock():
                raise LeaseHeld(decision.task_id, row.lease_owner, row.lease_expires)
            decision.clip_id = row.clip_id
            outs = self.worker.process(decision)
            status = db.execute(select(review_clips.c.status).where(review_clips.c.task_id == decision.task_id)).scalar()
            # The decision itself goes on the bus for the record (its replay is ignored: the task is decided).
            self.worker.outbox.put([Out(topics.REVIEW_DECISIONS, row.clip_id, decision)])
        # Committed: the decision, the task's new state and their records together. Now the records go out.
        self.worker.relay()
        finals = [o.message for o in outs if isinstance(o.message, pb.FinalLabel)]
        return Outcome(status, final_label=finals[0] if finals else None)

    def close(self, dataset: str) -> int:
        """End a dataset's review: the tasks nobody decided keep the model's label. Returns how many. ReviewError
        (TaskGone for a dataset it never saw) while the dataset is not complete: tasks may still come."""
        with self.store.transaction() as db:
            state = db.execute(select(review_datasets).where(review_datasets.c.dataset == dataset)).first()
            if state is None:
                raise TaskGone(f"no dataset {dataset!r} in review")
            if not state.complete:
                scored = db.execute(select(func.count()).select_from(review_clips)
                                    .where(review_clips.c.dataset == dataset)).scalar()
                raise NotComplete(f"dataset {dataset!r} is not complete: {scored} of "
                                  f"{state.expected if state.expected is not None else '?'} clips in; close it after")
        outs = self.worker.apply(lambda: self.stage.close_review(dataset))
        return sum(isinstance(o.message, pb.FinalLabel) for o in outs)

    def sealed(self, dataset: str) -> bool:
        with self.store.transaction() as db:
            return bool(db.execute(select(review_datasets.c.sealed)
                                   .where(review_datasets.c.dataset == dataset)).scalar())

    def close_overdue(self, deadline_s: float, now: float | None = None) -> dict[str, int]:
        """Close every review still open ``deadline_s`` after its tasks were issued (by the wall clock, as the
        stage records it): dataset → labels kept."""
        overdue = self.stage.overdue(deadline_s, time.time() if now is None else now)
        return {dataset: self.close(dataset) for dataset in overdue}

    # ---------------------------------------------------------------------------------------------------------------

    def _view(self, row) -> TaskView:
        alignment = pb.Alignment.FromString(row.alignment)
        leased = row.lease_owner is not None and (row.lease_expires or 0) > self.clock()
        task = pb.ReviewTask(task_id=row.task_id, alignment=alignment, reason=row.reason or "",
                             lease_owner=row.lease_owner if leased else "")
        if leased:
            task.lease_expires.FromNanoseconds(int(row.lease_expires * 1e9))
        return TaskView(
            task_id=row.task_id, dataset=row.dataset, clip_id=row.clip_id, uri=alignment.clip.uri, score=row.score,
            best_label=alignment.best_label, scores=[(s.label, s.score) for s in alignment.scores],
            tags=[(t.name, t.score) for t in alignment.tags], reason=row.reason or "",
            lease_owner=row.lease_owner if leased else None, lease_expires=row.lease_expires if leased else None,
            task=task)


def _free_or_mine(reviewer: str, now: float):
    return or_(review_clips.c.lease_owner.is_(None), review_clips.c.lease_owner == reviewer,
               and_(review_clips.c.lease_expires.is_not(None), review_clips.c.lease_expires <= now))


def reviewer_name(name: str) -> str:
    """The reviewer's name as recorded; ReviewError when it is empty or unprintable."""
    name = (name or "").strip()
    if not name:
        raise ReviewError("a reviewer name is required")
    if len(name) > MAX_REVIEWER_CHARS or not name.isprintable():
        raise ReviewError(f"reviewer name must be printable and at most {MAX_REVIEWER_CHARS} characters")
    return name


def _check(decision: pb.ReviewDecision, max_words: int) -> None:
    if not decision.task_id:
        raise ReviewError("decision.task_id is required")
    if decision.action not in ACTIONS:
        raise ReviewError("decision.action is required: accept, correct, unusable or relabel")
    for name in ("label", "hint"):
        text = getattr(decision, name)
        if len(text) > MAX_TEXT_CHARS:
            raise ReviewError(f"decision.{name} has {len(text)} characters; at most {MAX_TEXT_CHARS}")
    if decision.action == pb.REVIEW_ACTION_CORRECT and not parse_labels(decision.label, max_words):
        raise ReviewError("decision.label has no usable label text (letters, at most a few words)")
    if decision.action == pb.REVIEW_ACTION_RELABEL and not decision.hint.strip():
        raise ReviewError("decision.hint is required to re-label: say what the labeler should listen for")
