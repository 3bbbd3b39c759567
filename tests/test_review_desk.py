"""The review desk: leases, decisions, progress and uplift over the real review stage and its store — SQLite and a
real PostgreSQL server, with reviewers racing from separate connections."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from auditoryhum import topics
from auditoryhum.bus.memory import InMemoryBus
from auditoryhum.review.desk import LeaseHeld, ReviewDesk, ReviewError, TaskGone
from auditoryhum.runner import StageWorker
from auditoryhum.stages.review import HUMAN_MODEL_ID, ReviewPolicy, ReviewStage
from auditoryhum.store import Store
from auditoryhum.v1 import pipeline_pb2 as pb

TASKS = 24


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def desk_on(url: str, clock=None, lease_s: float = 60.0) -> ReviewDesk:
    stage = ReviewStage(ReviewPolicy(fraction=0.5, auto_accept=False), store=Store(url))
    return ReviewDesk(StageWorker(InMemoryBus(), stage), lease_s=lease_s, **({"clock": clock} if clock else {}))


def fill(desk: ReviewDesk, clips: int = 2 * TASKS, dataset: str = "d") -> None:
    """A dataset whose lower half of scores becomes review tasks."""
    desk.worker.process(pb.DatasetAnnouncement(dataset=dataset, expected_clips=clips))
    for i in range(clips):
        clip = pb.Clip(clip_id=f"c{i:03d}", dataset=dataset, uri=f"/audio/{i}.wav")
        desk.worker.process(pb.Alignment(clip=clip, best_label=f"label {i % 5}", best_score=i / 100, model_id="m",
                                         scores=[pb.LabelScore(label=f"label {i % 5}", score=i / 100)],
                                         tags=[pb.Tag(name="Vehicle", score=0.8)]))


def published(desk: ReviewDesk, topic: str) -> list:
    return [r.message() for p in desk.worker.bus._topics.get(topic, []) for r in p.records]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.db'}"
    return request.getfixturevalue("postgres_db")


def test_a_lease_keeps_other_reviewers_out_until_it_lapses():
    clock = Clock()
    desk = desk_on("sqlite://", clock, lease_s=60)
    fill(desk)
    worst = desk.next("ann")
    assert worst.task_id == "c000/review" and worst.lease_owner == "ann"
    assert desk.next("ann").task_id == worst.task_id  # her own task comes back first
    assert desk.next("bob").task_id == "c001/review"  # bob gets the next worst
    with pytest.raises(LeaseHeld, match="ann"):
        desk.claim(worst.task_id, "bob")
    with pytest.raises(LeaseHeld):
        desk.decide(pb.ReviewDecision(task_id=worst.task_id, action=pb.REVIEW_ACTION_ACCEPT, reviewer="bob"))
    clock.now += 61  # ann walked away
    assert desk.claim(worst.task_id, "bob").lease_owner == "bob"
    desk.release(worst.task_id, "bob")
    assert desk.task(worst.task_id).lease_owner is None
    assert desk.stats("d").leased == 0  # bob's second task lapsed too


def test_decisions_flow_on_and_report_the_uplift():
    desk = desk_on("sqlite://")
    fill(desk)
    tasks = [desk.next("ann") for _ in range(1)] + desk.tasks("d", limit=3)[1:3]
    accept, correct, unusable = (t.task_id for t in tasks)
    for task_id in (correct, unusable):
        desk.claim(task_id, "ann")
    outcome = desk.decide(pb.ReviewDecision(task_id=accept, action=pb.REVIEW_ACTION_ACCEPT, reviewer="ann"))
    assert outcome.status == "final" and outcome.final_label.source == pb.LABEL_SOURCE_HUMAN
    assert desk.decide(pb.ReviewDecision(task_id=accept, action=pb.REVIEW_ACTION_CORRECT, label="x",
                                         reviewer="ann")).duplicate  # decided once: a second decision changes nothing
    assert desk.decide(pb.ReviewDecision(task_id=correct, action=pb.REVIEW_ACTION_CORRECT, label="Bus  Engine!",
                                         reviewer="ann")).status == "rescoring"
    assert desk.decide(pb.ReviewDecision(task_id=unusable, action=pb.REVIEW_ACTION_UNUSABLE,
                                         reviewer="ann")).status == "removed"
    with pytest.raises(TaskGone):
        desk.claim(accept, "ann")
    with pytest.raises(ReviewError, match="hint"):
        desk.decide(pb.ReviewDecision(task_id=desk.tasks("d")[0].task_id, action=pb.REVIEW_ACTION_RELABEL,
                                      reviewer="ann"))
    # The aligner's answer to the correction makes it final, with its new score.
    proposal = published(desk, topics.LABELS)[0]
    assert proposal.model_id == HUMAN_MODEL_ID and list(proposal.labels) == ["bus engine"]
    desk.worker.process(pb.Alignment(clip=proposal.clip, model_id=HUMAN_MODEL_ID, best_label="bus engine",
                                     best_score=0.9, scores=[pb.LabelScore(label="bus engine", score=0.9)]))
    stats = desk.stats("d")
    assert (stats.decided, stats.accepted, stats.corrected, stats.unusable, stats.awaiting_score) == (3, 1, 1, 1, 0)
    assert stats.pending == TASKS - 3
    assert stats.mean_score_before == pytest.approx((0.00 + 0.01 + 0.02) / 3)
    assert (stats.scored_after, stats.mean_score_after) == (2, pytest.approx((0.00 + 0.9) / 2))
    assert "bus engine" in desk.labels("d", prefix="bu")
    # Finishing the review: the rest keep the model's label, and the dataset is sealed.
    assert desk.close("d") == TASKS - 3
    finals = [m for m in published(desk, topics.FINAL_LABELS) if isinstance(m, pb.FinalLabel)]
    assert len(finals) == 2 * TASKS - 1  # every clip but the unusable one
    assert Counter(f.source for f in finals)[pb.LABEL_SOURCE_HUMAN] == 2
    sealed = [m for m in published(desk, topics.FINAL_LABELS) if isinstance(m, pb.DatasetSealed)]
    assert sealed == [pb.DatasetSealed(dataset="d", final_labels=2 * TASKS - 1, removed=1)]


def test_no_task_is_ever_leased_to_two_reviewers(url):
    """Eight reviewers, each on their own connection (as separate replicas would be), race for the queue."""
    fill(desk_on(url))
    reviewers = [desk_on(url) for _ in range(8)]
    start = threading.Barrier(len(reviewers))
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def work(i: int, desk: ReviewDesk) -> None:
        mine = claimed.setdefault(f"r{i}", [])
        try:
            start.wait()
            while (task := desk.next(f"r{i}", "d")) is not None:
                mine.append(task.task_id)
                desk.decide(pb.ReviewDecision(task_id=task.task_id, action=pb.REVIEW_ACTION_ACCEPT, reviewer=f"r{i}"))
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, d)) for i, d in enumerate(reviewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    every = [task for tasks in claimed.values() for task in tasks]
    assert len(every) == len(set(every)) == TASKS  # each task leased once, and all of them done
    finals = [m for d in reviewers for m in published(d, topics.FINAL_LABELS) if isinstance(m, pb.FinalLabel)]
    assert sorted(f.clip.clip_id for f in finals) == sorted(t.removesuffix("/review") for t in every)
    assert desk_on(url).stats("d").accepted == TASKS


def test_racing_for_one_task_has_one_winner(url):
    fill(desk_on(url))
    reviewers = [desk_on(url) for _ in range(6)]
    start = threading.Barrier(len(reviewers))
    won: list[str] = []
    lost: list[str] = []

    def race(i: int, desk: ReviewDesk) -> None:
        start.wait()
        try:
            desk.claim("c000/review", f"r{i}")
            won.append(f"r{i}")
        except LeaseHeld:
            lost.append(f"r{i}")

    threads = [threading.Thread(target=race, args=(i, d)) for i, d in enumerate(reviewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1 and len(lost) == len(reviewers) - 1
    assert desk_on(url).task("c000/review").lease_owner == won[0]


def test_a_review_past_its_deadline_closes_and_keeps_the_models_labels(tmp_path):
    desk = desk_on(f"sqlite:///{tmp_path / 'review.db'}")
    fill(desk, clips=8)  # 4 tasks
    desk.decide(pb.ReviewDecision(task_id="c000/review", action=pb.REVIEW_ACTION_UNUSABLE, reviewer="ann"))
    now = time.time()
    assert desk.close_overdue(3600, now) == {}  # still within the deadline
    assert desk.stats("d").pending == 3
    assert desk.close_overdue(3600, now + 3601) == {"d": 3}
    assert desk.stats("d").pending == 0 and desk.sealed("d")
    finals = [f for f in published(desk, topics.FINAL_LABELS) if isinstance(f, pb.FinalLabel)]
    assert sorted(f.clip.clip_id for f in finals) == [f"c{i:03d}" for i in range(1, 8)]  # c000 unusable: removed
    assert desk.close_overdue(3600, now + 7200) == {}  # sealed: nothing left to close


def test_replicas_deciding_a_datasets_last_tasks_at_once_seal_it_once(postgres_db):
    """Two replicas on one PostgreSQL database decide the dataset's last two tasks at the same moment. Each must
    see the other's decision, or neither seals the dataset (each finds the other task pending) and its taxonomy is
    never built. The dataset's row lock makes the second wait for the first, then seal."""
    first, second = desk_on(postgres_db), desk_on(postgres_db)
    fill(first, clips=4)  # two tasks: c000, c001
    accept = lambda task: pb.ReviewDecision(task_id=task, action=pb.REVIEW_ACTION_ACCEPT, reviewer="ann")  # noqa: E731
    result = {}
    with first.store.transaction():  # the first replica is half-way through deciding c000...
        first.worker.process(accept("c000/review"))
        racing = threading.Thread(target=lambda: result.update(outcome=second.decide(accept("c001/review"))))
        racing.start()
        racing.join(2)
        assert racing.is_alive()  # ...and the second waits for the dataset's row, not for nothing
    racing.join(60)
    assert result["outcome"].status == "final"
    seals = [m for m in published(second, topics.FINAL_LABELS) if isinstance(m, pb.DatasetSealed)]
    assert [(s.dataset, s.final_labels) for s in seals] == [("d", 4)]
    assert first.sealed("d")
