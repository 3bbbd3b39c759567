"""The distributed mode: serve a service, ingest a dataset (also as a Kubernetes Job), status, taxonomy."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from auditoryhum.cli.common import app, load_settings


@app.command()
def serve(name: str = typer.Argument(..., help="labeler, aligner, review, clusterer or recogniser.")) -> None:
    """Run one service: consume its Kafka topics, serve its gRPC API and /metrics (settings: AUDITORYHUM_* env).
    The recogniser serves a trained MODEL_DIR (AUDITORYHUM_RECOGNISER_DIR) over gRPC and consumes no topic."""
    from auditoryhum.service.app import SERVICES
    from auditoryhum.service.app import serve as serve_service
    from auditoryhum.service.settings import ServiceSettings

    if name == "recogniser":
        return _serve_recogniser()
    if name not in SERVICES:
        typer.echo(f"unknown service {name!r}; one of: {', '.join((*SERVICES, 'recogniser'))}", err=True)
        raise typer.Exit(2)
    settings = load_settings(ServiceSettings)
    if problem := settings.replication_problem(name):
        typer.echo(f"invalid settings: {problem}", err=True)
        raise typer.Exit(2)
    serve_service(name, settings)


def _serve_recogniser() -> None:
    from auditoryhum.edge.recogniser import RecogniserError
    from auditoryhum.service.recogniser import serve as serve_recogniser
    from auditoryhum.service.settings import RecogniserSettings

    settings = load_settings(RecogniserSettings)
    try:
        serve_recogniser(settings)
    except RecogniserError as exc:  # no MODEL_DIR, or not the model asked for: one clear line
        typer.echo(f"recogniser: {exc}", err=True)
        raise typer.Exit(2) from None


_KUBE = "Kubernetes (--on-kubernetes)"


@app.command("ingest")
def ingest_command(
    source: str = typer.Argument(..., help="A folder of audio, a CSV of URIs (column uri; optional class, split), or "
                                           "an object-store prefix (s3://…, gs://…, file://…)."),
    bootstrap: str = typer.Option("127.0.0.1:19092", help="Kafka bootstrap servers."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name (default: the folder's, file's or prefix's name)."),
    partitions: int = typer.Option(4, min=1, help="Partitions of topics created if missing."),
    class_from_folder: bool = typer.Option(False, help="Use each clip's first sub-folder as its ground-truth class."),
    layout: str = typer.Option("files", help="files, or a local folder of one of the paper's datasets as published: "
                                             "advance, ahead-ds, tau2019, tau2021."),
    shard_index: int = typer.Option(0, min=0, help="Publish only shard I: the clips whose position mod N is I."),
    shard_count: Optional[int] = typer.Option(None, min=1, help="N shards (default 1; with --on-kubernetes: the "
                                                                "parallelism)."),
    announce: bool = typer.Option(True, "--announce/--no-announce",
                                  help="Announce the dataset and its whole clip count first; once per dataset."),
    expect_clips: Optional[int] = typer.Option(None, min=0, help="Refuse to publish unless the manifest lists this "
                                                                 "many clips (shards check the announced count)."),
    taxonomy: str = typer.Option("", help="The living taxonomy the dataset joins (default: its own)."),
    probe: Optional[bool] = typer.Option(None, "--probe/--no-probe",
                                         help="Read each file's header (rate, channels, duration) while listing. "
                                              "Default: local files only; an object store's would be a GET per "
                                              "clip."),
    strict: bool = typer.Option(False, help="Refuse the whole manifest if a row has a bad URI or repeats a clip "
                                            "(default: dead-letter the bad rows, skip the repeats)."),
    commit_every: int = typer.Option(2000, min=1, help="Clips per Kafka transaction: a killed run re-does at most "
                                                       "this many (its open transaction is aborted, never seen)."),
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
    from auditoryhum import feed, kube, topics
    from auditoryhum.bus import BusError
    from auditoryhum.bus.kafka import ensure_topics
    from auditoryhum.bus.ledger import Ledger, ensure_progress_topic
    from auditoryhum.datasets import load
    from auditoryhum.manifest import ManifestError

    shards = shard_count or (parallelism if on_kubernetes else 1)
    if shard_index >= shards:
        raise typer.BadParameter(f"must be below --shard-count ({shards})", param_hint="--shard-index")
    if on_kubernetes and not image:
        raise typer.BadParameter("is required with --on-kubernetes", param_hint="--image")
    try:
        found = load(source, layout, class_from_folder=class_from_folder)
        total = found.count()  # the first pass: streams, and finds a CSV's repeats
    except ManifestError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if strict and (found.errors or found.repeats):
        typer.echo(f"{source}: {found.errors} rows with a bad uri, {found.repeats} repeated rows (--strict); nothing "
                   "published", err=True)
        raise typer.Exit(2)
    if expect_clips is not None and expect_clips != total:
        typer.echo(f"{source} lists {total} clips, but {expect_clips} were announced: the source changed since; "
                   "nothing published", err=True)
        raise typer.Exit(1)
    dataset = dataset or found.name
    job = api = None
    if on_kubernetes:  # the server accepts the Job (a dry run) before anything is announced
        spec = kube.IngestJob(source, dataset, total, shards, min(parallelism, shards), image,
                              kafka_bootstrap or bootstrap, partitions, class_from_folder, cpu, memory,
                              backoff_limit_per_index, ttl, service_account, env_from_secret, volume_claim, mount_path,
                              layout=layout, taxonomy=taxonomy, probe=probe, commit_every=commit_every)
        job = kube.ingest_job(spec)
        try:
            api = kube.connect(kubeconfig, context)
            kube.submit_job(api, namespace, job, dry_run=True)
        except kube.KubeError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
    result = {"dataset": dataset, "taxonomy": taxonomy or dataset, "clips": total, "announced": False,
              "bad_rows": found.errors, "repeats": found.repeats, "skipped_total": found.skipped_total,
              "skipped_files": [skipped.as_dict() for skipped in found.skipped]}
    shard = feed.Shard(dataset, shard_index, shards, taxonomy, probe)
    report = feed.Report(f"ingest {dataset} shard {shard_index + 1}/{shards}")
    try:
        ensure_topics(bootstrap, topics.ALL, partitions)
        ensure_progress_topic(bootstrap)
        if announce:
            with closing(Ledger(bootstrap, f"{dataset}/announce")) as ledger:
                result["announced"] = feed.announce(ledger, dataset, total, source, taxonomy)
        if not on_kubernetes:
            with closing(Ledger(bootstrap, shard.name)) as ledger:
                result.update(feed.publish(ledger, found, shard, total, report, commit_every),
                              shard=shard_index, shards=shards)
    except (BusError, feed.FeedError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if on_kubernetes:
        try:
            created = kube.submit_job(api, namespace, job)
        except kube.KubeError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from None
        result.update(job=created["metadata"]["name"], namespace=namespace, shards=shards)
    else:
        report.line(result)
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
    token: Optional[str] = typer.Option(None, envvar="AUDITORYHUM_AUTH_TOKEN", show_envvar=True,
                                        help="The service's bearer token, when it has one."),
) -> None:
    """Fetch a dataset's taxonomy over gRPC and write the same output files as `run`."""
    from auditoryhum import topics
    from auditoryhum.bus.codec import CodecError
    from auditoryhum.bus.kafka import read_topics
    from auditoryhum.models import Models
    from auditoryhum.outputs import OutputWriter
    from auditoryhum.service.client import wait_for_taxonomy

    try:
        result = wait_for_taxonomy(clusterer, dataset, wait, token)
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    writer = OutputWriter(out, dataset=dataset)
    if bootstrap:
        for record in read_topics(bootstrap, [t for t in OutputWriter.consumes if t != topics.TAXONOMY]):
            try:
                writer.handle(record.message())
            except CodecError:  # a foreign or malformed record: the services dead-lettered it, so the DLQ has it
                continue
    writer.taxonomies[dataset] = result
    summary = writer.finish(dataset, Models(load_settings()).embedder, {"skipped_files": [], "seconds": None,
                                                                    "clips_per_s": None})
    Console().print(json.dumps({k: summary[k] for k in ("dataset", "clips", "labelled", "dead_letters", "reviewed",
                                                       "unique_labels", "k")}))
    Console().print(f"wrote {out}")
