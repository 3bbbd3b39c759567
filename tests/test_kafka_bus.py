"""The Kafka bus against a real broker: the same delivery contract as the in-memory bus."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaProducer

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
    bus = KafkaBus(kafka.bootstrap, session_timeout_ms=6_000, instance_id="watchdog")
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
    # "0" was acknowledged, but a dropped member may not commit: at least once, it comes again.
    assert [r.message().clip_id for r in again] == ["0", "1", "2", "3"]
    consumer.close()
    bus.close()
