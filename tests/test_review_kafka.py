"""Human review over Kafka with the real services: reviewers decide through gRPC (auto-accept off), every decision
kind crosses the services it names, and the review service killed while it emits final labels, or between
decisions, loses and duplicates nothing: each clip's final label is on the topic exactly once.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from auditoryhum import topics
from auditoryhum.bus.kafka import group_lag, read_topics
from auditoryhum.service.client import ReviewClient, wait_for_taxonomy
from auditoryhum.service.local import LocalStack
from auditoryhum.stages.labeler import HINT_KEY
from auditoryhum.stages.review import HUMAN_MODEL_ID
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import own_stack
from tests.test_distributed import cli, metric, recordings

pytestmark = pytest.mark.distributed

FRACTION = 0.02  # of each dataset's clips, the lowest scores, become tasks


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> LocalStack:
    env = {"AUDITORYHUM_REVIEW_AUTO_ACCEPT": "false", "AUDITORYHUM_REVIEW_FRACTION": str(FRACTION)}
    with own_stack(tmp_path_factory.mktemp("review-stack"), 29800, env) as stack:
        yield stack


def on_topic(stack: LocalStack, topic: str, dataset: str) -> list:
    messages = [r.message() for r in read_topics(stack.bootstrap, [topic])]
    return [m for m in messages if getattr(m, "clip", None) is not None and m.clip.dataset == dataset
            or getattr(m, "dataset", None) == dataset]


def wait_for_tasks(client: ReviewClient, dataset: str, n: int, wait_s: float = 300) -> list[pb.ReviewTask]:
    deadline = time.monotonic() + wait_s
    while len(tasks := client.pending(dataset)) < n:
        assert time.monotonic() < deadline, f"{len(tasks)} of {n} tasks after {wait_s:g} s"
        time.sleep(0.5)
    assert len(tasks) == n
    return tasks


def decide(client: ReviewClient, task: pb.ReviewTask, action: int, **fields) -> str:
    decision = pb.ReviewDecision(task_id=task.task_id, action=action, reviewer="ann", **fields)
    return client.submit(decision).clip_status


def exactly_once(finals: list[pb.FinalLabel], clips: set[str]) -> dict[str, pb.FinalLabel]:
    """The final labels on the topic: one record per clip, for exactly ``clips``."""
    by_clip = {f.clip.clip_id: f for f in finals}
    assert by_clip.keys() == clips
    assert len(finals) == len(clips), "a clip's final label is on the topic twice"
    return by_clip


def test_every_decision_kind_crosses_the_services(stack, tmp_path):
    dataset = "decisions"
    audio = recordings(tmp_path / "audio", 100, copies=2)  # 200 clips: 4 tasks
    cli("ingest", str(audio), "--bootstrap", stack.bootstrap, "--dataset", dataset)
    with ReviewClient(stack.grpc_address("review")) as client:
        accept, correct, relabel, unusable = wait_for_tasks(client, dataset, 4)
        assert decide(client, accept, pb.REVIEW_ACTION_ACCEPT) == "final"
        assert decide(client, correct, pb.REVIEW_ACTION_CORRECT, label="church bell, dog bark") == "rescoring"
        assert decide(client, relabel, pb.REVIEW_ACTION_RELABEL, hint="listen for engines") == "relabelling"
        assert decide(client, unusable, pb.REVIEW_ACTION_UNUSABLE) == "removed"
        assert not client.pending(dataset)

    taxonomy = wait_for_taxonomy(stack.grpc_address("clusterer"), dataset, wait_s=300)
    assert taxonomy.clips == 199  # the unusable clip is out
    finals = exactly_once([f for f in on_topic(stack, topics.FINAL_LABELS, dataset) if isinstance(f, pb.FinalLabel)],
                          set(_all_clips(stack, dataset)) - {unusable.alignment.clip.clip_id})
    assert (finals[accept.alignment.clip.clip_id].source, finals[accept.alignment.clip.clip_id].review_action) == (
        pb.LABEL_SOURCE_HUMAN, pb.REVIEW_ACTION_ACCEPT)

    # The correction went to the aligner service, which scored both pairs; the better one is final, with that score.
    proposals = on_topic(stack, topics.LABELS, dataset)
    alignments = on_topic(stack, topics.ALIGNMENTS, dataset)
    corrected = finals[correct.alignment.clip.clip_id]
    [human] = [p for p in proposals if p.clip.clip_id == correct.alignment.clip.clip_id and p.model_id == HUMAN_MODEL_ID]
    assert list(human.labels) == ["church bell", "dog bark"]
    [rescored] = [a for a in alignments if a.clip.clip_id == correct.alignment.clip.clip_id
                  and a.model_id == HUMAN_MODEL_ID]
    assert corrected.label == rescored.best_label in ("church bell", "dog bark")
    assert corrected.final_score == pytest.approx(rescored.best_score)
    assert corrected.score == pytest.approx(correct.alignment.best_score)  # the model's, before the review
    assert (corrected.source, corrected.review_action) == (pb.LABEL_SOURCE_HUMAN, pb.REVIEW_ACTION_CORRECT)

    # The re-labelled clip crossed the labeler (with the hint) and the aligner again.
    again = relabel.alignment.clip.clip_id
    labelled = [p for p in proposals if p.clip.clip_id == again]
    assert len(labelled) == 2 and labelled[1].clip.metadata[HINT_KEY] == "listen for engines"
    assert len([a for a in alignments if a.clip.clip_id == again]) == 2
    assert finals[again].review_action == pb.REVIEW_ACTION_RELABEL
    [sealed] = [m for m in on_topic(stack, topics.FINAL_LABELS, dataset) if isinstance(m, pb.DatasetSealed)]
    assert (sealed.final_labels, sealed.removed) == (199, 1)


def _all_clips(stack: LocalStack, dataset: str) -> list[str]:
    return [c.clip_id for c in on_topic(stack, topics.CLIPS, dataset) if isinstance(c, pb.Clip)
            and HINT_KEY not in c.metadata]


def wait_until_dead(stack: LocalStack, name: str, wait_s: float = 300) -> None:
    deadline = time.monotonic() + wait_s
    while stack.status()[name]:
        assert time.monotonic() < deadline, f"{name} still alive after {wait_s:g} s"
        time.sleep(0.2)


def test_review_killed_while_emitting_and_between_decisions_loses_and_duplicates_nothing(stack, tmp_path):
    dataset = "review-faults"
    audio = recordings(tmp_path / "audio", 100, copies=10)  # 1,000 clips: 20 tasks
    # The fault point: the review service kills itself once 300 records are out, before the outbox forgets them,
    # in the middle of the burst of final labels that the dataset's completion releases.
    stack.signal("review")
    stack.start("review", env={"AUDITORYHUM_CRASH_AFTER_RELAYED": "300"})
    cli("ingest", str(audio), "--bootstrap", stack.bootstrap, "--dataset", dataset)
    wait_until_dead(stack, "review")
    assert "fault point: killed after 300 relayed records" in (stack.home / "review.log").read_text()
    stack.start("review")
    # The successor found the 300 records on the bus and did not send them again: the crash bit, and was recovered.
    assert metric(stack, "review", 'auditoryhum_outbox_recovered_total{outcome="delivered",stage="review"}') == 300
    assert metric(stack, "review", 'auditoryhum_outbox_recovered_total{outcome="resent",stage="review"}') > 0

    with ReviewClient(stack.grpc_address("review")) as client:
        tasks = wait_for_tasks(client, dataset, 20)
        for task in tasks[:8]:
            decide(client, task, pb.REVIEW_ACTION_ACCEPT)
        # Killed right after a decision: its record on the decisions topic is read again by the successor, which
        # must not decide the task twice. The lag check proves the replay (else the kill came too late: again).
        for n, task in enumerate(tasks[8:12], start=9):
            decide(client, task, pb.REVIEW_ACTION_CORRECT, label="engine hum")
            stack.signal("review", signal.SIGKILL)
            replayed = group_lag(stack.bootstrap, {"auditoryhum-review": [topics.REVIEW_DECISIONS]})
            stack.start("review")
            if replayed["auditoryhum-review"]:
                break
        else:
            pytest.fail("the review service always committed before it was killed: no replay to test")
        left = client.pending(dataset)  # what survived the crashes: exactly the undecided tasks
        assert {t.task_id for t in left} == {t.task_id for t in tasks[n:]}
        for t in left[:3]:
            decide(client, t, pb.REVIEW_ACTION_UNUSABLE)
        duplicate = client.submit(pb.ReviewDecision(task_id=tasks[0].task_id, action=pb.REVIEW_ACTION_UNUSABLE,
                                                    reviewer="bob"))
        assert duplicate.duplicate  # decided before the crashes: still decided, still the first decision
    # The rest nobody decides: the CLI closes the review and they keep the model's label.
    closed = json.loads(cli("review", "close", "--dataset", dataset, "--review", stack.grpc_address("review")))
    assert closed["kept_model_label"] == len(left) - 3

    taxonomy = wait_for_taxonomy(stack.grpc_address("clusterer"), dataset, wait_s=300)
    assert taxonomy.clips == 997
    messages = on_topic(stack, topics.FINAL_LABELS, dataset)
    removed = {t.alignment.clip.clip_id for t in left[:3]}
    finals = exactly_once([f for f in messages if isinstance(f, pb.FinalLabel)], set(_all_clips(stack, dataset)) - removed)
    assert sum(f.review_action == pb.REVIEW_ACTION_CORRECT for f in finals.values()) == n - 8
    assert len([m for m in messages if isinstance(m, pb.DatasetSealed)]) == 1
