"""Who may call: the bearer token shared by the gRPC APIs and the review web UI, and where we may listen."""

from __future__ import annotations

import hmac
import ipaddress


def check_bind(host: str, token: str | None) -> None:
    """Without a token, only this machine may call: refuse to listen anywhere else."""
    if not token and not is_loopback(host):
        raise ValueError(f"refusing to listen on {host!r} without an auth token: set AUDITORYHUM_AUTH_TOKEN, "
                         "or bind 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_matches(given: str | None, token: str) -> bool:
    """Constant-time comparison, so the answer's timing says nothing about the token."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    scheme, _, value = (header or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
