"""Object stores (``s3://``, ``gs://``): the client options the stages and `ingest` open them with, and their
errors in words a person can act on.

Endpoint and credentials come from the environment, read by the clients themselves: ``AWS_ENDPOINT_URL`` (an
S3-compatible server; botocore honours it, and ``AWS_ENDPOINT_URL_S3`` for S3 alone), ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (or any source of botocore's chain: a profile, a pod's web identity), ``AWS_REGION``;
``GOOGLE_APPLICATION_CREDENTIALS`` for gcsfs. The chart puts them in the pods from a Secret.

Retries live in botocore (its "standard" mode: connection errors, timeouts, 5xx and SlowDown/throttling, with
jittered exponential backoff), a few attempts per read, so one read fails within seconds when the store is away.
What outlasts them is a :class:`~auditoryhum.errors.TransientError` (:mod:`auditoryhum.errors` sorts botocore's
errors): the stage worker retries the batch with its own backoff and then gives it back, so an outage delays clips
and dead-letters none. ``AWS_MAX_ATTEMPTS`` and ``AWS_RETRY_MODE`` still override botocore's side.
"""

from __future__ import annotations

import os
import re
import sys

from auditoryhum.errors import transient_kind

S3_PROTOCOLS = ("s3", "s3a")
ATTEMPTS = 3  # in all, the first included: botocore's standard mode waits up to 2 s, then up to 4 s (jittered)

# S3 error codes in fixed words: the service's own message is its text, which a client does not repeat.
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
           "ExpiredToken", "AllAccessDisabled", "AccountProblem"}


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def options(url: str, *, connect_timeout_s: float = 10.0, read_timeout_s: float = 30.0) -> dict:
    """fsspec storage options for ``url``'s store: timeouts and bounded retries; nothing for other protocols."""
    if protocol(url) not in S3_PROTOCOLS:
        return {}
    retries = {}
    if "AWS_RETRY_MODE" not in os.environ:
        retries["mode"] = "standard"
    if "AWS_MAX_ATTEMPTS" not in os.environ:
        retries["total_max_attempts"] = ATTEMPTS  # counted as AWS_MAX_ATTEMPTS is; "max_attempts" omits the first
    return {"config_kwargs": {"connect_timeout": connect_timeout_s, "read_timeout": read_timeout_s,
                              "retries": retries}}


class NoSuchBucket(FileNotFoundError):
    """A prefix's bucket that does not exist (s3fs's isdir answers False for it, like an empty prefix)."""


def check_bucket(fs, url: str) -> None:
    """Raise :class:`NoSuchBucket` if ``url``'s bucket does not exist; any other refusal propagates as it is."""
    if protocol(url) not in S3_PROTOCOLS:
        return
    try:
        fs.info(_bucket(url))  # HeadBucket
    except FileNotFoundError as exc:
        raise NoSuchBucket(_bucket(url)) from exc


def describe(url: str, exc: BaseException) -> str:
    """``exc`` of ``url``'s store in a line: :func:`reason`'s words, a store that cannot be reached, or its text."""
    if (words := reason(url, exc)) is not None:
        return words
    if transient_kind(exc):
        return f"cannot reach the object store{_at(url)}: {_short(exc)}"
    return _short(exc)


def reason(url: str, exc: BaseException) -> str | None:
    """Why ``url``'s store refused, in fixed words (no such bucket, no such object, access denied, no credentials),
    or None when ``exc`` is none of those (the caller words it)."""
    code = _s3_code(exc)
    if isinstance(exc, NoSuchBucket) or code == "NoSuchBucket":
        return f"no such bucket {_bucket(url)!r}{_at(url)}"
    if code in _DENIED or isinstance(exc, PermissionError):
        code_words = f" ({code})" if code and not code.isdigit() else ""
        return f"access denied{code_words}{_at(url)}: {_credentials(url)}"
    if _no_credentials(exc):
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the chart's objectStore Secret)"
    if code in _MISSING or isinstance(exc, FileNotFoundError):
        return "no such object"
    return None


def _bucket(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _at(url: str) -> str:
    """Where an S3-compatible endpoint is configured, the error says which (AWS's own needs no saying)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f" at {endpoint}" if endpoint and protocol(url) in S3_PROTOCOLS else ""


def _credentials(url: str) -> str:
    if protocol(url) in ("gs", "gcs"):
        return "check GOOGLE_APPLICATION_CREDENTIALS (the chart's objectStore Secret) and the bucket's permissions"
    return ("check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the chart's objectStore Secret) and the bucket's "
            "policy")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r': "[^"]*"$', "", text)[:200]  # botocore appends the whole request URL


def _chain(exc: BaseException | None):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _s3_code(exc: BaseException) -> str | None:
    """The S3 error code of botocore's ClientError behind ``exc`` (s3fs raises an OSError from it)."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and isinstance(error := response.get("Error"), dict) and error.get("Code"):
            return str(error["Code"])
    return None


def _no_credentials(exc: BaseException) -> bool:
    botocore = sys.modules.get("botocore.exceptions")
    return botocore is not None and any(isinstance(e, botocore.NoCredentialsError) for e in _chain(exc))
