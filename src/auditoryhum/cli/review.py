"""`auditoryhum review`: review tasks out to Label Studio, and its annotations back in as decisions; the authors'
published annotation files in as decisions."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditoryhum.cli.common import bad_file

review_app = typer.Typer(no_args_is_help=True, help="Review tasks out to Label Studio, and its annotations back in as "
                                                    "decisions, over the review service's gRPC API.")
REVIEW_ADDRESS = typer.Option("127.0.0.1:50053", "--review", help="The review service's gRPC address (HOST:PORT).")
REVIEW_TOKEN = typer.Option(None, "--token", envvar="AUDITORYHUM_AUTH_TOKEN", show_envvar=True,
                            help="The service's bearer token, when it has one.")


@contextmanager
def service_errors(address: str) -> Iterator[None]:
    """A call the service refuses or cannot answer ends the command with its status and words."""
    import grpc

    try:
        yield
    except grpc.RpcError as exc:
        typer.echo(f"{address}: {exc.code().name}: {exc.details()}", err=True)
        raise typer.Exit(1) from None


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

    with service_errors(review), ReviewClient(review, token) as client:
        tasks = client.pending(dataset)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tasks.json").write_text(json.dumps(export_tasks(map(task_view, tasks), audio_url), indent=1,
                                               ensure_ascii=False), encoding="utf-8")
    (out / "labeling_config.xml").write_text(labeling_config(), encoding="utf-8")
    typer.echo(f"wrote {len(tasks)} tasks to {out / 'tasks.json'} and the config to {out / 'labeling_config.xml'}")


@review_app.command("close")
def review_close(
    dataset: str = typer.Option(..., "--dataset", help="The dataset whose review ends now."),
    review: str = REVIEW_ADDRESS,
    token: Optional[str] = REVIEW_TOKEN,
) -> None:
    """End a dataset's human review: the tasks nobody decided keep the model's label, and the dataset's taxonomy
    follows (once no correction awaits its score)."""
    from auditoryhum.service.client import ReviewClient

    with service_errors(review), ReviewClient(review, token) as client:
        answer = client.close_review(dataset)
    typer.echo(json.dumps({"dataset": dataset, "kept_model_label": answer.kept_model_label, "sealed": answer.sealed}))


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
        raise bad_file(file, exc)
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


@review_app.command("import-csv")
def review_import_csv(
    file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="A published human-annotation file: one line per clip of the dataset in file "
                                     "name order, blank where a clip was not reviewed, else the reviewer's labels."),
    dataset_root: Path = typer.Option(..., "--dataset-root", exists=True, file_okay=False,
                                      help="The dataset folder the clips were ingested from."),
    layout: str = typer.Option("files", help="How that folder is read: files, advance, ahead-ds, tau2019, tau2021."),
    dataset: Optional[str] = typer.Option(None, help="The dataset name used at ingest (default: the layout's or the "
                                                     "folder's name)."),
    action: str = typer.Option("correct", help="correct (the line is the label) or relabel (the line is a hint)."),
    skip_unselected: bool = typer.Option(False, help="Skip lines whose clip has no pending task (not selected "
                                                     "for review) instead of refusing the file."),
    reviewer: str = typer.Option("", help="Recorded as the decisions' reviewer (default: annotations:<file name>)."),
    review: str = REVIEW_ADDRESS,
    token: Optional[str] = REVIEW_TOKEN,
) -> None:
    """Apply the authors' human annotations as review decisions, over the review service's gRPC API. The whole file
    is checked first (its length against the dataset, every line's labels, every annotated clip's pending task):
    on any problem nothing is applied."""
    import grpc

    from auditoryhum import datasets
    from auditoryhum.manifest import ManifestError
    from auditoryhum.review.annotations import ACTIONS, AnnotationError, check_pending, read_annotations
    from auditoryhum.service.client import ReviewClient

    if action not in ACTIONS:
        raise typer.BadParameter("correct or relabel", param_hint="--action")
    try:
        found = datasets.load(str(dataset_root), layout)
        name = dataset or found.name
        notes = read_annotations(file, found, name)
        with ReviewClient(review, token) as client:
            pending = {task.task_id for task in client.pending(name)}
            skipped = [a for a in notes if a.task_id not in pending] if skip_unselected else []
            notes = [a for a in notes if a not in skipped]
            check_pending(notes, pending, file)
            rows = []
            for a in notes:
                answer = client.submit(a.decision(action, reviewer or f"annotations:{file.name}"[:100]))
                rows.append((str(a.line), a.path, "duplicate" if answer.duplicate else "applied", answer.clip_status))
    except (ManifestError, AnnotationError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except grpc.RpcError as exc:
        typer.echo(f"{review}: {exc.code().name}: {exc.details()}", err=True)
        raise typer.Exit(1) from None
    rows += [(str(a.line), a.path, "skipped", "no pending task") for a in skipped]
    table = Table(title=f"{file.name} → review decisions ({name})")
    for col in ("line", "clip", "outcome", "clip status"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*map(Text, row))
    Console().print(table)
    Console().print(f"{sum(r[2] == 'applied' for r in rows)} applied, {len(skipped)} skipped")


def _print_outcomes(rows: list[tuple[str, str, str, str]]) -> None:
    table = Table(title="Label Studio annotations → review decisions")
    for col in ("task", "Label Studio task", "outcome", "clip status or reason"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*map(Text, row))  # Text: ids and reasons quote annotators' text, never rich markup
    Console().print(table)
    counts = {o: sum(r[2] == o for r in rows) for o in ("applied", "duplicate", "refused", "invalid", "skipped")}
    Console().print(", ".join(f"{n} {o}" for o, n in counts.items()))


@review_app.command("calibration")
def review_calibration(
    url: Optional[str] = typer.Option(None, "--url", help="SQLAlchemy URL of the review service's state (default: "
                                                          "AUDITORYHUM_STATE_URL, else review.db in "
                                                          "AUDITORYHUM_STATE_DIR)."),
    dataset: str = typer.Option("", help="Only this dataset (default: every dataset with decisions)."),
    method: Optional[str] = typer.Option(None, help="isotonic or platt (default: AUDITORYHUM_REVIEW_CALIBRATION)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", file_okay=False,
                                       help="Also write each dataset's plot here (<dataset>_calibration.png)."),
) -> None:
    """Fit each dataset's score → P(reviewer accepts) from the decisions the review service recorded; print how many
    decisions each fit has and the score from which P(accept) reaches common precisions. Reads the state only."""
    from sqlalchemy import create_engine, make_url, select
    from sqlalchemy.exc import SQLAlchemyError

    from auditoryhum.cli.common import load_settings
    from auditoryhum.report import plot_calibration
    from auditoryhum.review.calibration import PRECISIONS, summarise
    from auditoryhum.service.settings import ServiceSettings
    from auditoryhum.store import review_decisions

    settings = load_settings(ServiceSettings, review_calibration=method)
    if url is None:
        url = settings.state_url or f"sqlite:///{Path(settings.state_dir) / 'review.db'}"
    database = make_url(url).database
    if url.startswith("sqlite") and database and not Path(database).exists():
        typer.echo(f"{url}: no such database file", err=True)
        raise typer.Exit(1)
    engine = create_engine(url)
    try:
        with engine.connect() as db:
            names = [dataset] if dataset else list(db.execute(select(review_decisions.c.dataset).distinct()
                                                              .order_by(review_decisions.c.dataset)).scalars())
            found = [summarise(db, name, settings.review_calibration, settings.review_precision) for name in names]
    except SQLAlchemyError as exc:
        typer.echo(f"{make_url(url).render_as_string(hide_password=True)}: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    table = Table(title=f"Calibration from reviewers ({settings.review_calibration}): score from which P(accept) ≥ p")
    for col in ("dataset", "decisions", "accepted", *(f"p ≥ {p:g}" for p in PRECISIONS), "note"):
        table.add_column(col, overflow="fold")
    for s in found:
        crossings = s.calibration.crossings() if s.calibration else {}
        cells = [("-" if p not in crossings else "not reached" if crossings[p] is None else f"{crossings[p]:.4f}")
                 for p in PRECISIONS]
        table.add_row(Text(s.dataset), str(len(s.accepted)), str(int(s.accepted.sum())), *cells,
                      Text(s.note() or s.why))
        if out is not None and len(s.scores):
            out.mkdir(parents=True, exist_ok=True)
            plot_calibration(s, out / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', s.dataset).lstrip('.')}_calibration.png")
    Console().print(table)
    if not found:
        typer.echo("no review decisions recorded yet")
