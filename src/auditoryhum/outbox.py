"""The transactional outbox of a stateful stage (review, clusterer): its outputs become durable together with its
state, then reach the bus exactly once.

A state change and the records it emits are written in one database transaction (:meth:`Outbox.put`); nothing is
published inside it. After the commit, :meth:`Outbox.relay` publishes the waiting records in order, each with a
header carrying its row's token, waits until the broker has them all, and deletes their rows. So a crash
- before the commit leaves neither the state nor the records (the input is read again and redone);
- after the commit and before the records are out leaves the rows, which the next relay publishes;
- after the records are out and before their rows are deleted leaves rows whose records are already on the bus.
  The first relay of a process, and the first after a failed one (a flush that failed may have delivered part of
  its batch), therefore reads the tail of each topic it has rows for and drops the rows whose token it finds
  there (:meth:`Outbox.recover`), instead of publishing them a second time.

Replicas sharing one database share its outbox. Each relays the rows it wrote itself, so a record is never read
back for nothing. A row another process wrote and has not relayed for ``ORPHAN_AFTER_S`` is an orphan: its
writer died, maybe half-way through publishing it. Any replica then takes it, reads the topics' tails for it as
after a crash of its own, and sends it only if it is not there. Every relay locks the rows it sends (FOR UPDATE)
until they are deleted, so two replicas never send the same row.

The read-back is exact on topics this stage alone writes (final labels, review tasks, taxonomies): a record it
relayed is among the last ``waiting rows + RECOVERY_MARGIN`` of its partition. On shared topics (clips, labels,
dead letters) other producers may push it further back; a record sent twice there is one a consumer ignores anyway
(every stage is idempotent by clip id).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter
from typing import Callable, Sequence

from sqlalchemy import delete, insert, select

from auditoryhum.bus import Bus
from auditoryhum.bus.codec import headers
from auditoryhum.stages.base import Out
from auditoryhum.store import Store, outbox

log = logging.getLogger(__name__)
TOKEN_HEADER = "outbox-token"
BATCH = 500  # rows relayed per transaction
RECOVERY_MARGIN = 1000  # records read back per partition beyond the waiting rows (other writers, other replicas)
ORPHAN_AFTER_S = 30.0  # another process's rows still waiting this long: it died (its relay follows its commit)

# (records already on the bus, records sent now) of a recovery, for the service's metrics.
OnRecover = Callable[[int, int], None]


class Outbox:
    """``crash_after``: a fault point for the delivery tests, never set in production — once this many records
    are out, the process is killed (SIGKILL) before their rows are deleted, mid-batch."""

    def __init__(self, store: Store, bus: Bus, *, on_recover: OnRecover | None = None,
                 crash_after: int | None = None, orphan_after_s: float = ORPHAN_AFTER_S,
                 clock=time.monotonic):
        self.store, self.bus = store, bus
        self.on_recover = on_recover or (lambda delivered, resent: None)
        self.crash_after, self.relayed = crash_after, 0
        self.orphan_after_s, self.clock = orphan_after_s, clock
        self._recovered = False
        self._lock = threading.Lock()  # one relay at a time in this process (the stream and the gRPC threads)
        self._mine: set[str] = set()  # tokens of rows this process wrote (or recovered) and has not relayed yet
        self._mine_lock = threading.Lock()  # not self._lock: put runs inside a transaction, relay waits for one
        self._foreign: dict[int, float] = {}  # seq of another process's waiting row → when first seen waiting

    def put(self, outs: Sequence[Out]) -> None:
        """Write ``outs`` to the outbox, inside the caller's transaction on the store."""
        if not outs:
            return
        if not self.store.in_transaction():
            raise RuntimeError("Outbox.put belongs inside the state change's transaction")
        rows = [dict(token=uuid.uuid4().hex, topic=o.topic, key=o.key, payload_type=o.message.DESCRIPTOR.full_name,
                     payload=o.message.SerializeToString()) for o in outs]
        with self.store.transaction() as db:
            db.execute(insert(outbox), rows)
        with self._mine_lock:  # a rolled-back put leaves tokens that never turn up: dropped by the orphan check
            self._mine.update(r["token"] for r in rows)

    def relay(self) -> int:
        """Publish every waiting record, in order; returns how many. Called after the transaction that wrote them
        has committed; inside one (a nested call) it does nothing, and the outermost caller relays. Raises
        :class:`BusError` when the broker does not take them: the rows stay for the next relay."""
        if self.store.in_transaction():
            return 0
        with self._lock:
            if not self._recovered:
                self.recover()
            before = self.relayed
            try:
                while self._relay_batch():
                    pass
                self._relay_orphans()
            except BaseException:
                # Some of the batch may be on the bus although the flush failed: the next relay looks first.
                self._recovered = False
                raise
            return self.relayed - before

    def _relay_orphans(self) -> None:
        """Relay the rows other processes left waiting for ``orphan_after_s``, after looking for them on the bus."""
        now = self.clock()
        with self.store.transaction() as db:  # this process's other transactions wait: none is half-way
            waiting = dict(db.execute(select(outbox.c.seq, outbox.c.token)).all())
            with self._mine_lock:
                self._mine &= set(waiting.values())
                self._foreign = {seq: self._foreign.get(seq, now) for seq, token in waiting.items()
                                 if token not in self._mine}
        orphans = sorted(seq for seq, since in self._foreign.items() if now - since >= self.orphan_after_s)
        for i in range(0, len(orphans), BATCH):
            self._relay_batch(orphans[i:i + BATCH])

    def _relay_batch(self, orphans: list[int] | None = None) -> int:
        """Relay the next waiting rows this process wrote, in order; returns how many rows it looked at (0: none
        left). Rows of other processes met on the way are noted and left to their writer, unless ``orphans``:
        then those rows are relayed, less the ones already on the bus (a dead process may have half-published
        them)."""
        with self.store.transaction() as db:
            # FOR UPDATE: replicas sharing a PostgreSQL database never relay the same rows.
            query = select(outbox).order_by(outbox.c.seq).limit(BATCH).with_for_update()
            if orphans is not None:
                query = query.where(outbox.c.seq.in_(orphans))
            elif self._foreign:
                query = query.where(outbox.c.seq.not_in(list(self._foreign)))
            seen = rows = db.execute(query).all()
            if orphans is not None and rows:
                out = self._on_bus(rows)
                db.execute(delete(outbox).where(outbox.c.token.in_(out)))
                rows = [r for r in rows if r.token not in out]
                if out:
                    log.warning("outbox: of %d rows another process left, %d were out already (not sent again), "
                                "%d are sent now", len(seen), len(out), len(rows))
                    self.on_recover(len(out), len(rows))
            elif rows:
                now = self.clock()
                with self._mine_lock:
                    for r in rows:
                        if r.token not in self._mine:
                            self._foreign.setdefault(r.seq, now)
                    rows = [r for r in rows if r.token in self._mine]
            if not rows:
                return len(seen)
            crash_at = None if self.crash_after is None else self.crash_after - self.relayed
            for row in rows[:crash_at]:
                self.bus.publish_raw(row.topic, row.key, row.payload,
                                     {**headers(row.payload_type), TOKEN_HEADER: row.token})
            self.bus.flush()
            if crash_at is not None and crash_at <= len(rows):
                log.critical("fault point: killed after %d relayed records, before their rows are deleted",
                             self.crash_after)
                os.kill(os.getpid(), signal.SIGKILL)
            db.execute(delete(outbox).where(outbox.c.seq.in_([r.seq for r in rows])))
        self.relayed += len(rows)
        with self._mine_lock:
            self._mine.difference_update(r.token for r in rows)
        return len(seen)

    def _on_bus(self, rows) -> set[str]:
        """The tokens of ``rows`` found in their topics' tails."""
        tokens = {r.token for r in rows}
        return {token for topic, n in Counter(r.topic for r in rows).items()
                for record in self.bus.tail(topic, n + RECOVERY_MARGIN)
                if (token := record.headers.get(TOKEN_HEADER)) in tokens}

    def recover(self) -> tuple[int, int]:
        """Drop the waiting rows whose records a crashed relay already published (found by token in each topic's
        tail); the rest are sent by the relay. Returns (already on the bus, to send)."""
        with self.store.transaction() as db:
            waiting = dict(db.execute(select(outbox.c.token, outbox.c.topic)).all())
            found = sorted({token for topic, n in Counter(waiting.values()).items()
                            for record in self.bus.tail(topic, n + RECOVERY_MARGIN)
                            if (token := record.headers.get(TOKEN_HEADER)) in waiting})
            for i in range(0, len(found), BATCH):  # bounded statements, however many were out
                db.execute(delete(outbox).where(outbox.c.token.in_(found[i:i + BATCH])))
        with self._mine_lock:  # looked for on the bus: ours to send (a replica sending them now holds their lock)
            self._mine.update(set(waiting) - set(found))
        self._recovered = True
        delivered, resent = len(found), len(waiting) - len(found)
        if waiting:
            log.warning("outbox: of the records left by a crash or a failed relay, %d were out already (not sent "
                        "again), %d are sent now", delivered, resent)
            self.on_recover(delivered, resent)
        return delivered, resent

