"""The consumer loop: poll a batch, run the stage's handler, publish its outputs, then acknowledge.

Acknowledging only after the outputs are published gives at-least-once delivery; the handlers are idempotent,
so a replay never duplicates a final record. Nothing is dropped: a record that cannot be decoded or that makes
its handler fail becomes a dead letter with the reason; a transient back-end error is retried with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Sequence

from auditoryhum.bus import Bus, Consumer, Record
from auditoryhum.bus.codec import TYPE_HEADER, CodecError
from auditoryhum.stages.base import Out, Stage, TransientError, dead_letter

log = logging.getLogger(__name__)


class StageWorker:
    """One stage bound to its consumer group."""

    def __init__(self, bus: Bus, stage: Stage, *, batch_size: int = 32, max_retries: int = 5,
                 backoff_s: float = 0.2):
        self.bus, self.stage = bus, stage
        self.batch_size, self.max_retries, self.backoff_s = batch_size, max_retries, backoff_s
        self.consumer_group = f"auditoryhum-{stage.name}"
        self.consumer: Consumer = bus.subscribe(self.consumer_group, stage.consumes)

    def step(self, timeout_s: float = 0.0) -> int:
        """Process one batch; returns how many records it consumed."""
        records = self.consumer.poll(self.batch_size, timeout_s)
        if not records:
            return 0
        decoded: list[tuple[Record, object]] = []
        for record in records:
            try:
                decoded.append((record, record.message()))
            except CodecError as exc:
                self._publish([dead_letter(self.stage.name, str(exc), payload=record.value,
                                           payload_type=record.headers.get(TYPE_HEADER, ""))])
        if decoded:
            for outs in self._run([m for _, m in decoded], [r for r, _ in decoded]):
                self._publish(outs)
        self.bus.flush()
        for record in records:
            self.consumer.ack(record)
        return len(records)

    def _run(self, messages: Sequence, records: Sequence[Record]) -> list[list[Out]]:
        try:
            return self._with_retries(messages)
        except Exception as exc:  # noqa: BLE001 — the last line of defence: the record is kept, with the reason
            if len(messages) > 1:  # isolate the failing record so the rest of the batch goes through
                return [self._run([m], [r])[0] for m, r in zip(messages, records)]
            log.exception("%s failed on a %s", self.stage.name, records[0].headers.get(TYPE_HEADER))
            return [[dead_letter(self.stage.name, f"{type(exc).__name__}: {exc}", messages[0])]]

    def _with_retries(self, messages: Sequence) -> list[list[Out]]:
        for attempt in range(self.max_retries):
            try:
                return self.stage.handle_batch(messages)
            except TransientError as exc:
                log.warning("%s: transient error, retry %d/%d: %s", self.stage.name, attempt + 1,
                            self.max_retries, exc)
                time.sleep(self.backoff_s * 2**attempt)
        return self.stage.handle_batch(messages)

    def _publish(self, outs: Sequence[Out]) -> None:
        for out in outs:
            self.bus.publish(out.topic, out.key, out.message)


def drain(workers: Sequence[StageWorker]) -> int:
    """Step every worker in turn until none has anything left (single-threaded); returns the records processed."""
    total = 0
    while done := sum(w.step() for w in workers):
        total += done
    return total


class Threads:
    """Each worker loops on its own thread — stages overlap like services — until :meth:`stop`.

    The first exception that escapes a worker (a bug, not a bad record) stops them all and is re-raised.
    """

    def __init__(self, workers: Sequence[StageWorker], poll_timeout_s: float = 0.05):
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._loop, args=(w, poll_timeout_s), name=w.stage.name, daemon=True)
                         for w in workers]

    def __enter__(self) -> "Threads":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self, worker: StageWorker, timeout_s: float) -> None:
        try:
            while not self._stop.is_set():
                worker.step(timeout_s)
        except BaseException as exc:  # noqa: BLE001 — handed to the caller by check()
            self._error = exc
            self._stop.set()

    def check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"pipeline worker failed: {self._error!r}") from self._error

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self.check()
