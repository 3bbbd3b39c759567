"""The `auditoryhum` command line: one Typer app; each module adds its commands."""

from auditoryhum.cli import evaluate, pipeline, services, train  # noqa: F401 — registers their commands on the app
from auditoryhum.cli.common import app
from auditoryhum.cli.db import db_app
from auditoryhum.cli.review import review_app

app.add_typer(db_app, name="db")
app.add_typer(review_app, name="review")

__all__ = ["app"]
