"""The Kafka bus against a real broker: the same delivery contract as the in-memory bus."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewPartitions

from auditoryhum.bus import BusError
from auditoryhum.bus.codec import TYPE_HEADER, VERSION_HEADER
from auditoryhum.bus.kafka import KafkaBus, ensure_topics, read_topics
from auditoryhum.v1 import pipeline_pb2 as pb

pytestmark = pytest.mark.distributed


@pytest.fixture
def topic(kafka) -> str:
    name = f"test.{uuid.uuid4().hex[:8]}.v1"
    assert ensure_topics(kafka.bootstrap, [name], partitions=2) == [name]
    assert ensure_topics(kafka.bootstrap, [name], partitions=2) == []  # idempotent
    return name


def drain(consumer, want: int, polls: int = 40) -> list:
    records = []
    for _ in range(polls):
        records += consumer.poll(100, timeout_s=0.25)
        if len(records) >= want:
            break
    return records


def test_records_keep_key_order_headers_and_type(kafka, topic):
    bus = KafkaBus(kafka.bootstrap)
    for i in range(20):
        bus.publish(topic, f"clip-{i % 3}", pb.Clip(clip_id=f"clip-{i % 3}", uri=f"{i}"))
    bus.flush()
    consumer = bus.subscribe("order", [topic])
    records = drain(consumer, 20)
    assert len(records) == 20
    assert all(r.headers == {TYPE_HEADER: "auditoryhum.v1.Clip", VERSION_HEADER: "v1"} for r in records)
    for key in ("clip-0", "clip-1", "clip-2"):
        uris = [int(r.message().uri) for r in records if r.key == key]
        assert uris == sorted(uris)
        assert len({r.partition for r in records if r.key == key}) == 1  # one key, one partition, in order
    consumer.close()
    bus.close()


def test_commits_stop_at_the_first_unacknowledged_record(kafka, topic):
    bus = KafkaBus(kafka.bootstrap)
    for i in range(6):
        bus.publish(topic, "same-key", pb.Clip(clip_id=str(i)))  # one partition: offsets 0..5
    bus.flush()
    first = bus.subscribe("commits", [topic])
    records = drain(first, 6)
    assert [r.message().clip_id for r in records] == ["0", "1", "2", "3", "4", "5"]
    for r in records[:2] + records[3:]:  # "2" is still being worked on when the consumer dies
        first.ack(r)
    first.close()  # commits up to the first record not acknowledged

    second = bus.subscribe("commits", [topic])
    again = drain(second, 4)
    assert [r.message().clip_id for r in again] == ["2", "3", "4", "5"]  # re-read from "2": nothing lost
    second.nack(again[0])  # given back: delivered again, with what follows it
    assert [r.message().clip_id for r in drain(second, 4)] == ["2", "3", "4", "5"]
    second.close()
    bus.close()


def test_read_topics_sees_everything_without_joining_a_group(kafka, topic):
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    producer.send(topic, key=b"k", value=b"\x01\x02", headers=[("message-type", b"auditoryhum.v1.Clip")])
    producer.flush()
    producer.close()
    [record] = list(read_topics(kafka.bootstrap, [topic]))
    assert record.key == "k" and record.value == b"\x01\x02"


def test_an_unreachable_broker_is_a_clear_error():
    with pytest.raises(BusError, match="127.0.0.1:1"):
        KafkaBus("127.0.0.1:1", connect_timeout_s=2)


def test_a_member_whose_heartbeats_stopped_rejoins_and_goes_on(kafka, topic):
    """kafka-python 3.0.12 can stop heartbeating after a quick rejoin; the broker drops the member. The consumer
    notices the silence, rejoins, and delivers again everything its group had not committed."""
    stalls = []
    bus = KafkaBus(kafka.bootstrap, session_timeout_ms=6_000, instance_id="watchdog",
                   on_stall=lambda group, kind: stalls.append((group, kind)))
    for i in range(4):
        bus.publish(topic, "k", pb.Clip(clip_id=str(i)))
    bus.flush()
    consumer = bus.subscribe("watchdog", [topic])
    first = drain(consumer, 4)
    consumer.ack(first[0])
    consumer._consumer._coordinator._disable_heartbeat()  # the library's failure, reproduced
    stuck = consumer._consumer
    time.sleep(8)  # past the session timeout: the broker has dropped the member
    again = drain(consumer, 4)
    assert consumer._consumer is not stuck
    assert stalls == [("watchdog", "heartbeat")]
    # "0" was acknowledged, but a dropped member may not commit: at least once, it comes again.
    assert [r.message().clip_id for r in again] == ["0", "1", "2", "3"]
    consumer.close()
    bus.close()


def test_a_rebalance_that_outlasts_its_poll_still_completes(kafka, topic):
    """The root cause of consumers that never consumed (issue 12), reproduced: partitions added under a member ask
    for a rebalance through a metadata change, and polls of 1 ms end before its JoinGroup/SyncGroup round trip.
    kafka-python 3.0.12 alone then leaves the member REBALANCING for ever (3 runs out of 3 before the fix); with
    ``_keep_join_alive`` it takes the new partitions and consumes. The stall watch is off: the fix alone does it."""
    bus = KafkaBus(kafka.bootstrap, stall_after_s=3600)
    publish(bus, topic, [0])
    consumer = bus.subscribe("outlasted", [topic])
    [first] = drain(consumer, 1)
    consumer.ack(first)
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    admin.create_partitions({topic: NewPartitions(total_count=4)})
    admin.close()
    producer = KafkaBus(kafka.bootstrap)  # a new producer, which knows the new partitions
    for i in range(1, 41):
        producer.publish(topic, f"key-{i}", pb.Clip(clip_id=str(i)))
    producer.flush()
    got, deadline = [], time.monotonic() + 40  # the member sees the partitions within its metadata age (10 s)
    while len(got) < 40 and time.monotonic() < deadline:
        for record in consumer.poll(64, timeout_s=0.001):
            consumer.ack(record)
            got.append(record)
    assert {r.partition for r in got} == {0, 1, 2, 3}
    assert sorted(int(r.message().clip_id) for r in got) == list(range(1, 41))
    consumer.close()
    producer.close()
    bus.close()


def publish(bus: KafkaBus, topic: str, ids) -> None:
    for i in ids:
        bus.publish(topic, "k", pb.Clip(clip_id=str(i)))
    bus.flush()


def watched_bus(kafka, stalls: list) -> KafkaBus:
    """A bus whose consumers call themselves stuck after 2 s of polls that deliver nothing."""
    return KafkaBus(kafka.bootstrap, session_timeout_ms=6_000, stall_after_s=2.0,
                    on_stall=lambda group, kind: stalls.append((group, kind)))


def test_a_member_holding_partitions_it_never_fetches_is_rebuilt(kafka, topic, caplog):
    """The stall the issue met: a member holds its partitions, records wait on them and none is ever delivered
    (here the library is told to stop fetching them). The watch sees the waiting records, logs and reports it,
    and the rebuilt consumer delivers them."""
    stalls = []
    bus = watched_bus(kafka, stalls)
    publish(bus, topic, [0])
    consumer = bus.subscribe("never-fetches", [topic])
    [first] = drain(consumer, 1)
    consumer.ack(first)
    stuck = consumer._consumer
    stuck.pause(*stuck.assignment())  # holds its partitions, fetches nothing
    publish(bus, topic, [1, 2, 3])
    with caplog.at_level("WARNING", logger="auditoryhum.bus.kafka"):
        records = drain(consumer, 3, polls=60)
    assert [r.message().clip_id for r in records] == ["1", "2", "3"]  # "0" was committed: not read again
    assert consumer._consumer is not stuck
    assert stalls == [("never-fetches", "idle")]
    [warning] = [r for r in caplog.records if "rebuilding the consumer" in r.getMessage()]
    assert "with 3 records waiting" in warning.getMessage() and warning.stall == "idle"
    consumer.close()
    bus.close()


def test_a_member_that_never_joins_its_group_is_rebuilt(kafka, topic):
    """A member whose join never happens (the library believes no join is needed) is rebuilt after three
    windows, joins, and consumes."""
    stalls = []
    bus = watched_bus(kafka, stalls)
    publish(bus, topic, [0, 1])
    consumer = bus.subscribe("never-joins", [topic])
    stuck = consumer._consumer
    stuck._coordinator.need_rejoin = lambda: False  # wedged before its first join: it never sends one
    records = drain(consumer, 2, polls=60)
    assert [r.message().clip_id for r in records] == ["0", "1"]
    assert consumer._consumer is not stuck and stalls == [("never-joins", "unjoined")]
    consumer.close()
    bus.close()


def test_idle_or_busy_members_are_left_alone(kafka, topic):
    """No false alarms: a member with nothing to read, or one whose stage spends longer than the window on a
    batch, is never rebuilt."""
    stalls = []
    bus = watched_bus(kafka, stalls)
    publish(bus, topic, [0])
    consumer = bus.subscribe("healthy", [topic])
    [first] = drain(consumer, 1)
    consumer.ack(first)
    member = consumer._consumer
    deadline = time.monotonic() + 5  # two and a half windows of empty polls, caught up
    while time.monotonic() < deadline:
        assert consumer.poll(10, timeout_s=0.25) == []
    publish(bus, topic, [1])
    [second] = drain(consumer, 1)
    publish(bus, topic, [2])  # arrives while the stage works on a batch for longer than the window
    time.sleep(3)
    consumer.ack(second)
    assert [r.message().clip_id for r in drain(consumer, 1)] == ["2"]
    assert consumer._consumer is member and stalls == []
    consumer.close()
    bus.close()
