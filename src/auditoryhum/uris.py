"""The URI policy: which clip URIs a process reads on someone else's behalf (``AUDITORYHUM_ALLOWED_URIS``).

A clip's uri comes from whoever can write to Kafka or call the gRPC API, and the review UI serves the audio of
whatever a task names; without a policy any server file or internal URL could be read, and the error text would
tell whether it exists. So every such read goes through :meth:`UriPolicy.resolve` first, before any file is opened
or connection made (a local path's symlinks are read to resolve it, nothing more): a refused URI gets the same
:data:`REFUSED` reason whether or not anything is there.

- A prefix is a local folder (a path or a ``file://`` URL, the same thing) or a remote prefix
  (``s3://bucket/audio/``, ``http://host:8000/clips/``), comma-separated.
- Local URIs are resolved first (``..``, symlinks) and must then lie under an allowed folder: a symlink in an
  allowed folder pointing outside it is refused. ``file://`` URLs are percent-decoded to bytes, so file names
  that are not UTF-8 travel as ``file:///data/caf%E9.wav``. Relative paths are refused (relative to what?).
- Remote URIs must match a prefix's scheme, host (case-insensitive) and port, and lie under its path on a
  segment boundary (``s3://bucket/`` never admits ``s3://bucket-evil/``); userinfo, dot segments and fsspec's
  ``::`` chaining are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote, urlsplit

from auditoryhum.audio import AudioError, is_url, local_path

REFUSED = "not allowed by the URI policy (AUDITORYHUM_ALLOWED_URIS)"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UriRefused(AudioError):
    """A uri outside the policy; the reason never depends on what is at the uri."""

    def __init__(self) -> None:
        super().__init__(REFUSED)


@dataclass(frozen=True)
class _Remote:
    scheme: str
    host: str
    port: int | None
    path: str

    def under(self, prefix: "_Remote") -> bool:
        if (self.scheme, self.host, self.port) != (prefix.scheme, prefix.host, prefix.port):
            return False
        folder = prefix.path if prefix.path.endswith("/") else prefix.path + "/"
        return self.path == prefix.path or self.path.startswith(folder)


class UriPolicy:
    """``prefixes``: allowed folders and remote prefixes. ``exact``: single URIs allowed besides (the entries of
    a manifest the operator named)."""

    def __init__(self, prefixes: Iterable[str] = (), *, exact: Iterable[str] = ()):
        self._folders: list[str] = []
        self._remotes: list[_Remote] = []
        for prefix in prefixes:
            if (remote := _remote(prefix)) is not None:
                self._remotes.append(remote)
            elif (folder := _local(prefix)) is not None:
                self._folders.append(folder)
            else:
                raise ValueError(f"AUDITORYHUM_ALLOWED_URIS: {prefix!r} is neither an absolute folder nor a "
                                 "URL prefix (scheme://host/path/)")
        self._exact = frozenset(filter(None, (_canonical(uri) for uri in exact)))

    @classmethod
    def parse(cls, text: str, *, exact: Iterable[str] = ()) -> "UriPolicy":
        """The policy of a comma-separated list (the setting's form)."""
        return cls([p.strip() for p in text.split(",") if p.strip()], exact=exact)

    def resolve(self, uri: str) -> str:
        """What to read for ``uri``: a local file's resolved path, or the remote URI itself; :class:`UriRefused`
        if the policy does not allow it."""
        if (remote := _remote(uri)) is not None:
            if uri in self._exact or any(remote.under(p) for p in self._remotes):
                return uri
            raise UriRefused()
        path = _local(uri)
        if path is not None and (path in self._exact or any(_inside(path, f) for f in self._folders)):
            return path
        raise UriRefused()

    def allows(self, uri: str) -> bool:
        try:
            self.resolve(uri)
        except UriRefused:
            return False
        return True


def _canonical(uri: str) -> str | None:
    return uri if _remote(uri) is not None else _local(uri)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _local(uri: str) -> str | None:
    """The resolved absolute path a plain path or ``file://`` URL names (decoded as :func:`auditoryhum.audio.
    local_path` reads it); None if it names none."""
    if is_url(uri) and (urlsplit(uri).query or urlsplit(uri).fragment):
        return None
    path = local_path(uri)
    if path is None or not os.path.isabs(path) or "\0" in path:
        return None
    return os.path.realpath(path)


def _remote(uri: str) -> _Remote | None:
    """The parts of a remote URL (anything but ``file://``); None for local paths and for URLs the policy never
    matches (userinfo, dot segments, chained protocols)."""
    if not is_url(uri) or "::" in uri:
        return None
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file" or parts.username is not None or parts.password is not None or not parts.hostname:
        return None
    try:
        port = parts.port if parts.port is not None else _DEFAULT_PORTS.get(scheme)
    except ValueError:  # a port that is not a number
        return None
    decoded = unquote(parts.path)
    if "\\" in decoded or any(segment in (".", "..") for segment in decoded.split("/")):
        return None
    return _Remote(scheme, parts.hostname, port, parts.path)
