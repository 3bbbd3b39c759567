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
from typing import Callable, Iterable, Mapping, Sequence

from google.protobuf.message import Message
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import OffsetSpec
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from auditoryhum.bus import BusError, Record, routing
from auditoryhum.bus.codec import encode

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Every blocking call into kafka-python is bounded by this: without a timeout some of them wait forever.
REQUEST_TIMEOUT_MS = 15_000
# kafka-python 3.0 backs off reconnecting to a broker exponentially up to 30 s (the Java client: 1 s). After a
# broker outage a client then waits up to 30 s more before it tries again; meanwhile its fetcher skips that broker
# ("awaiting reconnect backoff"), so a consumer that has rejoined its group holds partitions and delivers nothing.
RECONNECT = {"reconnect_backoff_ms": 50, "reconnect_backoff_max_ms": 1_000}
# Ingest publishes clips in transactions (auditoryhum.bus.ledger): a consumer must not see those of a transaction
# that was aborted (a killed ingest's last batch, published again by the re-run).
ISOLATION = "read_committed"


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int, *, replication_factor: int | None = None,
                  timeout_s: float = 30.0, configs: Mapping[str, str] | None = None) -> list[str]:
    """Create the topics that are missing and wait until every one has a leader (services starting side by side
    race to create them); returns those this call created. Existing topics are left as they are.
    ``replication_factor``: replicas of each partition; None takes the brokers' ``default.replication.factor``
    (their ``min.insync.replicas`` applies either way). ``configs``: more topic configs of those it creates."""
    topics = sorted(set(topics))
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="auditoryhum-admin",
                                 request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000),
                                 **RECONNECT)
    except KafkaError as exc:
        raise BusError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        created = []
        for topic in sorted(set(topics) - set(admin.list_topics())):
            try:
                admin.create_topics({topic: {"num_partitions": partitions,
                                             "replication_factor": replication_factor or -1,  # -1: the brokers'
                                             "configs": {"max.message.bytes": str(MAX_MESSAGE_BYTES),
                                                         **(configs or {})}}})
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
    """``stall_after_s`` (default: the session timeout): how long a consumer may go without delivering a record
    before it checks whether it is stuck (see :meth:`KafkaBusConsumer.poll`); ``on_stall(group, kind)`` is told
    of each stuck consumer it rebuilds (the services count them in a metric)."""

    def __init__(self, bootstrap: str, *, client_id: str = "auditoryhum", instance_id: str | None = None,
                 session_timeout_ms: int = 10_000, linger_ms: int = 5, connect_timeout_s: float = 30.0,
                 stall_after_s: float | None = None, on_stall: Callable[[str, str], None] | None = None):
        self.bootstrap, self.client_id, self.instance_id = bootstrap, client_id, instance_id
        self.session_timeout_ms = session_timeout_ms
        self.stall_after_s = session_timeout_ms / 1000 if stall_after_s is None else stall_after_s
        self.on_stall = on_stall or (lambda group, kind: None)
        try:
            self._producer = KafkaProducer(bootstrap_servers=bootstrap, client_id=client_id, acks="all",
                                           bootstrap_timeout_ms=int(connect_timeout_s * 1000),
                                           enable_idempotence=True, linger_ms=linger_ms,
                                           max_request_size=MAX_MESSAGE_BYTES, compression_type=None, **RECONNECT)
        except KafkaError as exc:
            raise BusError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        self._local = threading.local()  # each thread flushes (and checks) its own sends

    @property
    def _pending(self) -> list:
        if not hasattr(self._local, "pending"):
            self._local.pending = []
        return self._local.pending

    def publish(self, topic: str, key: str, message: Message) -> None:
        self.publish_raw(topic, key, *encode(message), route=routing(topic, key, message))

    def publish_raw(self, topic: str, key: str, value: bytes, headers: dict[str, str],
                    route: str | None = None) -> None:
        route = routing(topic, key, value=value, headers=headers) if route is None else route
        try:
            # A routed record goes where a key equal to its route would (Kafka's own hash), keeping its key.
            partition = None if route == key else _partition(route, self._producer.partitions_for(topic))
            future = self._producer.send(topic, key=key.encode("utf-8"), value=value, partition=partition,
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

    def tail(self, topic: str, last: int) -> list[Record]:
        try:
            return list(read_topics(self.bootstrap, [topic], last=last))
        except KafkaError as exc:
            raise BusError(f"cannot read {topic}: {exc}") from exc

    def subscribe(self, group: str, topics: Sequence[str]) -> "KafkaBusConsumer":
        return KafkaBusConsumer(self, group, topics)

    def close(self) -> None:
        self._producer.close()


class KafkaBusConsumer(ConsumerRebalanceListener):
    """A group member that watches its own progress. kafka-python 3.0 can leave a consumer that believes all is
    well yet never delivers a record (see :meth:`_stall`): once its polls have delivered nothing for
    ``bus.stall_after_s`` while records wait (found at two checks in a row), it is rebuilt. Every call into
    kafka-python that can block carries a timeout, so a stuck coordinator never hangs the service's loop, where the
    watch runs."""

    def __init__(self, bus: KafkaBus, group: str, topics: Sequence[str]):
        self.bus, self.group, self.topics = bus, group, list(topics)
        self._consumer: KafkaConsumer | None = None  # None after a rebuild until it reconnects
        self._connect()

    def _connect(self) -> None:
        bus = self.bus
        extra = {"group_instance_id": f"{self.group}-{bus.instance_id}"} if bus.instance_id else {}
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=bus.bootstrap, client_id=bus.client_id, group_id=self.group,
                enable_auto_commit=False, auto_offset_reset="earliest", isolation_level=ISOLATION,
                session_timeout_ms=bus.session_timeout_ms, heartbeat_interval_ms=bus.session_timeout_ms // 4,
                fetch_max_bytes=4 * MAX_MESSAGE_BYTES, max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                metadata_max_age_ms=10_000,  # sees new partitions within seconds, not 5 minutes
                **RECONNECT, **extra)
            # Partition metadata first, so the first assignment usually covers every partition (on a fresh broker a
            # second rebalance can follow at once: see _keep_join_alive).
            for topic in self.topics:
                consumer.partitions_for_topic(topic)
        except KafkaError as exc:
            raise BusError(f"cannot reach Kafka at {bus.bootstrap}: {exc}") from exc
        consumer.subscribe(self.topics, listener=self)
        self._consumer = consumer
        self._next: dict[TopicPartition, int] = {}  # first offset not yet acknowledged, per partition
        self._acked: dict[TopicPartition, set[int]] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._delivered: dict[TopicPartition, int] = {}  # offset after the last record delivered, per partition
        self._empty_since: float | None = None  # polls have delivered nothing since then
        self._checked_at = 0.0
        self._found_waiting = False  # the last check found records waiting, and none came since

    def poll(self, max_records: int = 64, timeout_s: float = 0.0) -> list[Record]:
        if self._consumer is not None:
            self._watch()  # may close a stuck consumer...
        if self._consumer is None:
            self._connect()  # ...rebuilt here; BusError while the broker is away: the caller waits, polls again
        self.commit()
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise BusError(f"poll failed: {exc}") from exc
        self._keep_join_alive()
        out = []
        for tp, records in batches.items():
            self._next.setdefault(tp, records[0].offset)
            self._acked.setdefault(tp, set())
            self._delivered[tp] = records[-1].offset + 1
            out += [_record(r) for r in records]
        # Only time spent polling in vain counts towards a stall, never the time the stage spends on a batch.
        self._empty_since = None if out else self._empty_since or time.monotonic()
        if out:
            self._found_waiting = False
        return out

    def _keep_join_alive(self) -> None:
        """The root cause of consumers that never consume (kafka-python 3.0.12): a join runs as a task that only
        the poll which started it completes (assignment applied, member STABLE, heartbeats on). When that poll's
        timeout ends first, the next poll awaits the task again only if the coordinator still wants a rejoin;
        but a rejoin asked for by a metadata change (a fresh broker's new topics, added partitions) does not set
        that flag, and the leader's assignment step clears the other trigger. The member then stays REBALANCING
        for ever: no assignment, no heartbeats, no fetches, no error. Asking for the rejoin again makes the next
        poll await the join in flight (or start a new one if it already ended)."""
        coordinator = self._consumer._coordinator
        if coordinator.rebalance_in_progress() and not coordinator.need_rejoin():
            coordinator.request_rejoin()

    def _watch(self) -> None:
        """Rebuild a stuck consumer: logged and reported, it commits what it finished and closes; the next poll
        reconnects and rejoins. What it had not committed is read again: replays are harmless."""
        now = time.monotonic()
        stall = self._heartbeats_stopped(now)
        idle_s, window = now - (self._empty_since or now), self.bus.stall_after_s
        if stall is None and idle_s >= window and now - self._checked_at >= window / 2:
            self._checked_at = now
            stall = self._stall(idle_s)
        if stall is None:
            return
        kind, why = stall
        log.warning("%s: %s; rebuilding the consumer and rejoining the group", self.group, why,
                    extra={"group": self.group, "stall": kind})
        self.bus.on_stall(self.group, kind)
        try:
            self.commit()
        except BusError as exc:
            log.warning("%s: %s", self.group, exc)
        self._consumer.close(autocommit=False, timeout_ms=REQUEST_TIMEOUT_MS)
        self._consumer = None

    def _heartbeats_stopped(self, now: float) -> tuple[str, str] | None:
        """kafka-python 3.0.12: right after a quick rejoin its heartbeat loop can stop for good; the broker drops
        the member after the session timeout while it goes on believing itself a stable member, and its commits
        are refused. Checked on every poll: it costs two clock readings."""
        coordinator = self._consumer._coordinator
        if not coordinator.stable():
            return None
        silent_s = now - max(coordinator.heartbeat.last_receive, coordinator.heartbeat.last_reset)
        if silent_s > self.bus.session_timeout_ms / 1000:
            return "heartbeat", f"no heartbeat answered for {silent_s:.0f} s"
        return None

    def _stall(self, idle_s: float) -> tuple[str, str] | None:
        """Why a consumer that delivered nothing for ``idle_s`` is stuck (kind, words), or None if it is merely
        idle: it never completes a join, or it holds partitions whose waiting records it never delivers.

        Records count as never delivered once two checks in a row (half a window apart) find them waiting: a
        consumer may have just become able to fetch them. When a broker is lost, its partitions get new leaders only
        once the controller fences it (``broker.session.timeout.ms``, 9 s) and the consumer refreshes its metadata,
        about one window; their records wait that long, then come."""
        found_before, self._found_waiting = self._found_waiting, False
        if not self._consumer._coordinator.stable():
            # A join may legitimately wait for a group's slow members (up to their poll interval): three windows.
            if idle_s > 3 * self.bus.stall_after_s:
                return "unjoined", f"not a member of its group after {idle_s:.0f} s"
            return None
        try:
            waiting = self.lag(consumed=True)
        except BusError:  # the broker is away: an outage, which the service reports and waits out
            return None
        if waiting and found_before:
            return "idle", (f"holds {len(self._consumer.assignment())} partitions with {waiting} records waiting, "
                            f"none delivered for {idle_s:.0f} s")
        self._found_waiting = bool(waiting)
        if not waiting:
            self._empty_since = time.monotonic()  # merely idle: a new window starts
        return None

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
        if tp not in self._next or self._consumer is None:  # rebuilt meanwhile: it re-reads from the commit
            return
        self._acked[tp] = {o for o in self._acked[tp] if o < record.offset}
        self._next[tp] = self._delivered[tp] = min(self._next[tp], record.offset)
        self._consumer.seek(tp, self._next[tp])

    def commit(self) -> None:
        offsets = {tp: OffsetAndMetadata(n, "", -1) for tp, n in self._next.items() if self._committed.get(tp) != n}
        if not offsets or self._consumer is None:
            return
        try:
            self._consumer.commit(offsets, timeout_ms=REQUEST_TIMEOUT_MS)
            self._committed.update({tp: o.offset for tp, o in offsets.items()})
        except CommitFailedError as exc:  # a rebalance took the partitions: their new owner replays, harmlessly
            log.warning("%s: commit refused after a rebalance: %s", self.group, exc)
        except KafkaError as exc:
            raise BusError(f"commit failed: {exc}") from exc

    def lag(self, *, consumed: bool = False) -> int:
        """Records on this consumer's partitions not yet committed by its group (``consumed``: not yet delivered
        to this consumer either). Bounded in time: raises BusError when the broker does not answer."""
        assigned = list(self._consumer.assignment()) if self._consumer is not None else []
        if not assigned:
            return 0
        try:
            ends = _offsets(self._consumer, assigned, end=True, timeout_ms=REQUEST_TIMEOUT_MS)
            starts = _offsets(self._consumer, assigned, end=False, timeout_ms=REQUEST_TIMEOUT_MS)
            committed = {tp: self._consumer.committed(tp, timeout_ms=REQUEST_TIMEOUT_MS) for tp in assigned}
        except KafkaError as exc:
            raise BusError(f"offsets of {len(assigned)} partitions unavailable: {exc}") from exc
        total = 0
        for tp in assigned:
            position = starts[tp] if committed[tp] is None else committed[tp]
            if consumed:
                position = max(position, self._delivered.get(tp, 0))
            total += max(0, ends[tp] - position)
        return total

    def close(self) -> None:
        if self._consumer is None:
            return
        try:
            self.commit()
        finally:
            self._consumer.close(autocommit=False, timeout_ms=REQUEST_TIMEOUT_MS)

    # ConsumerRebalanceListener. It runs on kafka-python's IO thread, where a blocking commit is refused; the
    # finished offsets were committed at the last poll, and anything after them is re-read by the new owner.
    def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            for offsets in (self._next, self._acked, self._committed, self._delivered):
                offsets.pop(tp, None)

    def on_partitions_assigned(self, assigned) -> None:
        pass


def read_topics(bootstrap: str, topics: Sequence[str], *, timeout_s: float = 60.0,
                last: int | None = None) -> Iterable[Record]:
    """Every record now on ``topics``, from the beginning (or the ``last`` newest of each partition) to the end
    offsets seen at the start, outside any consumer group (reading commits nothing and disturbs no service)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="auditoryhum-reader", enable_auto_commit=False,
                             group_id=None, isolation_level=ISOLATION, fetch_max_bytes=4 * MAX_MESSAGE_BYTES,
                             max_partition_fetch_bytes=MAX_MESSAGE_BYTES, **RECONNECT)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = _offsets(consumer, partitions, end=True)
        if last is not None:
            starts = _offsets(consumer, partitions, end=False)
            for tp in partitions:
                consumer.seek(tp, max(starts[tp], ends[tp] - last))
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


def _offsets(consumer: KafkaConsumer, partitions: list[TopicPartition], *, end: bool,
             timeout_ms: int | None = None) -> dict[TopicPartition, int]:
    """The end (or beginning) offset of each partition. A partition without a leader (every replica of it lost)
    is an outage, a BusError: kafka-python 3.0.12 leaves it out of its answer and then fails with KeyError."""
    try:
        return (consumer.end_offsets if end else consumer.beginning_offsets)(partitions, timeout_ms=timeout_ms)
    except KeyError as exc:
        raise BusError(f"offsets unavailable: partition {exc} has no leader") from exc


def group_lag(bootstrap: str, groups: Mapping[str, Sequence[str]], *, timeout_s: float = 10.0) -> dict[str, int]:
    """Each consumer group's lag over its topics (group → topics): records after its committed offsets, or after
    the log start on a partition it never committed (where its consumers would start reading). Read from the
    admin API, without joining any group."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="auditoryhum-status",
                                 request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000),
                                 **RECONNECT)
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


def _partition(route: str, partitions) -> int:
    """The partition Kafka's default partitioner gives a record keyed ``route``."""
    return sorted(partitions)[(murmur2(route.encode("utf-8")) & 0x7FFFFFFF) % len(partitions)]


def _record(r) -> Record:
    return Record(r.topic, r.partition, r.offset, (r.key or b"").decode("utf-8", "replace"), r.value or b"",
                  {k: (v or b"").decode("utf-8", "replace") for k, v in r.headers or ()}, r.timestamp)
