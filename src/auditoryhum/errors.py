"""Error classes that the adapters raise and the stages and runner act on. A bottom module: backends, stores and
stages all import it, and it imports nothing of ours."""

from __future__ import annotations


class TransientError(RuntimeError):
    """A back-end hiccup (model server busy, database restarting): retry the record later, never dead-letter it."""
