"""Publish/subscribe of protobuf messages by topic and key, shaped like Kafka.

Records with the same key land in the same partition and are delivered in order. A consumer acknowledges each
record after its outputs are published; the group's committed offset only moves over acknowledged records, so
a consumer that dies or gives a record back (``nack``) sees it again: at-least-once delivery. The in-memory bus
(:mod:`auditoryhum.bus.memory`) and the Kafka bus implement the same two protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from google.protobuf.message import Message

from auditoryhum import topics
from auditoryhum.bus.codec import CodecError, decode


class BusError(RuntimeError):
    """The broker cannot take or give records right now; the work is retried, never dropped."""


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    headers: dict[str, str] = field(default_factory=dict)
    timestamp_ms: int = 0  # the producer's time on Kafka (CreateTime); 0 on the in-memory bus

    def message(self) -> Message:
        """The decoded protobuf; raises :class:`~auditoryhum.bus.codec.CodecError` for a malformed record."""
        return decode(self.value, self.headers)


class Consumer(Protocol):
    def poll(self, max_records: int = 64, timeout_s: float = 0.0) -> list[Record]: ...

    def ack(self, record: Record) -> None: ...

    def nack(self, record: Record) -> None:
        """Give the record back: it (and everything after it in its partition) is delivered again."""
        ...

    def close(self) -> None: ...


class Bus(Protocol):
    def publish(self, topic: str, key: str, message: Message) -> None: ...

    def publish_raw(self, topic: str, key: str, value: bytes, headers: dict[str, str],
                    route: str | None = None) -> None:
        """Publish an encoded record (``publish`` encodes, then calls this). ``route``: what picks the partition
        (:func:`routing`); None works it out from the record."""
        ...

    def tail(self, topic: str, last: int) -> list[Record]:
        """Up to the ``last`` newest records of each of the topic's partitions, read outside any consumer group."""
        ...

    def flush(self) -> None:
        """Block until every published record is durable (a no-op in memory); raises :class:`BusError` if one
        could not be delivered."""
        ...

    def subscribe(self, group: str, topics: Sequence[str]) -> Consumer: ...

    def close(self) -> None: ...


def routing(topic: str, key: str, message: Message | None = None, value: bytes = b"",
            headers: dict[str, str] | None = None) -> str:
    """What a record's partition is hashed from: :func:`auditoryhum.topics.partition_key` of the message (decoded
    from ``value`` when not given, on the routed topics only), else the key."""
    if topic not in topics.ROUTED:
        return key
    if message is None:
        try:
            message = decode(value, headers or {})
        except CodecError:  # not ours to route: where its key puts it
            return key
    return topics.partition_key(topic, message) or key
