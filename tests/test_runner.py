"""The consumer loop never drops a record: bad records and failing handlers become dead letters."""

from auditoryhum import topics
from auditoryhum.bus import BusError
from auditoryhum.bus.memory import InMemoryBus
from auditoryhum.runner import StageWorker, drain
from auditoryhum.errors import TransientError
from auditoryhum.stages.base import Out, Stage
from auditoryhum.v1 import pipeline_pb2 as pb


class Echo(Stage):
    name = "echo"
    consumes = (topics.CLIPS,)

    def __init__(self, transient_failures: int = 0):
        self.transient_failures = transient_failures

    def handle(self, clip):
        if clip.uri == "boom":
            raise RuntimeError("handler bug")
        if self.transient_failures:
            self.transient_failures -= 1
            raise TransientError("model server busy")
        return [Out(topics.LABELS, clip.clip_id, pb.LabelProposal(clip=clip, labels=["ok"]))]


def collect(bus, topic):
    consumer = bus.subscribe(f"test-{topic}", [topic])
    return [r.message() for r in consumer.poll(1000)]


def test_a_failing_record_is_dead_lettered_and_the_batch_goes_on():
    bus = InMemoryBus()
    worker = StageWorker(bus, Echo(), batch_size=10)
    for uri in ["a", "boom", "b"]:
        bus.publish(topics.CLIPS, uri, pb.Clip(clip_id=uri, uri=uri))
    bus.publish(topics.CLIPS, "junk", pb.Clip(clip_id="junk"))
    # a malformed record straight on the topic, as a foreign producer might write it
    part = bus._topics[topics.CLIPS][0]
    from auditoryhum.bus import Record
    part.records.append(Record(topics.CLIPS, 0, part.end, "x", b"\x0a\xff", {"message-type": "auditoryhum.v1.Clip"}))
    assert drain([worker]) == 5
    assert sorted(m.clip.clip_id for m in collect(bus, topics.LABELS)) == ["a", "b", "junk"]
    letters = collect(bus, topics.DLQ)
    reasons = sorted(l.reason for l in letters)
    assert reasons[0].startswith("RuntimeError: handler bug") and reasons[1].startswith("malformed auditoryhum.v1.Clip")
    boom = next(l for l in letters if l.clip_id == "boom")
    assert pb.Clip.FromString(boom.payload).uri == "boom" and boom.stage == "echo"
    assert bus.lag(worker.consumer_group) == 0


def test_transient_errors_are_retried_not_dead_lettered():
    bus = InMemoryBus()
    worker = StageWorker(bus, Echo(transient_failures=2), backoff_s=0.001)
    bus.publish(topics.CLIPS, "a", pb.Clip(clip_id="a", uri="a"))
    drain([worker])
    assert [m.clip.clip_id for m in collect(bus, topics.LABELS)] == ["a"]
    assert collect(bus, topics.DLQ) == []


def test_a_back_end_down_beyond_the_retries_gives_the_records_back():
    bus = InMemoryBus()
    worker = StageWorker(bus, Echo(transient_failures=4), max_retries=2, backoff_s=0.001)
    bus.publish(topics.CLIPS, "a", pb.Clip(clip_id="a", uri="a"))
    assert worker.step() == 0  # 3 attempts failed: not consumed, not dead-lettered
    assert bus.lag(worker.consumer_group) == 1
    drain([worker])  # the back-end is back
    assert [m.clip.clip_id for m in collect(bus, topics.LABELS)] == ["a"]
    assert collect(bus, topics.DLQ) == []
