"""The consumer loop: poll a batch, run the stage's handler, publish its outputs, then acknowledge.

Acknowledging only after the outputs are published gives at-least-once delivery; the handlers are idempotent,
so a replay never duplicates a final record. Nothing is dropped: a record that cannot be decoded or that makes
its handler fail becomes a dead letter with the reason; a transient back-end error is retried with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence

from google.protobuf.message import Message

from auditoryhum.bus import Bus, BusError, Consumer, Record
from auditoryhum.bus.codec import TYPE_HEADER, CodecError
from auditoryhum.errors import TransientError
from auditoryhum.stages.base import Out, Stage, dead_letter

log = logging.getLogger(__name__)


class Metrics:
    """What a worker reports; the services plug in Prometheus (:mod:`auditoryhum.service.metrics`)."""

    def batch(self, stage: str, records: Sequence[Record], outs: Sequence[Out], seconds: float) -> None:
        pass

    def error(self, stage: str, kind: str) -> None:
        pass


class StageWorker:
    """One stage bound to its consumer group."""

    def __init__(self, bus: Bus, stage: Stage, *, batch_size: int = 32, max_retries: int = 5,
                 backoff_s: float = 0.2, metrics: "Metrics | None" = None):
        self.bus, self.stage, self.metrics = bus, stage, metrics or Metrics()
        self.batch_size, self.max_retries, self.backoff_s = batch_size, max_retries, backoff_s
        self.consumer_group = f"auditoryhum-{stage.name}"
        self.consumer: Consumer = bus.subscribe(self.consumer_group, stage.consumes)

    def step(self, timeout_s: float = 0.0) -> int:
        """Process one batch; returns how many records it consumed."""
        records = self.consumer.poll(self.batch_size, timeout_s)
        if not records:
            return 0
        started = time.perf_counter()
        try:
            with self.stage.transaction():
                outs = self._handle(records)
                self._publish(outs)
                self.bus.flush()
        except (BusError, TransientError) as exc:  # nothing is committed: the records come again, later
            kind = "bus" if isinstance(exc, BusError) else "transient"
            log.warning("%s: %s unavailable, %d records given back: %s", self.stage.name, kind, len(records), exc)
            for record in records:
                self.consumer.nack(record)
            self.metrics.error(self.stage.name, kind)
            time.sleep(self.backoff_s)
            return 0
        for record in records:
            self.consumer.ack(record)
        self.metrics.batch(self.stage.name, records, outs, time.perf_counter() - started)
        return len(records)

    def _handle(self, records: Sequence[Record]) -> list[Out]:
        outs: list[Out] = []
        decoded: list[tuple[Record, object]] = []
        for record in records:
            try:
                decoded.append((record, record.message()))
            except CodecError as exc:
                outs.append(dead_letter(self.stage.name, str(exc), payload=record.value,
                                        payload_type=record.headers.get(TYPE_HEADER, "")))
        if decoded:
            for record_outs in self._run([m for _, m in decoded], [r for r, _ in decoded]):
                outs += record_outs
        return outs

    def _run(self, messages: Sequence, records: Sequence[Record]) -> list[list[Out]]:
        try:
            return self._with_retries(messages)
        except TransientError:
            raise  # still failing after the retries: a back-end is down, not a bad record; never a dead letter
        except Exception as exc:  # noqa: BLE001 — the last line of defence: the record is kept, with the reason
            if len(messages) > 1:  # isolate the failing record so the rest of the batch goes through
                return [self._run([m], [r])[0] for m, r in zip(messages, records)]
            log.exception("%s failed on a %s", self.stage.name, records[0].headers.get(TYPE_HEADER))
            return [[dead_letter(self.stage.name, f"{type(exc).__name__}: {exc}", messages[0])]]

    def _with_retries(self, messages: Sequence) -> list[list[Out]]:
        attempt = 0
        while True:
            try:
                with self.stage.transaction():  # nested: a failed attempt leaves no state behind
                    return self.stage.handle_batch(messages)
            except TransientError as exc:
                if attempt == self.max_retries:
                    raise
                attempt += 1
                log.warning("%s: transient error, retry %d/%d: %s", self.stage.name, attempt, self.max_retries, exc)
                time.sleep(self.backoff_s * 2 ** (attempt - 1))

    def _publish(self, outs: Sequence[Out]) -> None:
        for out in outs:
            self.bus.publish(out.topic, out.key, out.message)

    def process(self, message: Message) -> list[Out]:
        """Handle one message outside the stream (a synchronous API call) with the same guarantees: the stage's
        state commits only once the outputs are durable on the bus."""
        return self.apply(lambda: self.stage.handle_batch([message])[0])

    def apply(self, change: Callable[[], list[Out]]) -> list[Out]:
        """Run ``change`` on the stage's state and publish its outputs; the state commits once they are durable."""
        with self.stage.transaction():
            outs = change()
            self._publish(outs)
            self.bus.flush()
        return outs


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
