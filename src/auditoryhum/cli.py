"""The `auditoryhum` command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from auditoryhum.audio import AUDIO_EXTENSIONS, AudioError
from auditoryhum.backends import ScoreItem
from auditoryhum.config import Settings
from auditoryhum.labels import parse_labels

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Turn unlabelled audio into a human-checked taxonomy of auditory scenes.")
console = Console(stderr=True)


def _settings(cls: type[Settings] = Settings, **overrides) -> Settings:
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"invalid settings: {problems}", err=True)
        raise typer.Exit(2) from None


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:  # kafka-python logs every failed connection attempt; the command reports the outcome itself
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


@app.command()
def run(
    audio_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of audio files (searched recursively)."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name (default: the folder's name)."),
    review_fraction: Optional[float] = typer.Option(None, help="Lowest fraction of clip scores sent to review."),
    review_threshold: Optional[float] = typer.Option(None, help="Review every clip scoring below this instead."),
    k_min: Optional[int] = typer.Option(None, "--k-min"),
    k_max: Optional[int] = typer.Option(None, "--k-max"),
    lam: Optional[float] = typer.Option(None, "--lambda", help="Penalty λ of the adjusted silhouette."),
    algorithm: Optional[str] = typer.Option(None, help="kmeans or ward."),
    max_words: Optional[int] = typer.Option(None, help="Words kept per label."),
    class_from_folder: bool = typer.Option(False, help="Use each clip's first sub-folder as its ground-truth class."),
    representation: Optional[str] = typer.Option(None, help="labels (default) or class-vector."),
    namer_model: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                               help="Local text-generation model folder that names the clusters."),
    profile: Optional[str] = typer.Option(None, help="lite (offline default) or paper (Qwen2.5-Omni + Human-CLAP)."),
    backend: Optional[str] = typer.Option(None, help="inprocess (default) or triton (models on a Triton server)."),
    triton_url: Optional[str] = typer.Option(None, help="Triton's gRPC address, with --backend triton."),
) -> None:
    """Label, score, review and cluster every clip in AUDIO_DIR (embedded mode, one process)."""
    from auditoryhum import pipeline

    settings = _settings(review_fraction=review_fraction, review_threshold=review_threshold, k_min=k_min,
                         k_max=k_max, penalty_lambda=lam, algorithm=algorithm, max_words=max_words,
                         class_from_folder=class_from_folder or None, representation=representation,
                         namer_model=str(namer_model) if namer_model else None, profile=profile,
                         backend=backend, triton_url=triton_url)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("loading models", total=None)
        result = pipeline.run(
            audio_dir, out, settings, dataset=dataset,
            on_start=lambda total: progress.update(task, description="labelling", total=total),
            on_clip_done=lambda: progress.advance(task),
        )
    _print_summary(result.summary, out)


@app.command()
def cluster(
    table: Path = typer.Argument(..., exists=True, dir_okay=False,
                                 help="CSV with a 'label' column (optional 'count', 'ground_truth', 'score') or a run's labels.csv."),
    out: Path = typer.Option(Path("out/taxonomy"), "--out", "-o"),
    dataset: Optional[str] = typer.Option(None, help="Dataset name (default: the table's file name)."),
    k_min: Optional[int] = typer.Option(None, "--k-min"),
    k_max: Optional[int] = typer.Option(None, "--k-max"),
    lam: Optional[float] = typer.Option(None, "--lambda", help="Penalty λ of the adjusted silhouette."),
    algorithm: Optional[str] = typer.Option(None, help="kmeans or ward."),
    namer_model: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                               help="Local text-generation model folder that names the clusters."),
) -> None:
    """Cluster a table of labels into a taxonomy: taxonomy.json and report.html in OUT."""
    import numpy as np

    from auditoryhum.outputs import write_taxonomy
    from auditoryhum.models import Models
    from auditoryhum.taxonomy.table import read_label_table

    settings = _settings(k_min=k_min, k_max=k_max, penalty_lambda=lam, algorithm=algorithm,
                         namer_model=str(namer_model) if namer_model else None)
    try:
        labels = read_label_table(table, settings.max_words)
    except ValueError as exc:
        raise _bad(table, exc)
    models = Models(settings)
    taxonomy = models.taxonomy_builder().build(dataset or table.stem, labels.counts)
    out.mkdir(parents=True, exist_ok=True)
    metrics = write_taxonomy(out, taxonomy, models.embedder, clips=labels.clips,
                             scores=np.asarray(labels.scores) if labels.scores else None)
    result = Table(title=f"{taxonomy.k} clusters of {taxonomy.unique_labels} labels ({taxonomy.clips} clips)")
    for col in ("id", "composite label", "clips", "labels"):
        result.add_column(col)
    for c in taxonomy.clusters:
        result.add_row(str(c.cluster_id), c.composite_label, str(c.size),
                       ", ".join(lc.label for lc in c.labels[:6]) + (" …" if len(c.labels) > 6 else ""))
    Console().print(result)
    Console().print(" ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in metrics.items()))
    Console().print(f"wrote {out / 'taxonomy.json'} and {out / 'report.html'}")


@app.command()
def serve(name: str = typer.Argument(..., help="labeler, aligner, review or clusterer.")) -> None:
    """Run one service: consume its Kafka topics, serve its gRPC API and /metrics (settings: AUDITORYHUM_* env)."""
    from auditoryhum.service.app import SERVICES, serve as serve_service
    from auditoryhum.service.settings import ServiceSettings

    if name not in SERVICES:
        typer.echo(f"unknown service {name!r}; one of: {', '.join(SERVICES)}", err=True)
        raise typer.Exit(2)
    serve_service(name, _settings(ServiceSettings))


@app.command("ingest")
def ingest_command(
    audio_dir: Path = typer.Argument(..., exists=True, file_okay=False, help="Folder of audio files (searched recursively)."),
    bootstrap: str = typer.Option("127.0.0.1:19092", help="Kafka bootstrap servers."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name (default: the folder's name)."),
    partitions: int = typer.Option(4, min=1, help="Partitions of topics created if missing."),
    class_from_folder: bool = typer.Option(False, help="Use each clip's first sub-folder as its ground-truth class."),
) -> None:
    """Publish a folder's clips to Kafka for the services, announcing the dataset and its clip count first."""
    from auditoryhum import ingest, topics
    from auditoryhum.bus import BusError
    from auditoryhum.bus.kafka import KafkaBus, ensure_topics
    from auditoryhum.v1 import pipeline_pb2 as pb

    dataset = dataset or audio_dir.resolve().name
    found = ingest.scan(audio_dir)
    try:
        ensure_topics(bootstrap, topics.ALL, partitions)
        bus = KafkaBus(bootstrap, client_id="auditoryhum-ingest")
        bus.publish(topics.DATASETS, dataset, pb.DatasetAnnouncement(dataset=dataset, expected_clips=len(found.files)))
        for clip in ingest.clips(found, dataset, class_from_folder):
            bus.publish(topics.CLIPS, clip.clip_id, clip)
        bus.flush()
        bus.close()
    except BusError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"dataset": dataset, "clips": len(found.files),
                           "skipped_files": [str(p) for p in found.skipped]}))


@app.command()
def taxonomy(
    dataset: str = typer.Option(..., help="Dataset name given to `ingest`."),
    clusterer: str = typer.Option("127.0.0.1:50054", help="The clusterer service's gRPC address."),
    bootstrap: Optional[str] = typer.Option("127.0.0.1:19092",
                                            help="Kafka, to rebuild the per-clip files from the topics ('' skips)."),
    out: Path = typer.Option(Path("out/taxonomy"), "--out", "-o", help="Output folder."),
    wait: float = typer.Option(0.0, help="Seconds to wait for the taxonomy to be built."),
) -> None:
    """Fetch a dataset's taxonomy over gRPC and write the same output files as `run`."""
    from auditoryhum import topics
    from auditoryhum.bus.kafka import read_topics
    from auditoryhum.outputs import OutputWriter
    from auditoryhum.models import Models
    from auditoryhum.service.client import wait_for_taxonomy

    try:
        result = wait_for_taxonomy(clusterer, dataset, wait)
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    writer = OutputWriter(out, dataset=dataset)
    if bootstrap:
        for record in read_topics(bootstrap, [t for t in OutputWriter.consumes if t != topics.TAXONOMY]):
            writer.handle(record.message())
    writer.taxonomies[dataset] = result
    summary = writer.finish(dataset, Models(_settings()).embedder, {"skipped_files": [], "seconds": None,
                                                                    "clips_per_s": None})
    Console().print(json.dumps({k: summary[k] for k in ("dataset", "clips", "labelled", "dead_letters", "reviewed",
                                                       "unique_labels", "k")}))
    Console().print(f"wrote {out}")


def _print_summary(summary: dict, out: Path) -> None:
    table = Table(title=f"AuditoryHuM run: {summary['dataset']}", show_header=False)
    rows = [
        ("clips", summary["clips"]), ("labelled", summary["labelled"]), ("dead letters", summary["dead_letters"]),
        ("sent to review", summary["reviewed"]), ("unique labels", summary["unique_labels"]),
        ("μc (mean clip score)", _fmt(summary["mu_c"])), ("μ1% (lowest 1 %)", _fmt(summary["mu_1pct"])),
        ("clusters k", summary["k"]), ("λ", summary["lambda"]), ("silhouette S(k)", _fmt(summary["silhouette"])),
        ("throughput", f"{summary['clips_per_s']} clips/s in {summary['seconds']} s"), ("outputs", str(out)),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
    if not summary["clips"]:
        console.print(f"[yellow]no audio files found (extensions: {', '.join(sorted(AUDIO_EXTENSIONS))})")
    if summary["skipped_files"]:
        console.print(f"[yellow]skipped {len(summary['skipped_files'])} file(s) without an audio extension")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def label(path: Path = typer.Argument(..., help="An audio file."),
          max_words: Optional[int] = typer.Option(None, help="Words kept per label.")) -> None:
    """Print the labels of one clip."""
    from auditoryhum.models import Models

    settings = _settings(max_words=max_words)
    models = Models(settings)
    try:
        description = models.labeler.describe([_load(models, path)])[0]
    except AudioError as exc:
        raise _bad(path, exc)
    typer.echo(", ".join(parse_labels(description.raw_text, settings.max_words)))


@app.command()
def score(paths: list[Path] = typer.Argument(..., help="Audio files."),
          labels: list[str] = typer.Option(..., "--label", "-l", help="Label text to score (repeatable)."),
          as_json: bool = typer.Option(False, "--json", help="One JSON object per path.")) -> None:
    """Score every given label against every given clip, loading the models once."""
    from auditoryhum.models import Models

    models = Models(_settings())
    failed = False
    for path in paths:
        try:  # the scorer reads the audio at its own rate (CLAP), or tags it first (the tag bridge)
            audio = _load(models, path, models.scorer_rate)
            scores = models.scorer.score_batch([ScoreItem(labels, audio=lambda: audio)])[0].scores
        except AudioError as exc:
            typer.echo(f"{path}: {exc}", err=True)
            failed = True
            continue
        if as_json:
            typer.echo(json.dumps({"path": str(path), "scores": [{"label": l, "score": round(float(s), 6)}
                                                               for l, s in zip(labels, scores)]}))
        else:
            for l, s in zip(labels, scores):
                typer.echo(f"{path}\t{l}\t{s:.4f}")
    if failed:
        raise typer.Exit(1)


def _load(models, path: Path, rate: int | None = None):
    from auditoryhum.pipeline import audio_loader
    from auditoryhum.v1 import pipeline_pb2 as pb

    return audio_loader(models.settings)(pb.Clip(uri=str(path)), rate or models.labeler.sample_rate)


def _bad(path: Path, exc: Exception) -> typer.Exit:
    typer.echo(f"{path}: {exc}", err=True)
    return typer.Exit(1)
