"""An in-process bus with Kafka's delivery semantics, for the embedded mode and for tests.

Topics have partitions (key hash), consumer groups have committed offsets, and a partition's records are
dropped once every group subscribed to the topic has committed past them, so memory stays bounded.
"""

from __future__ import annotations

import threading
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

from google.protobuf.message import Message

from auditoryhum.bus import Record, routing
from auditoryhum.bus.codec import encode


def partition_for(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % partitions


@dataclass
class _Partition:
    base: int = 0  # offset of records[0]
    records: deque[Record] = field(default_factory=deque)

    @property
    def end(self) -> int:
        return self.base + len(self.records)


@dataclass
class _Group:
    topics: tuple[str, ...]
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    position: dict[tuple[str, int], int] = field(default_factory=dict)
    acked: dict[tuple[str, int], set[int]] = field(default_factory=dict)


class InMemoryBus:
    def __init__(self, partitions: int = 4):
        self.partitions = partitions
        self._topics: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = {}
        self._lock = threading.RLock()
        self._waiting: dict[str, list[threading.Condition]] = {}  # topic → consumers to wake on publish

    def _topic(self, topic: str) -> list[_Partition]:
        if topic not in self._topics:
            self._topics[topic] = [_Partition() for _ in range(self.partitions)]
        return self._topics[topic]

    def publish(self, topic: str, key: str, message: Message) -> None:
        self.publish_raw(topic, key, *encode(message), route=routing(topic, key, message))

    def publish_raw(self, topic: str, key: str, value: bytes, headers: dict[str, str],
                    route: str | None = None) -> None:
        route = routing(topic, key, value=value, headers=headers) if route is None else route
        with self._lock:
            partitions = self._topic(topic)
            p = partition_for(route, len(partitions))
            part = partitions[p]
            part.records.append(Record(topic, p, part.end, key, value, headers))
            for consumer in self._waiting.get(topic, ()):
                consumer.notify()  # only consumers of this topic: waking every thread costs GIL time

    def flush(self) -> None:
        pass

    def tail(self, topic: str, last: int) -> list[Record]:
        """What is retained of it: records every group has committed are gone (the bus lives in one process, so
        nothing outlives it to look for them)."""
        with self._lock:
            return [r for part in self._topic(topic) for r in list(part.records)[-last:]]

    def subscribe(self, group: str, topics: Sequence[str]) -> "InMemoryConsumer":
        with self._lock:
            state = self._groups.setdefault(group, _Group(tuple(topics)))
            for topic in topics:
                for p, part in enumerate(self._topic(topic)):
                    tp = (topic, p)
                    state.committed.setdefault(tp, part.base)
                    # A (re)joining member resumes from the committed offset, as after a Kafka rebalance.
                    state.position[tp] = state.committed[tp]
                    state.acked[tp] = set()
            consumer = InMemoryConsumer(self, state)
            for topic in topics:
                self._waiting.setdefault(topic, []).append(consumer._wake)
            return consumer

    def lag(self, *groups: str) -> int:
        """Records published but not yet committed by ``groups``, in one consistent snapshot: since a worker
        publishes its outputs before it acknowledges its input, a total of 0 means nothing is in flight."""
        with self._lock:
            return sum(self._topics[t][p].end - off for g in groups
                       for (t, p), off in self._groups[g].committed.items())

    def retained(self) -> int:
        with self._lock:
            return sum(len(part.records) for parts in self._topics.values() for part in parts)

    def close(self) -> None:
        pass

    def _trim(self, topic: str, p: int) -> None:
        floors = [g.committed[(topic, p)] for g in self._groups.values() if (topic, p) in g.committed]
        part = self._topics[topic][p]
        while part.records and floors and part.base < min(floors):
            part.records.popleft()
            part.base += 1


class InMemoryConsumer:
    def __init__(self, bus: InMemoryBus, state: _Group):
        self._bus, self._state = bus, state
        self._turn = 0
        self._wake = threading.Condition(bus._lock)

    def poll(self, max_records: int = 64, timeout_s: float = 0.0) -> list[Record]:
        with self._bus._lock:
            records = self._take(max_records)
            if not records and timeout_s > 0:
                self._wake.wait(timeout_s)
                records = self._take(max_records)
            return records

    def _take(self, max_records: int) -> list[Record]:
        """Called with the bus lock held."""
        out: list[Record] = []
        # Start at a different partition each call so a busy partition cannot starve the others.
        order = list(self._state.position.items())
        self._turn = (self._turn + 1) % len(order)
        for tp, pos in order[self._turn :] + order[: self._turn]:
            part = self._bus._topics[tp[0]][tp[1]]
            while pos < part.end and len(out) < max_records:
                out.append(part.records[pos - part.base])
                pos += 1
            self._state.position[tp] = pos
            if len(out) >= max_records:
                break
        return out

    def ack(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        with self._bus._lock:
            acked = self._state.acked[tp]
            acked.add(record.offset)
            committed = self._state.committed[tp]
            while committed in acked:
                acked.discard(committed)
                committed += 1
            self._state.committed[tp] = committed
            self._bus._trim(*tp)

    def nack(self, record: Record) -> None:
        tp = (record.topic, record.partition)
        with self._bus._lock:
            self._state.position[tp] = min(self._state.position[tp], record.offset)
            self._state.acked[tp] = {o for o in self._state.acked[tp] if o < record.offset}

    def close(self) -> None:
        with self._bus._lock:
            for waiting in self._bus._waiting.values():
                if self._wake in waiting:
                    waiting.remove(self._wake)
