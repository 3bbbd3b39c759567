"""Alembic's environment: migrates the connection that :mod:`auditoryhum.migrations` hands over."""

from alembic import context

from auditoryhum.store import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # e.g. the plain `alembic` command, offline (--sql) mode included
    raise RuntimeError("run migrations with `auditoryhum db upgrade` (or auditoryhum.migrations), "
                       "which passes the database connection")
# Batch operations recreate a table where SQLite's ALTER TABLE falls short; autogenerate writes them too.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
