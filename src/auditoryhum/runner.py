"""The consumer loop: poll a batch, run the stage's handler, publish its outputs, then acknowledge.

Acknowledging only after the outputs are published gives at-least-once delivery; the handlers are idempotent,
so a replay never duplicates a final record. A stage with state (a store) writes its outputs to the store's
outbox in the transaction that changes its state, and they are relayed once it commits (:mod:`auditoryhum.outbox`):
state and outputs are durable together, and a crash anywhere sends no output twice. Nothing is dropped: a record
that cannot be decoded or that makes its handler fail becomes a dead letter with the reason; a transient error
(:func:`~auditoryhum.errors.transient_kind`: a database, an object store or a model server that is away for now) is
retried with backoff, and if it outlasts the retries the batch is given back, never dead-lettered.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Callable, Sequence

from google.protobuf.message import Message

from auditoryhum.bus import Bus, BusError, Consumer, Record
from auditoryhum.bus.codec import TYPE_HEADER, CodecError
from auditoryhum.errors import DATABASE, transient_kind
from auditoryhum.outbox import Outbox
from auditoryhum.stages.base import Out, Stage, dead_letter

log = logging.getLogger(__name__)


class Metrics:
    """What a worker reports; the services plug in Prometheus (:mod:`auditoryhum.service.metrics`)."""

    def batch(self, stage: str, records: Sequence[Record], outs: Sequence[Out], seconds: float) -> None:
        pass

    def error(self, stage: str, kind: str) -> None:
        pass

    def recovered(self, stage: str, delivered: int, resent: int) -> None:
        """The outbox found records a crashed predecessor had relayed (``delivered``) or had not (``resent``)."""


class StageWorker:
    """One stage bound to its consumer group."""

    def __init__(self, bus: Bus, stage: Stage, *, batch_size: int = 32, max_retries: int = 5,
                 backoff_s: float = 0.2, max_backoff_s: float = 10.0, metrics: "Metrics | None" = None,
                 crash_after_relayed: int | None = None):
        self.bus, self.stage, self.metrics = bus, stage, metrics or Metrics()
        self.batch_size, self.max_retries, self.backoff_s = batch_size, max_retries, backoff_s
        self.max_backoff_s = max_backoff_s
        self._given_back = 0  # batches given back in a row: the backoff grows while a back-end stays away
        self.consumer_group = f"auditoryhum-{stage.name}"
        self._idle_relay_at = 0.0
        self.outbox = Outbox(stage.store, bus, on_recover=partial(self.metrics.recovered, stage.name),
                             crash_after=crash_after_relayed) if stage.store is not None else None
        if self.outbox is not None:
            try:  # before this process writes anything: what is waiting was left by a predecessor
                self.outbox.recover()
            except BusError as exc:  # the broker is away: the first relay looks again
                log.warning("%s: outbox recovery postponed: %s", stage.name, exc)
        self.consumer: Consumer = bus.subscribe(self.consumer_group, stage.consumes)

    def step(self, timeout_s: float = 0.0) -> int:
        """Process one batch; returns how many records it consumed."""
        records = self.consumer.poll(self.batch_size, timeout_s)
        if not records:
            self._idle_relay()
            return 0
        started = time.perf_counter()
        try:
            with self.stage.transaction():
                outs = self._handle(records)
                self._emit(outs)
            self.relay()
        except Exception as exc:  # a back-end away, at COMMIT or in the relay too: the records come again (a
            # committed batch replays as a no-op, and its outbox rows wait for the next relay)
            kind = "bus" if isinstance(exc, BusError) else transient_kind(exc)
            if kind is None:
                raise
            log.warning("%s: %s unavailable, %d records given back: %s", self.stage.name, kind, len(records), exc)
            for record in records:
                self.consumer.nack(record)
            self.metrics.error(self.stage.name, kind)
            self._given_back += 1
            time.sleep(self._backoff(self._given_back))
            return 0
        self._given_back = 0
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
        except Exception as exc:  # noqa: BLE001 — the last line of defence: the record is kept, with the reason
            if transient_kind(exc):
                raise  # still failing after the retries: a back-end is down, not a bad record; never a dead letter
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
            except Exception as exc:
                kind = transient_kind(exc)
                # A database error ends the enclosing transaction too (connection lost, transaction aborted): only a
                # new one can retry, so the batch goes back to step, which gives it back. The last attempt's error
                # is counted there as well.
                if kind is None or kind == DATABASE or attempt == self.max_retries:
                    raise
                attempt += 1
                self.metrics.error(self.stage.name, kind)
                log.warning("%s: %s error, retry %d/%d: %s", self.stage.name, kind, attempt, self.max_retries, exc)
                time.sleep(self._backoff(attempt))

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait before the ``attempt``-th retry: doubling from ``backoff_s``, at most ``max_backoff_s``."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** min(attempt - 1, 32))  # a long outage: no overflow

    def _emit(self, outs: Sequence[Out]) -> None:
        """Inside the stage's transaction: into the outbox, or (a stage without state) onto the bus, durably."""
        if self.outbox is not None:
            self.outbox.put(outs)
            return
        for out in outs:
            self.bus.publish(out.topic, out.key, out.message)
        self.bus.flush()

    def _idle_relay(self) -> None:
        """While idle, relay now and then: rows a dead replica left in a shared outbox are sent without waiting for
        this replica's next record (auditoryhum.outbox)."""
        if self.outbox is None or time.monotonic() < self._idle_relay_at:
            return
        self._idle_relay_at = time.monotonic() + self.outbox.orphan_after_s / 2
        try:
            self.relay()
        except Exception as exc:  # an outage: the next relay tries again
            if not isinstance(exc, BusError) and transient_kind(exc) is None:
                raise
            log.warning("%s: idle relay failed: %s", self.stage.name, exc)

    def relay(self) -> None:
        """Publish what the outbox holds (after the transaction that wrote it has committed)."""
        if self.outbox is not None:
            self.outbox.relay()

    def process(self, message: Message) -> list[Out]:
        """Handle one message outside the stream (a synchronous API call) with the same guarantees: the stage's
        state and its outputs commit together, and the outputs are relayed after."""
        return self.apply(lambda: self.stage.handle_batch([message])[0])

    def apply(self, change: Callable[[], list[Out]]) -> list[Out]:
        """Run ``change`` on the stage's state and emit its outputs with it; they are relayed once it commits (by
        the caller, when it holds the transaction)."""
        with self.stage.transaction():
            outs = change()
            self._emit(outs)
        self.relay()
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
