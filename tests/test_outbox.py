"""The outbox of the stateful stages: state and outputs are durable together, and reach the bus exactly once
whatever fails between the two (a broker that refuses a flush, one that takes part of it, a process that dies)."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from auditoryhum import topics
from auditoryhum.bus import BusError
from auditoryhum.bus.codec import encode, headers
from auditoryhum.bus.memory import InMemoryBus
from auditoryhum.outbox import TOKEN_HEADER
from auditoryhum.review.desk import ReviewDesk
from auditoryhum.runner import Metrics, StageWorker, drain
from auditoryhum.stages.review import PENDING, ReviewPolicy, ReviewStage
from auditoryhum.store import Store, outbox, review_clips
from auditoryhum.v1 import pipeline_pb2 as pb


class FlakyBus(InMemoryBus):
    """The first ``failures`` flushes fail. ``delivered``: the failed flush's records reached the broker anyway
    (its answer was lost); else they never did."""

    def __init__(self, failures: int, delivered: bool = False):
        super().__init__()
        self.failures, self.delivered, self.unflushed = failures, delivered, []

    def publish_raw(self, topic, key, value, headers, route=None):
        self.unflushed.append((topic, key, value, headers, route))

    def flush(self):
        batch, self.unflushed = self.unflushed, []
        if self.failures and not self.delivered:
            self.failures -= 1
            raise BusError("broker away")
        for record in batch:
            super().publish_raw(*record)
        if self.failures:
            self.failures -= 1
            raise BusError("timed out waiting for the broker's answer")


def on_topic(bus: InMemoryBus, topic: str) -> list:
    return [r for p in bus._topics.get(topic, []) for r in p.records]


def finals(bus: InMemoryBus) -> Counter:
    return Counter(r.message().clip.clip_id for r in on_topic(bus, topics.FINAL_LABELS)
                   if r.headers["message-type"] == "auditoryhum.v1.FinalLabel")


def alignments(bus: InMemoryBus, n: int, dataset: str = "d") -> None:
    """The review stage's input, straight on the bus (past a FlakyBus's failures)."""
    InMemoryBus.publish_raw(bus, topics.DATASETS, dataset,
                            *encode(pb.DatasetAnnouncement(dataset=dataset, expected_clips=n)))
    for i in range(n):
        clip = pb.Clip(clip_id=f"c{i}", dataset=dataset)
        InMemoryBus.publish_raw(bus, topics.ALIGNMENTS, clip.clip_id,
                                *encode(pb.Alignment(clip=clip, best_label="rain", best_score=0.3 + i / 100)))


def waiting(store: Store) -> int:
    with store.transaction() as db:
        return db.execute(select(func.count()).select_from(outbox)).scalar()


@pytest.mark.parametrize("delivered", [False, True], ids=["flush-lost", "flush-delivered-answer-lost"])
def test_a_failed_flush_sends_each_record_once(tmp_path, delivered):
    store = Store(f"sqlite:///{tmp_path / 'review.db'}")
    bus = FlakyBus(failures=1, delivered=delivered)
    worker = StageWorker(bus, ReviewStage(ReviewPolicy(fraction=0.2), store=store), backoff_s=0)
    alignments(bus, 5)
    assert worker.step() == 0  # the relay failed: the records are given back...
    assert waiting(store) > 0  # ...but the state and its outputs committed together, and wait in the outbox
    assert drain([worker]) == 6  # the replay changes nothing; the relay goes out
    assert finals(bus) == {f"c{i}": 1 for i in range(5)}  # each once, whether or not the failed flush delivered
    assert len(on_topic(bus, topics.REVIEW_TASKS)) == 1 and waiting(store) == 0
    seals = [r for r in on_topic(bus, topics.FINAL_LABELS) if r.headers["message-type"].endswith("DatasetSealed")]
    assert len(seals) == 1


def test_a_successor_sends_what_a_crashed_relay_left_and_nothing_it_had_sent(tmp_path):
    """A process died after its commit: some records out (their rows not yet deleted), others not."""
    url = f"sqlite:///{tmp_path / 'review.db'}"
    bus = InMemoryBus()
    first = StageWorker(bus, ReviewStage(ReviewPolicy(fraction=0.2), store=Store(url)))
    alignments(bus, 10)
    first.outbox.relay = lambda: None  # this process dies before relaying...
    drain([first])
    assert not on_topic(bus, topics.FINAL_LABELS) and waiting(first.stage.store) == 13  # 10 finals, 2 tasks, a seal
    with first.stage.store.transaction() as db:  # ...after half of its records were out
        rows = db.execute(select(outbox).order_by(outbox.c.seq).limit(5)).all()
    for row in rows:
        InMemoryBus.publish_raw(bus, row.topic, row.key, row.payload, {**headers(row.payload_type),
                                                                       TOKEN_HEADER: row.token})

    recovered = []

    class Recording(Metrics):
        def recovered(self, stage, delivered, resent):
            recovered.append((delivered, resent))

    metrics = Recording()
    successor = StageWorker(bus, ReviewStage(ReviewPolicy(fraction=0.2), store=Store(url)), metrics=metrics)
    successor.relay()
    assert recovered == [(5, 8)]
    assert finals(bus) == {f"c{i}": 1 for i in range(10)}
    assert waiting(successor.stage.store) == 0


def test_replicas_on_one_database_relay_their_own_rows_and_a_dead_ones_once(tmp_path):
    """Two replicas share an outbox. One dies after its commit, half of its records out: the other sends its own at
    once, leaves the dead one's rows while they may still be their writer's, then sends only those not out yet."""
    url = f"sqlite:///{tmp_path / 'review.db'}"
    bus = InMemoryBus()
    dead = StageWorker(bus, ReviewStage(ReviewPolicy(fraction=0.2), store=Store(url)))
    alive = StageWorker(bus, ReviewStage(ReviewPolicy(fraction=0.2), store=Store(url)))
    now = [0.0]
    alive.outbox.clock = lambda: now[0]
    dead.outbox.relay = lambda: None  # dies before relaying...
    alignments(bus, 10, "a")
    drain([dead])
    with dead.stage.store.transaction() as db:  # ...after half of its records were out
        for row in db.execute(select(outbox).order_by(outbox.c.seq).limit(5)).all():
            InMemoryBus.publish_raw(bus, row.topic, row.key, row.payload, {**headers(row.payload_type),
                                                                           TOKEN_HEADER: row.token})
    alignments(bus, 10, "b")
    drain([alive])

    def by_dataset() -> Counter:
        return Counter((r.message().clip.dataset, r.message().clip.clip_id)
                       for r in on_topic(bus, topics.FINAL_LABELS)
                       if r.headers["message-type"] == "auditoryhum.v1.FinalLabel")

    assert {c for d, c in by_dataset() if d == "b"} == {f"c{i}" for i in range(10)}
    assert waiting(alive.stage.store) == 13  # the dead one's rows wait, the 5 out among them
    now[0] += alive.outbox.orphan_after_s
    alive.relay()
    assert by_dataset() == {(d, f"c{i}"): 1 for d in "ab" for i in range(10)}  # every final label once
    assert waiting(alive.stage.store) == 0


def test_a_decision_and_its_final_label_are_durable_together(tmp_path):
    """No window with a final label out and the task pending again: the bus refuses the decision's records, yet the
    decision stands, a second decision is a duplicate, and the final label goes out once, with the next relay."""
    url = f"sqlite:///{tmp_path / 'review.db'}"
    bus = FlakyBus(failures=0)
    stage = ReviewStage(ReviewPolicy(fraction=0.5, auto_accept=False), store=Store(url))
    desk = ReviewDesk(StageWorker(bus, stage))
    alignments(bus, 4)
    drain([desk.worker])
    [task] = desk.tasks("d", 1)
    bus.failures = 1
    with pytest.raises(BusError):
        desk.decide(pb.ReviewDecision(task_id=task.task_id, action=pb.REVIEW_ACTION_ACCEPT, reviewer="ann"))
    with stage.store.transaction() as db:
        assert db.execute(select(review_clips.c.status).where(review_clips.c.task_id == task.task_id)).scalar() \
            == "final"
    again = desk.decide(pb.ReviewDecision(task_id=task.task_id, action=pb.REVIEW_ACTION_CORRECT, label="dog bark",
                                          reviewer="bob"))
    assert again.duplicate  # the first decision stands: no second final label, no correction to score
    desk.worker.relay()
    assert finals(bus)[task.clip_id] == 1
    assert not [r for r in on_topic(bus, topics.LABELS)]
    assert [r.message().reviewer for r in on_topic(bus, topics.REVIEW_DECISIONS)] == ["ann"]


def test_a_decision_that_fails_before_its_commit_leaves_the_task_pending_and_nothing_out(tmp_path):
    url = f"sqlite:///{tmp_path / 'review.db'}"
    bus = InMemoryBus()
    stage = ReviewStage(ReviewPolicy(fraction=0.5, auto_accept=False), store=Store(url))
    desk = ReviewDesk(StageWorker(bus, stage))
    alignments(bus, 4)
    drain([desk.worker])
    [task] = desk.tasks("d", 1)
    before = len(on_topic(bus, topics.FINAL_LABELS))
    put = desk.worker.outbox.put

    def crash_on_the_record(outs):  # the decision's own record: after the final label was handled
        if any(o.topic == topics.REVIEW_DECISIONS for o in outs):
            raise RuntimeError("process dies mid-decision")
        put(outs)

    desk.worker.outbox.put = crash_on_the_record
    with pytest.raises(RuntimeError):
        desk.decide(pb.ReviewDecision(task_id=task.task_id, action=pb.REVIEW_ACTION_ACCEPT, reviewer="ann"))
    assert len(on_topic(bus, topics.FINAL_LABELS)) == before and waiting(stage.store) == 0
    assert task.task_id in [t.task_id for t in desk.tasks("d")]
    with stage.store.transaction() as db:
        assert db.execute(select(review_clips.c.status).where(review_clips.c.task_id == task.task_id)).scalar() \
            == PENDING
