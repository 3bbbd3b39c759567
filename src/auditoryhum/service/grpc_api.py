"""The synchronous gRPC APIs of the four services: thin servicers over the stages' own handlers.

A servicer checks the request, hands it to the stage exactly as the stream worker would, and maps the outcome to
a status: INVALID_ARGUMENT names the bad field, NOT_FOUND / FAILED_PRECONDITION say what is missing, a transient
error (:func:`~auditoryhum.errors.transient_kind`: a model server, database or object store away for now) is
UNAVAILABLE (retry), and a call whose deadline passes (the client's or the server's) is DEADLINE_EXCEEDED: its work
stops before the next clip is read and before the next model call. Details quote at most :data:`QUOTED_CHARS` of
any field a client sent.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import math
import re
from typing import Callable, Sequence

import grpc

from auditoryhum import audio, topics
from auditoryhum.backends import TextEmbedder
from auditoryhum.errors import transient_kind
from auditoryhum.review.desk import LeaseHeld, NotComplete, ReviewDesk, ReviewError, TaskGone
from auditoryhum.service import deadlines
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.runner import StageWorker
from auditoryhum.stages.base import Out
from auditoryhum.stages.clusterer import ClustererStage, is_novel
from auditoryhum.stages.labeler import LabelerStage
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.taxonomy.cluster import ALGORITHMS
from auditoryhum.taxonomy.reference import ALGORITHM as REFERENCE
from auditoryhum.v1 import pipeline_pb2 as pb
from auditoryhum.v1 import services_pb2 as api
from auditoryhum.v1 import services_pb2_grpc as api_grpc

MAX_ITEMS = 256  # clips per LabelClips call, labels per Score or Classify call
MAX_LABEL_CHARS = 200
QUOTED_CHARS = 80  # of a client's field in an error's details
MAX_DETAILS_CHARS = 500
PAGE_TOKEN = re.compile(r"[0-9]{1,9}")  # an offset this service issued: ASCII digits ('²' is a digit to str.isdigit)

# (k_min, k_max, penalty_lambda, algorithm) → a builder with those settings.
MakeBuilder = Callable[[int, int, float, str], TaxonomyBuilder]


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


def _rpc(method):
    """The status mapping every method shares."""

    @functools.wraps(method)
    def call(self, request, context: grpc.ServicerContext):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:  # queued past its deadline: nobody waits for the answer
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call started")
        try:
            return method(self, request)
        except _Abort as exc:
            context.abort(exc.code, _shorten(exc.details, MAX_DETAILS_CHARS))
        except deadlines.DeadlineExceeded:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call ended")
        except Exception as exc:
            if (kind := transient_kind(exc)) is None:
                raise
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          _shorten(f"a back-end is unavailable ({kind}), retry later: {exc}", MAX_DETAILS_CHARS))

    return call


def _invalid(details: str) -> _Abort:
    return _Abort(grpc.StatusCode.INVALID_ARGUMENT, details)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _quote(field: str) -> str:
    """A client's field as error details show it: quoted, and cut short."""
    return repr(field) if len(field) <= QUOTED_CHARS else f"{field[:QUOTED_CHARS]!r}… ({len(field)} characters)"


def _within_deadline(stage):
    """A copy of ``stage`` whose audio reads check the call's deadline before and after each clip is read."""
    stage = copy.copy(stage)
    stage.load_audio = deadlines.current().guard(stage.load_audio)
    return stage


def inline_clip(item: api.InlineAudio) -> pb.Clip:
    """The clip of audio sent in a request; its id is stable for the same dataset, name and bytes."""
    digest = hashlib.sha1(f"{item.dataset}/{item.name}/".encode("utf-8") + item.data).hexdigest()[:16]
    return pb.Clip(clip_id=digest, uri=f"inline:{item.name}", dataset=item.dataset)


class LabelerServicer(api_grpc.LabelerServiceServicer):
    """``limits`` apply to inline audio; clips read from a uri get the stage's own loader and its limits."""

    def __init__(self, stage: LabelerStage, limits: audio.AudioLimits, *, max_clips: int = MAX_ITEMS):
        self.stage, self.limits, self.max_clips = stage, limits, max_clips

    @_rpc
    def LabelClips(self, request: api.LabelClipsRequest) -> api.LabelClipsResponse:
        total = len(request.clips) + len(request.inline)
        if not total:
            raise _invalid("no clips: send clips (read from their uri) or inline audio")
        if total > self.max_clips:
            raise _invalid(f"{total} clips in one call; at most {self.max_clips}")
        for i, clip in enumerate(request.clips):
            if not clip.uri:
                raise _invalid(f"clips[{i}] has no uri; send its audio in inline instead")
        for i, item in enumerate(request.inline):
            if not item.data:
                raise _invalid(f"inline[{i}] ({_quote(item.name)}) has no data")
        outs = _within_deadline(self.stage).handle_batch(list(request.clips)) if request.clips else []
        if request.inline:
            clips = [inline_clip(item) for item in request.inline]
            blobs = {clip.clip_id: item.data for clip, item in zip(clips, request.inline)}
            budget = audio.DecodeBudget(self.limits.max_request_decoded_bytes)  # all the call's clips together
            # The same model behind a loader of this request's bytes: the handler itself stays unchanged.
            inline = LabelerStage(self.stage.labelers, deadlines.current().guard(
                lambda clip, rate: audio.load_bytes(blobs[clip.clip_id], rate, self.limits, budget)),
                max_words=self.stage.max_words)
            outs += inline.handle_batch(clips)
        response = api.LabelClipsResponse()
        for out in _flat(outs):
            (response.proposals if out.topic == topics.LABELS else response.dead_letters).append(out.message)
        return response


class AlignerServicer(api_grpc.AlignerServiceServicer):
    """``limits`` apply to audio sent in the request; a clip.uri is read by the stage's own loader."""

    def __init__(self, stage: AlignerStage, limits: audio.AudioLimits, *, max_labels: int = MAX_ITEMS):
        self.stage, self.limits, self.max_labels = stage, limits, max_labels

    @_rpc
    def Score(self, request: api.ScoreRequest) -> api.ScoreResponse:
        labels = _labels(request.labels, self.max_labels)
        if not request.audio and not request.clip.uri:
            raise _invalid("no audio: set audio, or clip.uri")
        stage = _within_deadline(self.stage)
        if request.audio:
            budget = audio.DecodeBudget(self.limits.max_request_decoded_bytes)
            stage = AlignerStage(stage.scorer, deadlines.current().guard(
                                 lambda clip, rate: audio.load_bytes(request.audio, rate, self.limits, budget)),
                                 stage.sample_rate, keep_audio_embedding=stage.keep_audio_embedding,
                                 embedder=stage.embedder)
        [outs] = stage.handle_batch([pb.LabelProposal(clip=request.clip, labels=labels)])
        for out in outs:
            if out.topic == topics.DLQ:
                raise _invalid(f"cannot score the clip: {out.message.reason}")
        return api.ScoreResponse(alignment=outs[0].message)


class ClustererServicer(api_grpc.ClustererServiceServicer):
    """BuildTaxonomy settings left unset in a request (0, empty, absent) take the stage's builder's values. With the
    service's stream ``worker``, a build is published on the taxonomy topic (through the stage's outbox)."""

    def __init__(self, stage: ClustererStage, embedder: TextEmbedder, make_builder: MakeBuilder, *,
                 max_labels: int = MAX_ITEMS, worker: StageWorker | None = None):
        self.stage, self.embedder, self.make_builder, self.max_labels = stage, embedder, make_builder, max_labels
        self.worker = worker

    @_rpc
    def GetTaxonomy(self, request: api.GetTaxonomyRequest) -> api.GetTaxonomyResponse:
        return api.GetTaxonomyResponse(taxonomy=self._taxonomy(request.dataset, request.version))

    @_rpc
    def ListTaxonomyVersions(self, request: api.ListTaxonomyVersionsRequest) -> api.ListTaxonomyVersionsResponse:
        versions = self.stage.versions(_dataset(request.dataset))
        if not versions:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"dataset {_quote(request.dataset)} has no taxonomy yet")
        return api.ListTaxonomyVersionsResponse(versions=versions)

    @_rpc
    def Classify(self, request: api.ClassifyRequest) -> api.ClassifyResponse:
        labels = _labels(request.labels, self.max_labels)
        taxonomy = self._taxonomy(request.dataset, request.version)
        try:
            matches = self.stage.index(taxonomy).classify(labels)
        except ValueError as exc:  # a taxonomy without clusters (a dataset without usable labels)
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
        return api.ClassifyResponse(classifications=[
            api.Classification(label=m.label, cluster_id=m.cluster_id, composite_label=m.composite_label,
                               similarity=m.similarity, novel=is_novel(m, taxonomy)) for m in matches],
            version=taxonomy.version, novelty_threshold=taxonomy.novelty_threshold)

    @_rpc
    def BuildTaxonomy(self, request: api.BuildTaxonomyRequest) -> api.BuildTaxonomyResponse:
        dataset = _dataset(request.dataset)
        defaults = self.stage.builder
        k_min, k_max = request.k_min or defaults.k_min, request.k_max or defaults.k_max
        lam = request.penalty_lambda if request.HasField("penalty_lambda") else defaults.lam
        algorithm = request.algorithm or defaults.algorithm
        _check_settings(k_min, k_max, lam, algorithm)
        if not self.stage.labels_count(dataset):
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, f"dataset {_quote(dataset)} has no final labels yet")
        build = functools.partial(self.stage.build, dataset, self.make_builder(k_min, k_max, lam, algorithm))
        [out] = self.worker.apply(build) if self.worker is not None else build()
        return api.BuildTaxonomyResponse(taxonomy=out.message)

    def _taxonomy(self, dataset: str, version: int) -> pb.Taxonomy:
        if version < 0:
            raise _invalid(f"version is {version}; 0 (the current one) or a version number")
        taxonomy = self.stage.taxonomy(_dataset(dataset), version)
        if taxonomy is not None:
            return taxonomy
        if not version or self.stage.taxonomy(dataset) is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"dataset {_quote(dataset)} has no taxonomy yet")
        known = ", ".join(str(v.version) for v in self.stage.versions(dataset))
        raise _Abort(grpc.StatusCode.NOT_FOUND, f"taxonomy {_quote(dataset)} has no version {version}; "
                                                f"its versions: {_shorten(known, 200)}")


class ReviewServicer(api_grpc.ReviewServiceServicer):
    """The review desk over gRPC: the same leases, checks and idempotent decisions as the web UI."""

    MAX_PAGE = 500

    def __init__(self, desk: ReviewDesk):
        self.desk = desk

    @_rpc
    def ListTasks(self, request: api.ListTasksRequest) -> api.ListTasksResponse:
        if request.page_size < 0:
            raise _invalid("page_size must not be negative")
        if request.page_token and not PAGE_TOKEN.fullmatch(request.page_token):
            raise _invalid("page_token is not one this service issued")
        size, offset = min(request.page_size or 50, self.MAX_PAGE), int(request.page_token or 0)
        views = self.desk.tasks(request.dataset, size + 1, offset)
        return api.ListTasksResponse(tasks=[v.task for v in views[:size]],
                                     next_page_token=str(offset + size) if len(views) > size else "")

    @_rpc
    def GetTask(self, request: api.GetTaskRequest) -> api.GetTaskResponse:
        if not request.task_id:
            raise _invalid("task_id is required")
        with _review_errors():
            view = self.desk.claim(request.task_id, request.reviewer) if request.reviewer else \
                self.desk.task(request.task_id)
        if view is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no pending task {_quote(request.task_id)} (unknown or decided)")
        return api.GetTaskResponse(task=view.task)

    @_rpc
    def SubmitDecision(self, request: api.SubmitDecisionRequest) -> api.SubmitDecisionResponse:
        with _review_errors():
            outcome = self.desk.decide(request.decision)
        return api.SubmitDecisionResponse(final_label=outcome.final_label, clip_status=outcome.status,
                                          duplicate=outcome.duplicate)

    @_rpc
    def GetStats(self, request: api.GetStatsRequest) -> api.GetStatsResponse:
        return api.GetStatsResponse(stats=self.desk.stats(request.dataset))

    @_rpc
    def CloseReview(self, request: api.CloseReviewRequest) -> api.CloseReviewResponse:
        dataset = _dataset(request.dataset)
        with _review_errors():
            kept = self.desk.close(dataset)
        return api.CloseReviewResponse(kept_model_label=kept, sealed=self.desk.sealed(dataset))


@contextlib.contextmanager
def _review_errors():
    try:
        yield
    except TaskGone as exc:
        raise _Abort(grpc.StatusCode.NOT_FOUND, str(exc)) from exc
    except (LeaseHeld, NotComplete) as exc:
        raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from exc
    except ReviewError as exc:
        raise _invalid(str(exc)) from exc


def _flat(outs: list[list[Out]]) -> list[Out]:
    return [out for clip_outs in outs for out in clip_outs]


def _dataset(dataset: str) -> str:
    if not dataset:
        raise _invalid("dataset is empty")
    return dataset


def _labels(labels: Sequence[str], limit: int) -> list[str]:
    if not labels:
        raise _invalid("labels is empty: send at least one label")
    if len(labels) > limit:
        raise _invalid(f"{len(labels)} labels in one call; at most {limit}")
    for i, label in enumerate(labels):
        if not label.strip():
            raise _invalid(f"labels[{i}] is blank")
        if len(label) > MAX_LABEL_CHARS:
            raise _invalid(f"labels[{i}] has {len(label)} characters; at most {MAX_LABEL_CHARS}")
        if not label.isprintable():
            raise _invalid(f"labels[{i}] contains non-printable characters")
    return list(labels)


def _check_settings(k_min: int, k_max: int | None, lam: float, algorithm: str) -> None:
    """The settings in force, the request's or the defaults, are checked before a long sweep starts."""
    if k_min < 2:
        raise _invalid(f"k_min is {k_min}; it must be at least 2")
    if k_max is not None and k_max < k_min:  # None: up to the unique count (the reference protocol)
        raise _invalid(f"k_max ({k_max}) is below k_min ({k_min})")
    if algorithm not in ALGORITHMS and algorithm != REFERENCE:
        known = ", ".join(sorted([*ALGORITHMS, REFERENCE]))
        raise _invalid(f"unknown algorithm {_quote(algorithm)}; known: {known}")
    if not (math.isfinite(lam) and lam >= 0):
        raise _invalid(f"penalty_lambda is {lam:g}; it must be a finite number >= 0")
