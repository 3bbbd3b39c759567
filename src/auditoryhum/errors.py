"""Error classes that the adapters raise and the stages and runner act on. A bottom module: backends, stores and
stages all import it, and it imports nothing of ours.

An error is *transient* when the record is not at fault and the same work succeeds later: a database that restarts,
loses a connection or aborts a transaction to break a deadlock; an object store that is unreachable or overloaded;
a model server that is busy or restarting. Those are retried with backoff and never dead-lettered. Everything else
(a missing or unreadable file, a refused request, a bug) is permanent: the record becomes a dead letter with the
reason. :func:`transient_kind` says which, and of which class, for the metric per class.

Third-party errors (SQLAlchemy, psycopg, aiohttp, botocore, gcsfs) are recognised by their attributes or once their
library is loaded: an error of a library that was never imported cannot occur, so nothing here imports it.
"""

from __future__ import annotations

import sqlite3
import sys

DATABASE, STORAGE, MODEL_SERVER = "database", "storage", "model-server"
TRANSIENT = "transient"  # a TransientError raised without a class

# SQLSTATEs that mean "not now": class 08 (connection exception), the server shutting down, crashed or starting
# (57P01-57P03), too many connections, and the two aborts PostgreSQL asks the client to retry: serialization
# failure and deadlock.
_RETRY_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
# HTTP answers that mean "not now": request timeout, too many requests, and the server's own failures (5xx).
_RETRY_HTTP = frozenset({408, 429})


class TransientError(RuntimeError):
    """A back-end hiccup (model server busy, database restarting): retry the record later, never dead-letter it.
    ``kind`` is its class (:data:`DATABASE`, :data:`STORAGE`, :data:`MODEL_SERVER`), the metric's label."""

    def __init__(self, message: str, *, kind: str = TRANSIENT):
        super().__init__(message)
        self.kind = kind


def transient_kind(exc: BaseException) -> str | None:
    """The class of a transient error, or None when ``exc`` is permanent. The chain of causes is searched too:
    wrappers raise from the error that explains them (SQLAlchemy from its driver's error, fsspec from the network
    error behind its FileNotFoundError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if kind := _kind(exc):
            return kind
        exc = exc.__cause__
    return None


def _kind(exc: BaseException) -> str | None:
    if isinstance(exc, TransientError):
        return exc.kind
    if _database(exc):
        return DATABASE
    if _storage(exc):
        return STORAGE
    return None


def _database(exc: BaseException) -> bool:
    if getattr(exc, "connection_invalidated", False) is True:  # SQLAlchemy's DBAPIError: the connection dropped
        return True
    state = getattr(exc, "sqlstate", None)  # psycopg's errors carry the server's SQLSTATE
    if isinstance(state, str) and state:
        return state.startswith("08") or state in _RETRY_SQLSTATES
    psycopg = sys.modules.get("psycopg")  # no SQLSTATE: the client could not reach the server, or lost it
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return True
    if isinstance(exc, sqlite3.OperationalError):  # another connection holds the write lock
        code = getattr(exc, "sqlite_errorname", "")
        return code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(exc)
    return False


def _storage(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):  # refused, reset, aborted, timed out
        return True
    if (aiohttp := sys.modules.get("aiohttp")) is not None:  # fsspec's http, and s3fs/gcsfs underneath
        if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
            return True
        if isinstance(exc, aiohttp.ClientResponseError):
            return _retry_status(exc.status)
    if (botocore := sys.modules.get("botocore.exceptions")) is not None:  # s3fs
        if isinstance(exc, (botocore.ConnectionError, botocore.HTTPClientError)):  # endpoint, connect/read timeout
            return True
        if isinstance(exc, botocore.ClientError):
            return _retry_status(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    if (gcsfs := sys.modules.get("gcsfs.retry")) is not None and isinstance(exc, gcsfs.HttpError):
        return _retry_status(getattr(exc, "code", 0) or 0)
    return False


def _retry_status(status: int) -> bool:
    return status in _RETRY_HTTP or 500 <= status < 600
