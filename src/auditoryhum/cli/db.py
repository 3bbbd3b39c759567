"""`auditoryhum db`: schema migrations of the review/clusterer state database (Alembic)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from auditoryhum.cli.common import load_settings

db_app = typer.Typer(no_args_is_help=True, help="The review/clusterer state database: schema migrations (Alembic).")
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

    settings = load_settings(ServiceSettings)
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
