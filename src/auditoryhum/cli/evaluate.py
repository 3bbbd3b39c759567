"""`auditoryhum evaluate`: the paper's table for finished runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditoryhum.cli.common import app


@app.command("evaluate")
def evaluate_runs(
    runs: list[Path] = typer.Argument(..., exists=True, file_okay=False, help="Run output folders (run --out)."),
    out: Path = typer.Option(Path("out/evaluation"), "--out", "-o", help="Folder for the table and its plots."),
) -> None:
    """One row per run: clips, unique labels, μc, μ1%, the review's before/after, k*, S(k*), S(2), S(unique), and
    against ground truth NMI, ARI, purity; as evaluation.csv, evaluation.json and evaluation.html."""
    from auditoryhum.evaluate import COLUMNS, HEADINGS, RunFolderError, evaluate

    try:
        table = evaluate(runs, out)
    except RunFolderError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    shown = Table(title="AuditoryHuM evaluation")
    for column in COLUMNS:
        shown.add_column(HEADINGS[column], overflow="fold")
    for row in table:
        shown.add_row(*(Text("–" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v))
                        for v in row.values()))
    Console().print(shown)
    Console().print(f"wrote {out / 'evaluation.csv'}, {out / 'evaluation.json'} and {out / 'evaluation.html'}")
