"""The embedded pipeline and its single-step tools: run, cluster, label, score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from auditoryhum.audio import AUDIO_EXTENSIONS, AudioError, path_uri
from auditoryhum.backends import ScoreItem
from auditoryhum.cli.common import app, bad_file, console, fmt, load_settings
from auditoryhum.labels import parse_labels

SHOW_SKIPPED = 20  # skipped entries listed after a run; summary.json has them all


@app.command()
def run(
    source: str = typer.Argument(..., help="A folder of audio files (searched recursively), a CSV of URIs "
                                           "(column uri; optional class, split), or an object-store prefix "
                                           "(s3://…, gs://…)."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Output folder."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name (default: the folder's name)."),
    review_fraction: Optional[float] = typer.Option(None, help="Lowest fraction of clip scores sent to review."),
    review_threshold: Optional[float] = typer.Option(None, help="Review every clip scoring below this instead."),
    review_rank: Optional[str] = typer.Option(None, help="score (lowest first, default), disagreement (between the "
                                                         "labelers, highest first) or combined (mean of both ranks)."),
    labelers: Optional[str] = typer.Option(None, help="Several labelers per clip, comma-separated [name=]model: "
                                                      "yamnet, soundnet or an MLLM folder / hub id; each clip keeps the "
                                                      "best-aligned label."),
    review_precision: Optional[float] = typer.Option(None, help="With --review-ui: review from the lowest scores up, "
                                                                "--review-fraction at a time, until the decisions "
                                                                "confirm P(reviewer accepts) ≥ this target; the rest "
                                                                "keep the model's label."),
    review_calibration: Optional[str] = typer.Option(None, help="isotonic (default) or platt."),
    k_min: Optional[int] = typer.Option(None, "--k-min"),
    k_max: Optional[int] = typer.Option(None, "--k-max"),
    lam: Optional[float] = typer.Option(None, "--lambda", help="Penalty λ of the adjusted silhouette."),
    k_criterion: Optional[str] = typer.Option(None, "--k-criterion", help="plateau (default) or linear: the "
                                              "paper's S(k) - λ·k/U. See docs/taxonomy.md."),
    algorithm: Optional[str] = typer.Option(None, help="kmeans or ward."),
    protocol: Optional[str] = typer.Option(None, help="default, or reference: the authors' Ward on every clip with "
                                                      "the euclidean silhouette, k up to the unique count."),
    max_words: Optional[int] = typer.Option(None, help="Words kept per label."),
    class_from_folder: bool = typer.Option(False, help="Use each clip's first sub-folder as its ground-truth class."),
    layout: Optional[str] = typer.Option(None, help="files (default), or a dataset as published: advance, ahead-ds, "
                                                    "tau2019, tau2021 (ground truth from its metadata)."),
    representation: Optional[str] = typer.Option(None, help="labels (default) or class-vector."),
    namer_model: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                               help="Local text-generation model folder that names the clusters."),
    profile: Optional[str] = typer.Option(None, help="lite (offline default) or paper (Qwen2.5-Omni + Human-CLAP)."),
    backend: Optional[str] = typer.Option(None, help="inprocess (default) or triton (models on a Triton server)."),
    triton_url: Optional[str] = typer.Option(None, help="Triton's gRPC address, with --backend triton."),
    annotations: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                               help="A published human-annotation file (one line per clip in file "
                                                    "name order, blank if not reviewed): its clips are reviewed, "
                                                    "its lines are the decisions."),
    annotation_action: str = typer.Option("correct", help="correct (the line is the label) or relabel (the line "
                                                          "is a hint for the labeler)."),
    review_ui: bool = typer.Option(False, "--review-ui", help="Pause after scoring and serve the review queue in "
                                                              "the browser; \"Finish review\" builds the taxonomy."),
    ui_host: str = typer.Option("127.0.0.1", help="Address of the review UI (beyond loopback only with a token)."),
    ui_port: int = typer.Option(8080, min=0, max=65535, help="Port of the review UI (0: any free port)."),
    ui_token: Optional[str] = typer.Option(None, envvar="AUDITORYHUM_AUTH_TOKEN", show_envvar=True,
                                           help="Token reviewers must enter."),
) -> None:
    """Label, score, review and cluster every clip of SOURCE (embedded mode, one process)."""
    from auditoryhum import pipeline
    from auditoryhum.auth import check_bind
    from auditoryhum.review.annotations import ACTIONS, AnnotationError

    if annotation_action not in ACTIONS:
        raise typer.BadParameter("correct or relabel", param_hint="--annotation-action")
    if annotations and review_ui:
        raise typer.BadParameter("review in the browser or from an annotation file, not both",
                                 param_hint="--annotations")
    if review_ui:
        try:
            check_bind(ui_host, ui_token)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--ui-host") from None
    settings = load_settings(review_fraction=review_fraction, review_threshold=review_threshold,
                         review_rank=review_rank, labelers=labelers, review_precision=review_precision,
                         review_calibration=review_calibration, k_min=k_min,
                         k_max=k_max, penalty_lambda=lam, k_criterion=k_criterion, algorithm=algorithm,
                         protocol=protocol, max_words=max_words,
                         class_from_folder=class_from_folder or None, layout=layout, representation=representation,
                         namer_model=str(namer_model) if namer_model else None, profile=profile,
                         backend=backend, triton_url=triton_url)
    if annotations and settings.review_precision is not None:
        raise typer.BadParameter("an annotation file decides which clips are reviewed: no target precision with it",
                                 param_hint="--review-precision")
    from auditoryhum.manifest import ManifestError
    from auditoryhum.pipeline import NeedsLabelers

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("loading models", total=None)

        def reviewing(url: str, pending: int) -> None:
            progress.update(task, description="reviewing")
            # stdout, unstyled: scripts and tests read the address from it
            print(f"Review UI: {url} ({pending} tasks). Click \"Finish review\" there to build the taxonomy.",
                  flush=True)

        ui = pipeline.ReviewUi(ui_host, ui_port, ui_token, reviewing) if review_ui else None
        try:
            result = pipeline.run(
                source, out, settings, dataset=dataset, review_ui=ui, annotations=annotations,
                annotation_action=annotation_action,
                on_start=lambda total: progress.update(task, description="labelling", total=total),
                on_clip_done=lambda: progress.advance(task),
            )
        except (ManifestError, AnnotationError, NeedsLabelers) as exc:  # checked first: nothing was processed
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
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
    k_criterion: Optional[str] = typer.Option(None, "--k-criterion", help="plateau (default) or linear: the "
                                              "paper's S(k) - λ·k/U. See docs/taxonomy.md."),
    algorithm: Optional[str] = typer.Option(None, help="kmeans or ward."),
    protocol: Optional[str] = typer.Option(None, help="default, or reference: the authors' Ward on every clip with "
                                                      "the euclidean silhouette, k up to the unique count."),
    namer_model: Optional[Path] = typer.Option(None, exists=True, file_okay=False,
                                               help="Local text-generation model folder that names the clusters."),
) -> None:
    """Cluster a table of labels into a taxonomy: taxonomy.json and report.html in OUT."""
    import numpy as np

    from auditoryhum.models import Models
    from auditoryhum.outputs import write_taxonomy
    from auditoryhum.taxonomy.table import read_label_table

    settings = load_settings(k_min=k_min, k_max=k_max, penalty_lambda=lam, k_criterion=k_criterion,
                         algorithm=algorithm, protocol=protocol,
                         namer_model=str(namer_model) if namer_model else None)
    try:
        labels = read_label_table(table, settings.max_words)
    except ValueError as exc:
        raise bad_file(table, exc)
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
    Console().print(" ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in metrics.items()))
    Console().print(f"wrote {out / 'taxonomy.json'} and {out / 'report.html'}")


def _print_summary(summary: dict, out: Path) -> None:
    table = Table(title=f"AuditoryHuM run: {summary['dataset']}", show_header=False)
    rows = [
        ("clips", summary["clips"]), ("labelled", summary["labelled"]), ("dead letters", summary["dead_letters"]),
        ("sent to review", summary["reviewed"]), ("unique labels", summary["unique_labels"]),
        ("μc (mean clip score)", fmt(summary["mu_c"])), ("μ1% (lowest 1 %)", fmt(summary["mu_1pct"])),
        ("clusters k", summary["k"]), ("λ", summary["lambda"]), ("silhouette S(k)", fmt(summary["silhouette"])),
        ("throughput", f"{summary['clips_per_s']} clips/s in {summary['seconds']} s"), ("outputs", str(out)),
    ]
    if calibration := summary.get("calibration"):
        rows.insert(4, ("review calibration", _calibration_line(calibration)))
    if summary.get("review_mean_after") is not None:  # reviewers decided: the paper's uplift
        rows.insert(4, ("review uplift", f"{summary['review_decided']} decided, mean score "
                                         f"{summary['review_mean_before']:.4f} → {summary['review_mean_after']:.4f}"))
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)
    if not summary["clips"]:
        console.print(f"[yellow]no audio files found (extensions: {', '.join(sorted(AUDIO_EXTENSIONS))})")
    if skipped := summary["skipped_files"]:
        console.print(f"[yellow]skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} (all in "
                      f"{out / 'summary.json'}, skipped_files):", highlight=False)
        for entry in skipped[:SHOW_SKIPPED]:
            console.print(f"  {entry['path']}: {entry['reason']}", markup=False, highlight=False)
        if len(skipped) > SHOW_SKIPPED:
            console.print(f"  … and {len(skipped) - SHOW_SKIPPED} more", highlight=False)


def _calibration_line(calibration: dict) -> str:
    if "method" not in calibration:
        line = f"none: {calibration['not_calibrated']}"
    else:
        at = ", ".join(f"{p}: {'-' if t is None else f'{t:.4f}'}" for p, t in calibration["threshold_at"].items())
        line = f"{calibration['method']} on {calibration['decisions']} decisions; P(accept) ≥ p from score ({at})"
    return line + (f"; {calibration['note']}" if calibration.get("note") else "")


@app.command()
def label(path: Path = typer.Argument(..., help="An audio file."),
          max_words: Optional[int] = typer.Option(None, help="Words kept per label.")) -> None:
    """Print the labels of one clip."""
    from auditoryhum.models import Models

    settings = load_settings(max_words=max_words)
    models = Models(settings)
    try:
        description = models.labeler.describe([_load(models, path)])[0]
    except AudioError as exc:
        raise bad_file(path, exc)
    typer.echo(", ".join(parse_labels(description.raw_text, settings.max_words)))


@app.command()
def score(paths: list[Path] = typer.Argument(..., help="Audio files."),
          labels: list[str] = typer.Option(..., "--label", "-l", help="Label text to score (repeatable)."),
          as_json: bool = typer.Option(False, "--json", help="One JSON object per path.")) -> None:
    """Score every given label against every given clip, loading the models once."""
    from auditoryhum.models import Models

    models = Models(load_settings())
    failed = False
    for path in paths:
        try:  # the scorer reads the audio at its own rate (CLAP), or tags it first (the tag bridge)
            audio = _load(models, path, models.scorer_rate)
            scores = models.scorer.score_batch([ScoreItem(labels, audio=lambda: audio)])[0].scores
        except AudioError as exc:
            typer.echo(f"{path_uri(path)}: {exc}", err=True)
            failed = True
            continue
        if as_json:
            typer.echo(json.dumps({"path": path_uri(path), "scores": [{"label": l, "score": round(float(s), 6)}
                                                               for l, s in zip(labels, scores)]}))
        else:
            for l, s in zip(labels, scores):
                typer.echo(f"{path_uri(path)}\t{l}\t{s:.4f}")
    if failed:
        raise typer.Exit(1)


def _load(models, path: Path, rate: int | None = None):
    from auditoryhum.audio import load
    from auditoryhum.pipeline import audio_limits

    # The path itself, not a clip message: a name that is not UTF-8 fits no protobuf string.
    return load(path, rate or models.labeler.sample_rate, audio_limits(models.settings))
