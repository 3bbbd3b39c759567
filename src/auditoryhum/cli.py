"""The `auditoryhum` command line."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

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
    if not verbose:  # kafka-python and urllib3 (kubernetes) log every failed attempt; the command reports the outcome
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.CRITICAL)  # the client resets "urllib3"


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
    review_ui: bool = typer.Option(False, "--review-ui", help="Pause after scoring and serve the review queue in "
                                                              "the browser; \"Finish review\" builds the taxonomy."),
    ui_host: str = typer.Option("127.0.0.1", help="Address of the review UI (beyond loopback only with a token)."),
    ui_port: int = typer.Option(8080, min=0, max=65535, help="Port of the review UI (0: any free port)."),
    ui_token: Optional[str] = typer.Option(None, envvar="AUDITORYHUM_AUTH_TOKEN", show_envvar=True,
                                           help="Token reviewers must enter."),
) -> None:
    """Label, score, review and cluster every clip in AUDIO_DIR (embedded mode, one process)."""
    from auditoryhum import pipeline
    from auditoryhum.auth import check_bind

    if review_ui:
        try:
            check_bind(ui_host, ui_token)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--ui-host") from None
    settings = _settings(review_fraction=review_fraction, review_threshold=review_threshold, k_min=k_min,
                         k_max=k_max, penalty_lambda=lam, algorithm=algorithm, max_words=max_words,
                         class_from_folder=class_from_folder or None, representation=representation,
                         namer_model=str(namer_model) if namer_model else None, profile=profile,
                         backend=backend, triton_url=triton_url)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("loading models", total=None)

        def reviewing(url: str, pending: int) -> None:
            progress.update(task, description="reviewing")
            # stdout, unstyled: scripts and tests read the address from it
            print(f"Review UI: {url} ({pending} tasks). Click \"Finish review\" there to build the taxonomy.",
                  flush=True)

        ui = pipeline.ReviewUi(ui_host, ui_port, ui_token, reviewing) if review_ui else None
        result = pipeline.run(
            audio_dir, out, settings, dataset=dataset, review_ui=ui,
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


_KUBE = "Kubernetes (--on-kubernetes)"


@app.command("ingest")
def ingest_command(
    source: str = typer.Argument(..., help="A folder of audio, a CSV of URIs (column uri; optional class, split), or "
                                           "an object-store prefix (s3://…, gs://…, file://…)."),
    bootstrap: str = typer.Option("127.0.0.1:19092", help="Kafka bootstrap servers."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name (default: the folder's, file's or prefix's name)."),
    partitions: int = typer.Option(4, min=1, help="Partitions of topics created if missing."),
    class_from_folder: bool = typer.Option(False, help="Use each clip's first sub-folder as its ground-truth class."),
    shard_index: int = typer.Option(0, min=0, help="Publish only shard I: the clips whose position mod N is I."),
    shard_count: Optional[int] = typer.Option(None, min=1, help="N shards (default 1; with --on-kubernetes: the "
                                                                "parallelism)."),
    announce: bool = typer.Option(True, "--announce/--no-announce",
                                  help="Announce the dataset and its whole clip count first; once per dataset."),
    expect_clips: Optional[int] = typer.Option(None, min=0, help="Refuse to publish unless the manifest lists this "
                                                                 "many clips (shards check the announced count)."),
    on_kubernetes: bool = typer.Option(False, "--on-kubernetes", rich_help_panel=_KUBE,
                                       help="Announce here, then publish the shards from a Kubernetes Indexed Job."),
    parallelism: int = typer.Option(4, min=1, rich_help_panel=_KUBE, help="Pods at once."),
    image: Optional[str] = typer.Option(None, rich_help_panel=_KUBE, help="The pods' image (with `auditoryhum`)."),
    namespace: str = typer.Option("default", rich_help_panel=_KUBE),
    kafka_bootstrap: Optional[str] = typer.Option(None, rich_help_panel=_KUBE,
                                                  help="Kafka as the pods reach it (default: --bootstrap)."),
    kubeconfig: Optional[str] = typer.Option(None, rich_help_panel=_KUBE,
                                             help="Default: in-cluster, else $KUBECONFIG or ~/.kube/config."),
    context: Optional[str] = typer.Option(None, rich_help_panel=_KUBE, help="Kubeconfig context."),
    cpu: str = typer.Option("500m", rich_help_panel=_KUBE, help="CPU request per pod."),
    memory: str = typer.Option("512Mi", rich_help_panel=_KUBE, help="Memory request and limit per pod."),
    backoff_limit_per_index: int = typer.Option(3, min=0, rich_help_panel=_KUBE, help="Retries of each shard."),
    ttl: int = typer.Option(86_400, min=0, rich_help_panel=_KUBE, help="Seconds a finished Job is kept."),
    service_account: Optional[str] = typer.Option(None, rich_help_panel=_KUBE),
    env_from_secret: Optional[str] = typer.Option(None, rich_help_panel=_KUBE,
                                                  help="A Secret whose keys become the pods' environment "
                                                       "(object-store credentials)."),
    volume_claim: Optional[str] = typer.Option(None, rich_help_panel=_KUBE,
                                               help="A PersistentVolumeClaim mounted read-only at --mount-path."),
    mount_path: str = typer.Option("/data", rich_help_panel=_KUBE),
) -> None:
    """Publish a dataset's clips (or one shard of them) to Kafka for the services, announcing the dataset and its
    clip count first; or run the shards as a Kubernetes Indexed Job."""
    from auditoryhum import kube, topics
    from auditoryhum.bus import BusError
    from auditoryhum.bus.kafka import KafkaBus, ensure_topics
    from auditoryhum.manifest import ManifestError, load
    from auditoryhum.v1 import pipeline_pb2 as pb

    shards = shard_count or (parallelism if on_kubernetes else 1)
    if shard_index >= shards:
        raise typer.BadParameter(f"must be below --shard-count ({shards})", param_hint="--shard-index")
    if on_kubernetes and not image:
        raise typer.BadParameter("is required with --on-kubernetes", param_hint="--image")
    try:
        found = load(source, class_from_folder=class_from_folder)
    except ManifestError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if expect_clips is not None and expect_clips != len(found.entries):
        typer.echo(f"{source} lists {len(found.entries)} clips, but {expect_clips} were announced: the source "
                   "changed since; nothing published", err=True)
        raise typer.Exit(1)
    dataset = dataset or found.name
    job = api = None
    if on_kubernetes:  # the server accepts the Job (a dry run) before anything is announced
        spec = kube.IngestJob(source, dataset, len(found.entries), shards, min(parallelism, shards), image,
                              kafka_bootstrap or bootstrap, partitions, class_from_folder, cpu, memory,
                              backoff_limit_per_index, ttl, service_account, env_from_secret, volume_claim, mount_path)
        job = kube.ingest_job(spec)
        try:
            api = kube.connect(kubeconfig, context)
            kube.submit_job(api, namespace, job, dry_run=True)
        except kube.KubeError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
    entries = [] if on_kubernetes else found.shard(shard_index, shards)
    try:
        ensure_topics(bootstrap, topics.ALL, partitions)
        bus = KafkaBus(bootstrap, client_id="auditoryhum-ingest")
        if announce:
            bus.publish(topics.DATASETS, dataset,
                        pb.DatasetAnnouncement(dataset=dataset, expected_clips=len(found.entries)))
        for clip in found.clips(dataset, entries):
            bus.publish(topics.CLIPS, clip.clip_id, clip)
        bus.flush()
        bus.close()
    except BusError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    result = {"dataset": dataset, "clips": len(found.entries), "announced": announce, "skipped_files": found.skipped}
    if on_kubernetes:
        try:
            created = kube.submit_job(api, namespace, job)
        except kube.KubeError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
        result.update(job=created["metadata"]["name"], namespace=namespace, shards=shards)
    else:
        result.update(shard=shard_index, shards=shards, published=len(entries))
    typer.echo(json.dumps(result))


@app.command()
def status(
    namespace: str = typer.Option("default", help="The release's namespace."),
    bootstrap: Optional[str] = typer.Option(None, help="Kafka bootstrap servers, to report each consumer group's lag."),
    kubeconfig: Optional[str] = typer.Option(None, help="Default: in-cluster, else $KUBECONFIG or ~/.kube/config."),
    context: Optional[str] = typer.Option(None, help="Kubeconfig context."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of tables."),
) -> None:
    """The release on Kubernetes: Deployments and their replicas, KEDA ScaledObjects and HPAs, ingest Jobs, and
    each consumer group's Kafka lag."""
    from auditoryhum import kube, topics
    from auditoryhum.bus import BusError
    from auditoryhum.bus.kafka import group_lag

    try:
        report = kube.release_status(kube.connect(kubeconfig, context), namespace)
    except kube.KubeError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    report["lag"] = report["lag_error"] = None
    if bootstrap:
        try:
            report["lag"] = group_lag(bootstrap, {f"auditoryhum-{s}": t for s, t in topics.CONSUMES.items()})
        except BusError as exc:  # the cluster's half of the report still stands
            report["lag_error"] = str(exc)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        _print_status(report)


def _print_status(report: dict) -> None:
    out = Console()
    scaled = report["scaledobjects"]
    keda = {so["target"]: so for so in scaled} if isinstance(scaled, list) else {}
    hpas = {h["target"]: h for h in report["hpas"]}
    lag = report["lag"] or {}
    table = Table(title=f"AuditoryHuM in namespace {report['namespace']}")
    for col in ("deployment", "component", "ready/desired", "autoscaler", "consumer group", "lag"):
        table.add_column(col)
    for d in report["deployments"]:
        group = f"auditoryhum-{d['component']}"
        if d["name"] in keda:
            so = keda[d["name"]]
            thresholds = ", ".join(str(t["lagThreshold"]) for t in so["triggers"] if t.get("lagThreshold"))
            scaler = f"KEDA {so['min']}–{so['max']}" + (f", lag threshold {thresholds}" if thresholds else "")
        elif d["name"] in hpas:
            h = hpas[d["name"]]
            scaler = f"HPA {h['min']}–{h['max']} on {', '.join(h['metrics'])}"
        else:
            scaler = "-"
        table.add_row(d["name"], d["component"], f"{d['ready']}/{d['desired']}", scaler,
                      group if group in lag else "-", str(lag[group]) if group in lag else "-")
    out.print(table)
    shown = {f"auditoryhum-{d['component']}" for d in report["deployments"]}
    if rest := {g: n for g, n in lag.items() if g not in shown}:  # groups with no Deployment here
        out.print("lag: " + ", ".join(f"{g} {n}" for g, n in rest.items()))
    if isinstance(scaled, str):
        out.print(f"KEDA ScaledObjects: {scaled}")
    if report["lag_error"]:
        out.print(f"lag: {report['lag_error']}")
    if report["jobs"]:
        jobs = Table(title="ingest Jobs")
        for col in ("job", "dataset", "succeeded/completions", "active", "failed", "failed indexes", "state"):
            jobs.add_column(col)
        for j in report["jobs"]:
            jobs.add_row(j["name"], j["dataset"], f"{j['succeeded']}/{j['completions']}", str(j["active"]),
                         str(j["failed"]), j["failed_indexes"] or "-",
                         ", ".join(j["conditions"]) or ("running" if j["active"] else "pending"))
        out.print(jobs)


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
    if summary.get("review_mean_after") is not None:  # reviewers decided: the paper's uplift
        rows.insert(4, ("review uplift", f"{summary['review_decided']} decided, mean score "
                                         f"{summary['review_mean_before']:.4f} → {summary['review_mean_after']:.4f}"))
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


# -- the state database of review and clusterer ----------------------------------------------------------------------

db_app = typer.Typer(no_args_is_help=True, help="The review/clusterer state database: schema migrations (Alembic).")
app.add_typer(db_app, name="db")
STATE_URL = typer.Option(None, "--url", help="SQLAlchemy URL (default: AUDITORYHUM_STATE_URL, else each service's "
                                             "SQLite file in AUDITORYHUM_STATE_DIR).")


@db_app.command("upgrade")
def db_upgrade(url: Optional[str] = STATE_URL) -> None:
    """Bring the state database(s) to the newest schema; services do this at start-up too."""
    from auditoryhum import migrations
    from auditoryhum.store import Store

    for u in _state_urls(url):
        with _db_errors(u):
            store = Store(u)
            with store.engine.connect() as conn:
                typer.echo(f"{_shown(u)}: {migrations.current(conn)}")
            store.close()


@db_app.command("current")
def db_current(url: Optional[str] = STATE_URL) -> None:
    """Print each state database's schema revision ("none": not migrated yet)."""
    from sqlalchemy import create_engine, make_url

    from auditoryhum import migrations

    for u in _state_urls(url):
        database = make_url(u).database
        if u.startswith("sqlite") and database and not Path(database).exists():
            typer.echo(f"{_shown(u)}: none (no database file)")
            continue
        with _db_errors(u):
            engine = create_engine(u)
            with engine.connect() as conn:
                typer.echo(f"{_shown(u)}: {migrations.current(conn) or 'none'}")
            engine.dispose()


@db_app.command("revision")
def db_revision(message: str = typer.Option(..., "--message", "-m", help="What the migration does."),
                autogenerate: bool = typer.Option(True, help="Write the operations that turn the newest revision's "
                                                             "schema into store.py's tables.")) -> None:
    """Write a new migration into src/auditoryhum/migrations/versions (for developers)."""
    from alembic import command
    from alembic.script import ScriptDirectory

    from auditoryhum import migrations
    from auditoryhum.store import Store

    store = Store()  # an in-memory database at the newest revision: what autogenerate compares the tables with
    with store.engine.connect() as conn:
        cfg = migrations.config(conn)
        head = ScriptDirectory.from_config(cfg).get_current_head()
        script = command.revision(cfg, message, autogenerate=autogenerate, rev_id=f"{int(head) + 1:04d}")
    typer.echo(script.path)


def _state_urls(url: str | None) -> list[str]:
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    from auditoryhum.service.settings import ServiceSettings

    settings = _settings(ServiceSettings)
    urls = [url] if url else list(dict.fromkeys(settings.store_url(service) for service in ("review", "clusterer")))
    for u in urls:
        try:
            make_url(u)
        except ArgumentError:
            typer.echo(f"not a database URL: {u!r} (e.g. sqlite:///state/review.db, postgresql+psycopg://…)",
                       err=True)
            raise typer.Exit(2) from None
    return urls


def _shown(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def _db_errors(url: str) -> Iterator[None]:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from auditoryhum.migrations import MigrationError

    try:
        yield
    except (SQLAlchemyError, CommandError, MigrationError) as exc:
        typer.echo(f"{_shown(url)}: {exc}", err=True)
        raise typer.Exit(1) from None
    except ImportError as exc:  # the URL names a driver that is not installed
        typer.echo(f"{_shown(url)}: no driver for this URL ({exc})", err=True)
        raise typer.Exit(1) from None


# -- Label Studio interchange of review tasks, over the review service's gRPC API -----------------------------------

review_app = typer.Typer(no_args_is_help=True, help="Review tasks out to Label Studio, and its annotations back in as "
                                                    "decisions, over the review service's gRPC API.")
app.add_typer(review_app, name="review")
REVIEW_ADDRESS = typer.Option("127.0.0.1:50053", "--review", help="The review service's gRPC address (HOST:PORT).")
REVIEW_TOKEN = typer.Option(None, "--token", envvar="AUDITORYHUM_AUTH_TOKEN", show_envvar=True,
                            help="The service's bearer token, when it has one.")


@review_app.command("export")
def review_export(
    out: Path = typer.Option(..., "--out", "-o", file_okay=False,
                             help="Folder for tasks.json and labeling_config.xml."),
    audio_base_url: Optional[str] = typer.Option(None, help="The review UI's base URL: each task's audio is "
                                                            "<URL>/tasks/<task id>/audio."),
    audio_from_uri: bool = typer.Option(False, "--audio-from-uri", help="Use each clip's own uri as its audio URL "
                                                                        "instead (an absolute path becomes file://)."),
    dataset: str = typer.Option("", help="Only this dataset's tasks (default: all)."),
    review: str = REVIEW_ADDRESS,
    token: Optional[str] = REVIEW_TOKEN,
) -> None:
    """Write the pending review tasks as a Label Studio import file (tasks.json) with the project's labeling config
    (labeling_config.xml)."""
    from urllib.parse import quote

    import grpc

    from auditoryhum.review.labelstudio import export_tasks, labeling_config, task_view
    from auditoryhum.service.client import ReviewClient

    if audio_from_uri == bool(audio_base_url):
        raise typer.BadParameter("give exactly one of --audio-base-url and --audio-from-uri",
                                 param_hint="--audio-base-url")
    if audio_base_url and not audio_base_url.startswith(("http://", "https://")):
        raise typer.BadParameter("an http:// or https:// URL, e.g. http://127.0.0.1:8080",
                                 param_hint="--audio-base-url")

    def audio_url(view) -> str:
        if audio_base_url:  # the UI's own route, which quotes the task id the same way
            return f"{audio_base_url.rstrip('/')}/tasks/{quote(view.task_id, safe='')}/audio"
        return Path(view.uri).as_uri() if view.uri.startswith("/") else view.uri

    try:
        with ReviewClient(review, token) as client:
            tasks = client.pending(dataset)
    except grpc.RpcError as exc:
        typer.echo(f"{review}: {exc.code().name}: {exc.details()}", err=True)
        raise typer.Exit(1) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "tasks.json").write_text(json.dumps(export_tasks(map(task_view, tasks), audio_url), indent=1,
                                               ensure_ascii=False), encoding="utf-8")
    (out / "labeling_config.xml").write_text(labeling_config(), encoding="utf-8")
    typer.echo(f"wrote {len(tasks)} tasks to {out / 'tasks.json'} and the config to {out / 'labeling_config.xml'}")


@review_app.command("import")
def review_import(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A Label Studio JSON export of the project."),
    reviewer_prefix: str = typer.Option("ls:", help="Put before each annotator's email (or user-<id>) in the "
                                                    "decision's reviewer."),
    review: str = REVIEW_ADDRESS,
    token: Optional[str] = REVIEW_TOKEN,
) -> None:
    """Submit each task's latest annotation as a review decision; print what was applied, already decided
    (duplicate), refused by the service, invalid or skipped, and why. Exits 1 if any was refused or invalid."""
    import grpc

    from auditoryhum.review.labelstudio import import_annotations
    from auditoryhum.service.client import ReviewClient

    try:
        items = import_annotations(json.loads(file.read_text(encoding="utf-8")), reviewer_prefix)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise _bad(file, exc)
    rows: list[tuple[str, str, str, str]] = []
    with ReviewClient(review, token) as client:
        for item in items:
            if item.decision is None:
                rows.append((item.ref, item.ls_id, "skipped" if item.skipped else "invalid", item.problem))
                continue
            try:
                answer = client.submit(item.decision)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.DEADLINE_EXCEEDED):
                    if rows:
                        _print_outcomes(rows)
                    # the service can take none of them: stop, rather than fail each one the same way
                    typer.echo(f"{review}: {exc.code().name}: {exc.details()}; stopped at Label Studio task "
                               f"{item.ls_id}", err=True)
                    raise typer.Exit(1) from None
                rows.append((item.ref, item.ls_id, "refused", f"{exc.code().name}: {exc.details()}"))
                continue
            rows.append((item.ref, item.ls_id, "duplicate" if answer.duplicate else "applied", answer.clip_status))
    _print_outcomes(rows)
    if any(row[2] in ("refused", "invalid") for row in rows):
        raise typer.Exit(1)


def _print_outcomes(rows: list[tuple[str, str, str, str]]) -> None:
    table = Table(title="Label Studio annotations → review decisions")
    for col in ("task", "Label Studio task", "outcome", "clip status or reason"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*map(Text, row))  # Text: ids and reasons quote annotators' text, never rich markup
    Console().print(table)
    counts = {o: sum(r[2] == o for r in rows) for o in ("applied", "duplicate", "refused", "invalid", "skipped")}
    Console().print(", ".join(f"{n} {o}" for o, n in counts.items()))
