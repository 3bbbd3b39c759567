"""Who may call: the bearer token shared by the gRPC APIs and the review web UI, where we may listen, the key that
signs review sessions, and how many wrong tokens a client may try."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections import OrderedDict
from typing import Callable

# 32 random characters of [A-Za-z0-9] are about 190 bits, beyond guessing online or offline; a shorter token is
# most likely a human's pick, which a dictionary finds. The chart generates 40.
MIN_TOKEN_CHARS = 32


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


def warn_if_short(token: str | None, log: logging.Logger, what: str = "AUDITORYHUM_AUTH_TOKEN") -> None:
    if token and len(token) < MIN_TOKEN_CHARS:
        log.warning("%s has %d characters: use %d or more random ones (e.g. `openssl rand -hex 20`); a short one "
                    "is usually human-chosen and guessable", what, len(token), MIN_TOKEN_CHARS)


def session_key(secret: str | None, log: logging.Logger) -> bytes:
    """The key that signs review UI sessions. From a random server secret (AUDITORYHUM_SESSION_SECRET), never from
    the token: a cookie signed with a key derived from the token would let anyone holding one test token guesses
    offline. Without a secret the key is random for this process."""
    if secret:
        warn_if_short(secret, log, "AUDITORYHUM_SESSION_SECRET")
        return hashlib.sha256(b"auditoryhum review session\0" + secret.encode()).digest()
    log.warning("AUDITORYHUM_SESSION_SECRET is not set: review sessions are signed with a random key of this "
                "process, so a restart signs every reviewer out and replicas do not share sessions")
    return secrets.token_bytes(32)


class Throttle:
    """Wrong tokens per client: a bucket of ``burst`` tries, refilled at one per ``refill_s`` seconds; an empty
    bucket refuses the client until it refills. Right tokens cost nothing. At most ``max_clients`` buckets are kept
    (the least recently failing dropped first), so memory stays bounded however many addresses call."""

    def __init__(self, burst: int = 10, refill_s: float = 6.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.burst, self.refill_s, self.max_clients, self.clock = burst, refill_s, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client → (tries left, when)
        self._lock = threading.Lock()

    def _left(self, client: str, now: float) -> float:
        tries, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tries + (now - at) / self.refill_s)

    def retry_after(self, client: str) -> float:
        """0 when ``client`` may try a token now, else the seconds until it may."""
        with self._lock:
            left = self._left(client, self.clock())
        return 0.0 if left >= 1 else (1 - left) * self.refill_s

    def failed(self, client: str) -> None:
        with self._lock:
            now = self.clock()
            self._buckets[client] = (self._left(client, now) - 1, now)
            self._buckets.move_to_end(client)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
