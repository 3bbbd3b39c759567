"""`auditoryhum evaluate`: the paper's table for finished runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditoryhum.cli.common import app


@app.command("evaluate")
def evaluate_runs(
    runs: list[Path] = typer.Argument(..., exists=True, file_okay=False, help="Run output folders (run --out)."),
    out: Path = typer.Option(Path("out/evaluation"), "--out", "-o", help="Folder for the table and its plots."),
    truth: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                         help="An evaluation set's truth.csv (path, category, description): adds "
                                              "the swapped-label AUC, NMI and ARI against its categories, and "
                                              "k* / categories."),
) -> None:
    """One row per run: clips, unique labels, μc, μ1%, the review's before/after, k*, S(k*), S(2), S(unique), and
    against ground truth NMI, ARI, purity; as evaluation.csv, evaluation.json and evaluation.html."""
    from auditoryhum.evaluate import COLUMNS, HEADINGS, TRUTH_COLUMNS, RunFolderError, evaluate
    from auditoryhum.quality.truth import TruthError, load_truth

    try:
        table = evaluate(runs, out, load_truth(truth) if truth else None)
    except (RunFolderError, TruthError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    # One column per run and a row per measure: 18 measures side by side do not fit a terminal.
    shown = Table(title="AuditoryHuM evaluation")
    shown.add_column("")
    for row in table:
        shown.add_column(str(row["run"]), overflow="fold")
    for column in COLUMNS[1:] + (TRUTH_COLUMNS if truth else ()):
        shown.add_row(HEADINGS[column], *(Text("–" if row[column] is None else f"{row[column]:.4f}"
                                               if isinstance(row[column], float) else str(row[column]))
                                          for row in table))
    Console().print(shown)
    Console().print(f"wrote {out / 'evaluation.csv'}, {out / 'evaluation.json'} and {out / 'evaluation.html'}")
