"""The deadline of the API call a thread is working for: the client's or the server's, whichever comes first.

The gRPC server ends a call at its deadline on its own (DEADLINE_EXCEEDED), but the thread doing the work cannot be
interrupted from outside; it stops at checkpoints instead (:meth:`Deadline.check`, before each clip is read and
before its model runs), so the worker is free again soon after.
"""

from __future__ import annotations

import contextvars
import threading
import time
from typing import Callable, TypeVar

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """The call this work is for has ended (its deadline passed, or the client went away)."""


class Deadline:
    def __init__(self, seconds: float | None = None):
        self.at = None if seconds is None else time.monotonic() + seconds
        self._ended = threading.Event()

    def remaining(self) -> float | None:
        """Seconds left (0 once ended); None without a deadline."""
        if self._ended.is_set():
            return 0.0
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def end(self) -> None:
        """The call is over (answered with DEADLINE_EXCEEDED, or cancelled): work for it stops at the next check."""
        self._ended.set()

    def check(self) -> None:
        if self.remaining() == 0.0:
            raise DeadlineExceeded("the call's deadline passed")

    def guard(self, load: Callable[..., T]) -> Callable[..., T]:
        """``load`` with a check before it and after it: before a read, and before the model gets what was read."""

        def checked(*args, **kwargs) -> T:
            self.check()
            value = load(*args, **kwargs)
            self.check()
            return value

        return checked


_CURRENT: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("deadline", default=None)


def current() -> Deadline:
    """The deadline of the call this thread serves (none outside a call)."""
    return _CURRENT.get() or Deadline()


def serving(deadline: Deadline, work: Callable[[], T]) -> T:
    """Run ``work`` with ``deadline`` as :func:`current`."""
    token = _CURRENT.set(deadline)
    try:
        return work()
    finally:
        _CURRENT.reset(token)
