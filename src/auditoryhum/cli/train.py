"""`auditoryhum train`: a scene recogniser for the edge from a run's taxonomy (auditoryhum.edge)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from auditoryhum.cli.common import app, console


@app.command()
def train(
    run_out: Path = typer.Argument(..., help="The --out folder of a finished `auditoryhum run` (taxonomy.json, "
                                             "assignments.csv)."),
    out: Path = typer.Option(..., "--out", "-o", help="MODEL_DIR: recogniser.json, the ONNX models, the card."),
    models: str = typer.Option("cnn,head", help="Which recognisers, comma-separated: cnn (YAMNet's first layers "
                                                "+ an MLP, no tagger on the device), head (on YAMNet's embeddings)."),
    seed: int = typer.Option(0, help="Seed of the split and of training (the same seed, the same models)."),
    epochs: int = typer.Option(60, min=1, help="Most epochs; early stopping on validation macro-F1."),
    min_clips: int = typer.Option(4, min=1, help="Clusters with fewer clips are left out (listed on the card)."),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Train without clips whose files are gone "
                                                                    "instead of stopping."),
) -> None:
    """Train, export (ONNX float + int8) and grade scene recognisers whose classes are RUN_OUT's clusters."""
    from auditoryhum.edge.build import build
    from auditoryhum.edge.card import table
    from auditoryhum.edge.errors import EdgeError

    chosen = [m.strip() for m in models.split(",") if m.strip()]
    try:
        metrics = build(run_out, out, chosen, seed=seed, epochs=epochs, skip_missing=skip_missing,
                        min_clips=min_clips, log=lambda line: console.print(line, highlight=False))
    except EdgeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    result = Table(title=f"test split: {metrics['split']['test']} clips, {len(metrics['classes'])} classes")
    for column in ("model", "int8 KB", "ms / s audio", "accuracy", "macro-F1"):
        result.add_column(column)
    for row in table(metrics):
        kb = "-" if row["int8_kb"] is None else f"{row['int8_kb']:.1f}"
        result.add_row(row["model"], kb, f"{row['ms_per_s']:.2f}", f"{row['accuracy']:.3f}", f"{row['macro_f1']:.3f}")
    console.print(result)
    console.print(f"model card: {out / 'model_card.md'}", highlight=False)
