"""The in-memory bus keeps Kafka's contract: per-key order, explicit acks, redelivery of what was not acked."""

from auditoryhum.bus.codec import CodecError, decode, encode
from auditoryhum.bus.memory import InMemoryBus
from auditoryhum.v1 import pipeline_pb2 as pb

import pytest


def clip(key: str, n: int) -> pb.Clip:
    return pb.Clip(clip_id=key, uri=f"{key}/{n}")


def test_per_key_order_is_kept_across_partitions():
    bus = InMemoryBus(partitions=3)
    keys = [f"k{i}" for i in range(7)]
    for n in range(20):
        for key in keys:
            bus.publish("t", key, clip(key, n))
    consumer = bus.subscribe("g", ["t"])
    seen: dict[str, list[int]] = {}
    while records := consumer.poll(max_records=9):
        for r in records:
            m = r.message()
            seen.setdefault(m.clip_id, []).append(int(m.uri.split("/")[1]))
            consumer.ack(r)
    assert seen == {key: list(range(20)) for key in keys}


def test_unacked_records_are_redelivered_to_the_next_member():
    bus = InMemoryBus(partitions=1)
    for n in range(5):
        bus.publish("t", "a", clip("a", n))
    first = bus.subscribe("g", ["t"])
    records = first.poll()
    first.ack(records[0])
    first.ack(records[2])  # not contiguous: the committed offset stops at 1
    first.close()
    again = bus.subscribe("g", ["t"]).poll()
    assert [r.message().uri for r in again] == ["a/1", "a/2", "a/3", "a/4"]
    assert bus.lag("g") == 4


def test_nack_rewinds_and_groups_are_independent():
    bus = InMemoryBus(partitions=1)
    for n in range(3):
        bus.publish("t", "a", clip("a", n))
    c = bus.subscribe("g", ["t"])
    other = bus.subscribe("h", ["t"])
    r0, r1, r2 = c.poll()
    c.ack(r0)
    c.nack(r1)
    assert [r.offset for r in c.poll()] == [1, 2]
    assert len(other.poll()) == 3


def test_acknowledged_records_are_released():
    bus = InMemoryBus(partitions=2)
    c = bus.subscribe("g", ["t"])
    for n in range(100):
        bus.publish("t", f"k{n}", clip(f"k{n}", n))
        for r in c.poll():
            c.ack(r)
    assert bus.retained() == 0 and bus.lag("g") == 0


def test_codec_names_the_type_and_rejects_garbage():
    value, headers = encode(pb.Clip(clip_id="x"))
    assert headers == {"message-type": "auditoryhum.v1.Clip", "schema-version": "v1"}
    assert decode(value, headers).clip_id == "x"
    with pytest.raises(CodecError, match="unknown message type"):
        decode(value, {"message-type": "evil.Type"})
    with pytest.raises(CodecError, match="malformed"):
        decode(b"\xff\xff\xff", headers)
    with pytest.raises(CodecError, match="schema version"):
        decode(value, {**headers, "schema-version": "v9"})
