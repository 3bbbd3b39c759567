"""The bus on Apache Kafka (kafka-python): the distributed mode's transport, same protocols as the in-memory bus.

Producer: ``acks=all`` with idempotence, so a retried send never writes a record twice; :meth:`KafkaBus.flush`
raises :class:`~auditoryhum.bus.BusError` if any record since the last flush was not delivered. Consumer: no
auto-commit; a partition's offset is committed only up to the first record not yet acknowledged, on the next
poll and on close, so a killed consumer's successor re-reads exactly what was not finished.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable, Mapping, Sequence

from google.protobuf.message import Message
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import OffsetSpec
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from auditoryhum.bus import BusError, Record
from auditoryhum.bus.codec import encode

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int, *, timeout_s: float = 30.0) -> list[str]:
    """Create the topics that are missing and wait until every one has a leader (services starting side by side
    race to create them); returns those this call created. Existing topics are left as they are."""
    topics = sorted(set(topics))
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="auditoryhum-admin",
                                 request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise BusError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        created = []
        for topic in sorted(set(topics) - set(admin.list_topics())):
            try:
                admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1,
                                             "configs": {"max.message.bytes": str(MAX_MESSAGE_BYTES)}}})
                created.append(topic)
            except TopicAlreadyExistsError:  # another service won the race
                pass
        admin.wait_for_topics(topics, timeout_ms=int(timeout_s * 1000))
        _wait_for_group_coordinator(admin, timeout_s)
        return created
    except KafkaError as exc:
        raise BusError(f"cannot create topics on {bootstrap}: {exc}") from exc
    finally:
        admin.close()


def _wait_for_group_coordinator(admin: KafkaAdminClient, timeout_s: float) -> None:
    """On a fresh broker the first group request creates ``__consumer_offsets``; consumers that join while it is
    being created get NotCoordinator, and kafka-python 3.0 can stay stuck after that. Looking up a group first
    (and waiting until that works) means the consumers join a ready coordinator."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.describe_groups(["auditoryhum-ready"])
            return
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise BusError(f"no group coordinator after {timeout_s:g} s: {exc}") from exc
            time.sleep(0.5)


class KafkaBus:
    def __init__(self, bootstrap: str, *, client_id: str = "auditoryhum", instance_id: str | None = None,
                 session_timeout_ms: int = 10_000, linger_ms: int = 5, connect_timeout_s: float = 30.0):
        self.bootstrap, self.client_id, self.instance_id = bootstrap, client_id, instance_id
        self.session_timeout_ms = session_timeout_ms
        try:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, acks="all",
                                           bootstrap_timeout_ms=int(connect_timeout_s * 1000),
                                           enable_idempotence=True, linger_ms=linger_ms,
                                           max_request_size=MAX_MESSAGE_BYTES, compression_type=None)
        except KafkaError as exc:
            raise BusError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        self._local = threading.local()  # each thread flushes (and checks) its own sends

    @property
    def _pending(self) -> list:
        if not hasattr(self._local, "pending"):
            self._local.pending = []
        return self._local.pending

    def publish(self, topic: str, key: str, message: Message) -> None:
        value, headers = encode(message)
        try:
            future = self._producer.send(topic, key=key.encode("utf-8"), value=value,
                                         headers=[(k, v.encode("utf-8")) for k, v in headers.items()])
        except KafkaError as exc:
            raise BusError(f"cannot publish to {topic}: {exc}") from exc
        self._pending.append(future)

    def flush(self) -> None:
        pending, self._local.pending = self._pending, []
        try:
            self._producer.flush()
            for future in pending:
                future.get(timeout=0)  # raises the send's error, if it failed
        except KafkaError as exc:
            raise BusError(f"records not delivered: {exc}") from exc

    def subscribe(self, group: str, topics: Sequence[str]) -> "KafkaBusConsumer":
        return KafkaBusConsumer(self, group, topics)

    def close(self) -> None:
        self._producer.close()


class KafkaBusConsumer(ConsumerRebalanceListener):
    def __init__(self, bus: KafkaBus, group: str, topics: Sequence[str]):
        self.bus, self.group, self.topics = bus, group, list(topics)
        self._next: dict[TopicPartition, int] = {}  # first offset not yet acknowledged, per partition
        self._acked: dict[TopicPartition, set[int]] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._consumer = self._connect()

    def _connect(self) -> KafkaConsumer:
        bus = self.bus
        extra = {"group_instance_id": f"{self.group}-{bus.instance_id}"} if bus.instance_id else {}
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=bus.bootstrap, client_id=bus.client_id, group_id=self.group,
                enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=bus.session_timeout_ms, heartbeat_interval_ms=bus.session_timeout_ms // 4,
                fetch_max_bytes=4 * MAX_MESSAGE_BYTES, max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                metadata_max_age_ms=10_000, **extra)  # sees new partitions within seconds, not 5 minutes
        except KafkaError as exc:
            raise BusError(f"cannot reach Kafka at {bus.bootstrap}: {exc}") from exc
        # Partition metadata first: joining without it assigns nothing and forces an immediate second rebalance.
        for topic in self.topics:
            consumer.partitions_for_topic(topic)
        consumer.subscribe(self.topics, listener=self)
        return consumer

    def poll(self, max_records: int = 64, timeout_s: float = 0.0) -> list[Record]:
        self._check_membership()
        self.commit()
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise BusError(f"poll failed: {exc}") from exc
        out = []
        for tp, records in batches.items():
            self._next.setdefault(tp, records[0].offset)
            self._acked.setdefault(tp, set())
            out += [_record(r) for r in records]
        return out

    def _check_membership(self) -> None:
        """Work around kafka-python 3.0.12: right after a quick rejoin its heartbeat loop can stop for good; the
        broker drops the member after the session timeout and the consumer idles forever, believing itself a
        stable member. Such a member, with no heartbeat answered for a whole session, is rebuilt: it commits
        what it finished, reconnects and rejoins (under the same static id, if it has one)."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        heartbeat = getattr(coordinator, "heartbeat", None)
        if heartbeat is None or not coordinator.stable():
            return
        silent_s = time.monotonic() - max(heartbeat.last_receive, heartbeat.last_reset)
        if silent_s > self.bus.session_timeout_ms / 1000:
            log.warning("%s: no heartbeat answered for %.0f s; rejoining the group", self.group, silent_s)
            try:
                self.commit()
            except BusError as exc:  # what was not committed is read again: replays are harmless
                log.warning("%s: %s", self.group, exc)
            self._consumer.close(autocommit=False)
            self._next, self._acked, self._committed = {}, {}, {}
            self._consumer = self._connect()

    def ack(self, record: Record) -> None:
        tp = TopicPartition(record.topic, record.partition)
        if record.offset < self._next.get(tp, record.offset + 1):  # revoked meanwhile: its new owner re-reads it
            return
        acked = self._acked[tp]
        acked.add(record.offset)
        while self._next[tp] in acked:
            acked.discard(self._next[tp])
            self._next[tp] += 1

    def nack(self, record: Record) -> None:
        tp = TopicPartition(record.topic, record.partition)
        if tp not in self._next:
            return
        self._acked[tp] = {o for o in self._acked[tp] if o < record.offset}
        self._next[tp] = min(self._next[tp], record.offset)
        self._consumer.seek(tp, self._next[tp])

    def commit(self) -> None:
        offsets = {tp: OffsetAndMetadata(n, "", -1) for tp, n in self._next.items() if self._committed.get(tp) != n}
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
            self._committed.update({tp: o.offset for tp, o in offsets.items()})
        except CommitFailedError as exc:  # a rebalance took the partitions: their new owner replays, harmlessly
            log.warning("%s: commit refused after a rebalance: %s", self.group, exc)
        except KafkaError as exc:
            raise BusError(f"commit failed: {exc}") from exc

    def lag(self) -> int:
        """Records on this consumer's partitions not yet committed by its group."""
        assigned = self._consumer.assignment()
        if not assigned:
            return 0
        ends = self._consumer.end_offsets(list(assigned))
        return sum(max(0, ends[tp] - (self._consumer.committed(tp) or 0)) for tp in assigned)

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._consumer.close(autocommit=False)

    # ConsumerRebalanceListener. It runs on kafka-python's IO thread, where a blocking commit is refused; the
    # finished offsets were committed at the last poll, and anything after them is re-read by the new owner.
    def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self._next.pop(tp, None), self._acked.pop(tp, None), self._committed.pop(tp, None)

    def on_partitions_assigned(self, assigned) -> None:
        pass


def read_topics(bootstrap: str, topics: Sequence[str], *, timeout_s: float = 60.0) -> Iterable[Record]:
    """Every record now on ``topics``, from the beginning to the end offsets seen at the start, outside any
    consumer group (reading commits nothing and disturbs no service)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="auditoryhum-reader", enable_auto_commit=False,
                             group_id=None, fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
                             max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise BusError(f"reading {', '.join(topics)} took longer than {timeout_s:g} s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    if r.offset < ends[tp]:
                        yield _record(r)
    finally:
        consumer.close(autocommit=False)


def group_lag(bootstrap: str, groups: Mapping[str, Sequence[str]], *, timeout_s: float = 10.0) -> dict[str, int]:
    """Each consumer group's lag over its topics (group → topics): records after its committed offsets, or after
    the log start on a partition it never committed (where its consumers would start reading). Read from the
    admin API, without joining any group."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="auditoryhum-status",
                                 request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise BusError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        described = admin.describe_topics(sorted({t for ts in groups.values() for t in ts}))
        partitions = {t["name"]: [TopicPartition(t["name"], p["partition_index"]) for p in t["partitions"]]
                      for t in described}  # a topic not created yet has none, and so no lag
        every = [tp for tps in partitions.values() for tp in tps]
        ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in every})
        starts = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in every})
        committed = admin.list_group_offsets({group: None for group in groups})
    except KafkaError as exc:
        raise BusError(f"cannot read consumer lag from {bootstrap}: {exc}") from exc
    finally:
        admin.close()
    lag = {}
    for group, group_topics in groups.items():
        offsets = committed.get(group) or {}
        lag[group] = sum(max(0, ends[tp].offset - (offsets[tp].offset if tp in offsets and offsets[tp].offset >= 0
                                                   else starts[tp].offset))
                         for topic in group_topics for tp in partitions.get(topic, ()))
    return lag


def _record(r) -> Record:
    return Record(r.topic, r.partition, r.offset, (r.key or b"").decode("utf-8", "replace"), r.value or b"",
                  {k: (v or b"").decode("utf-8", "replace") for k, v in r.headers or ()})
