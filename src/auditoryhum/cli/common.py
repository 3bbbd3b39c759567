"""What the commands share: the Typer app, the error console, settings from options, number formatting."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console

from auditoryhum.config import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Turn unlabelled audio into a human-checked taxonomy of auditory scenes.")
console = Console(stderr=True)


def load_settings(cls: type[Settings] = Settings, **overrides) -> Settings:
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


def bad_file(path: Path, exc: Exception) -> typer.Exit:
    from auditoryhum.audio import path_uri

    typer.echo(f"{path_uri(path)}: {exc}", err=True)  # a name that is not UTF-8 as its file:// URL: printable
    return typer.Exit(1)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
