"""The embedded mode: all four stages in one process over the in-memory bus.

Clips are fed in chunks as the labeler keeps up (back-pressure), so memory stays flat however big the folder.
With a :class:`ReviewUi`, the run pauses once every clip is scored and serves the review queue in the browser; the
reviewers' decisions flow through the stages as they are made, and "Finish review" lets the taxonomy be built.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from auditoryhum import audio, datasets, topics
from auditoryhum.auth import check_bind, warn_if_short
from auditoryhum.bus.memory import InMemoryBus
from auditoryhum.config import Settings
from auditoryhum.labelers import labeler_specs
from auditoryhum.models import Models
from auditoryhum.outputs import OutputWriter
from auditoryhum.review import calibration
from auditoryhum.review.annotations import Annotation, read_annotations
from auditoryhum.review.desk import ReviewDesk
from auditoryhum.runner import StageWorker, Threads
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.stages.clusterer import ClustererStage, LivingPolicy
from auditoryhum.stages.labeler import LabelerStage
from auditoryhum.stages.review import ReviewPolicy, ReviewStage
from auditoryhum.uris import UriPolicy
from auditoryhum.v1 import pipeline_pb2 as pb

log = logging.getLogger("auditoryhum.pipeline")


def audio_limits(settings: Settings) -> audio.AudioLimits:
    return audio.AudioLimits(max_duration_s=settings.max_duration_s,
                             max_file_bytes=int(settings.max_file_mb * 1024 * 1024),
                             max_decoded_bytes=int(settings.max_decoded_mb * 1024 * 1024),
                             min_duration_s=settings.min_duration_s,
                             max_request_decoded_bytes=int(settings.max_request_decoded_mb * 1024 * 1024),
                             connect_timeout_s=settings.uri_connect_timeout_s,
                             read_timeout_s=settings.uri_read_timeout_s)


def audio_loader(settings: Settings, uris: UriPolicy | None = None) -> Callable[[pb.Clip, int], audio.Audio]:
    """How the stages read a clip's audio, within the configured limits. ``uris``: the policy of clips that others
    name (the services, a run's bus); None only where the caller named the files itself (`label`, `evaluate`)."""
    limits = audio_limits(settings)
    if uris is None:
        return lambda clip, rate: audio.load(clip.uri, rate, limits)
    return lambda clip, rate: audio.load(uris.resolve(clip.uri), rate, limits)


@dataclass(frozen=True)
class ReviewUi:
    """Where the embedded run serves its review queue; ``on_ready(url, pending_tasks)`` says so to the user."""
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    on_ready: Callable[[str, int], None] = lambda url, pending: None


class NeedsLabelers(ValueError):
    """A review rank by disagreement asked of a run with one labeler, where every disagreement is 0."""


@dataclass
class RunResult:
    summary: dict
    out: Path


def run(source: str | Path, out: Path, settings: Settings = Settings(), *, dataset: str | None = None,
        models: Models | None = None, on_start: Callable[[int], None] = lambda total: None,
        on_clip_done: Callable[[], None] = lambda: None, review_ui: ReviewUi | None = None,
        annotations: Path | None = None, annotation_action: str = "correct") -> RunResult:
    """``annotations``: a published human-annotation file (:mod:`auditoryhum.review.annotations`); its annotated
    clips are the ones reviewed, and its lines their decisions."""
    if review_ui is not None and annotations is not None:
        raise ValueError("review in the browser or from an annotation file, not both")
    if review_ui is not None:
        check_bind(review_ui.host, review_ui.token)  # before minutes of labelling, not after
        warn_if_short(review_ui.token, log)
    if settings.review_rank != "score" and len(labeler_specs(settings.labelers, settings.labeler_model)) < 2:
        raise NeedsLabelers(f"review rank {settings.review_rank} needs two or more labelers (--labelers): with one, "
                            "every clip's disagreement is 0")
    started = time.perf_counter()
    models = models or Models(settings)
    found = datasets.load(str(source), settings.layout, class_from_folder=settings.class_from_folder)
    dataset = dataset or found.name
    # Checked against the dataset before anything runs.
    notes = read_annotations(annotations, found, dataset, settings.max_words) if annotations else []
    entries = found.entries  # listed once: the embedded mode holds every clip anyway
    on_start(len(entries))

    # The run reads what the dataset it was given lists (symlinks and a CSV's absolute rows included), and the
    # configured prefixes: nothing else, whatever a clip on its bus names.
    uris = UriPolicy.parse(settings.allowed_uris, exact=(entry.uri for entry in entries))
    load_audio = audio_loader(settings, uris)
    bus = InMemoryBus()
    writer = OutputWriter(out, on_clip_done)
    with ThreadPoolExecutor(settings.workers, thread_name_prefix="labeler") as executor:
        stages = [
            LabelerStage(models.labelers, load_audio, max_words=settings.max_words, executor=executor,
                         workers=settings.workers),
            AlignerStage(models.scorer, load_audio, models.scorer_rate,
                         keep_audio_embedding=settings.representation == "class-vector",
                         embedder=lambda: models.embedder),
            ReviewStage(ReviewPolicy(settings.review_fraction, settings.review_threshold,
                                     auto_accept=review_ui is None and not notes,
                                     clips=frozenset(a.clip_id for a in notes) if notes else None,
                                     rank=settings.review_rank, precision=settings.review_precision,
                                     calibration=settings.review_calibration),
                        settings.max_words),
            ClustererStage(models.taxonomy_builder(settings), policy=LivingPolicy.from_settings(settings)),
            writer,
        ]
        workers = [StageWorker(bus, stage, batch_size=settings.batch_size) for stage in stages]
        groups = [w.consumer_group for w in workers]
        bus.publish(topics.DATASETS, dataset, pb.DatasetAnnouncement(dataset=dataset, expected_clips=len(entries)))
        with Threads(workers) as threads:
            for clip in found.clips(dataset, entries):
                # Keep a few batches queued ahead of the labeler: enough to batch, never the whole folder.
                while bus.lag(groups[0]) >= 3 * settings.batch_size:
                    threads.check()
                    time.sleep(0.002)
                bus.publish(topics.CLIPS, clip.clip_id, clip)
            _settle(bus, groups, threads)
            extra = {}
            if review_ui is not None:
                _review(ReviewDesk(workers[2], settings.review_lease_s, audio_uris=uris), review_ui, dataset,
                        threads)
                _settle(bus, groups, threads)
            if notes:
                extra = _annotate(ReviewDesk(workers[2], settings.review_lease_s), notes, annotation_action,
                                  f"annotations:{annotations.name}"[:100], dataset)
                _settle(bus, groups, threads)
            with stages[2].store.transaction() as db:  # the reviewers' calibration, for the report
                calibrated = calibration.summarise(db, dataset, settings.review_calibration, settings.review_precision)
            if not len(calibrated.scores) and settings.review_precision is None:
                calibrated = None  # nobody decided and nobody asked
    elapsed = time.perf_counter() - started
    summary = writer.finish(dataset, models.embedder, {
        "skipped_files": [skipped.as_dict() for skipped in found.skipped],
        "seconds": round(elapsed, 3),
        "clips_per_s": round(len(entries) / elapsed, 2) if elapsed > 0 else None,
        # What `evaluate --truth` rebuilds the run's scorer from; a service's settings (URLs, tokens) stay out.
        "settings": settings.model_dump(mode="json", include=set(Settings.model_fields)),
        **extra,
    }, calibrated)
    return RunResult(summary, out)


def _settle(bus: InMemoryBus, groups: list[str], threads: Threads) -> None:
    """Wait until every stage has consumed everything: the stages only publish in answer to a record."""
    while bus.lag(*groups):
        threads.check()
        time.sleep(0.005)


def _annotate(desk: ReviewDesk, notes: list[Annotation], action: str, reviewer: str, dataset: str) -> dict:
    """Decide each annotated clip's task as its line says. A clip that never reached review (dead-lettered: no
    audio to score) is listed, not decided."""
    pending = {view.task_id for view in desk.tasks(dataset, limit=len(notes) + 1)}
    skipped = [a.path for a in notes if a.task_id not in pending]
    for a in notes:
        if a.task_id in pending:
            desk.decide(a.decision(action, reviewer))
    desk.close(dataset)
    return {"annotations_applied": len(notes) - len(skipped), "annotations_skipped": skipped}


def _review(desk: ReviewDesk, ui: ReviewUi, dataset: str, threads: Threads) -> None:
    """Serve the review queue until a reviewer clicks "Finish review"; undecided tasks then keep the model's label.
    Sessions are signed with create_app's random key: a run's reviewers sign in once, for this run only."""
    from auditoryhum.review.web import UiServer, create_app

    pending = desk.stats(dataset).pending
    if pending:
        finished = threading.Event()
        server = UiServer(create_app(desk, token=ui.token, on_finish=finished.set), ui.host, ui.port)
        server.start()
        try:
            ui.on_ready(server.url, pending)
            while not finished.wait(0.2):
                threads.check()
        finally:
            server.stop()
    desk.close(dataset)
