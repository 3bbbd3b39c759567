"""Resumable ingest on Kafka: what an ingest process publishes and how far it got, committed together.

Each ingest shard (and the announcement of a dataset) owns a transactional producer whose ``transactional.id``
names it (``auditoryhum-ingest/<dataset>/<shard>-of-<count>``). Its records go out in transactions of a batch of
clips plus one progress record (a JSON object keyed by the same name) on the compacted topic
:data:`auditoryhum.topics.INGEST_PROGRESS`. A re-run, a restarted pod or a second copy of the same shard opens
its producer with the same id: Kafka then fences the old one and aborts its open transaction, so the clips of an
unfinished batch are never seen by consumers (they read ``read_committed``), and the progress read afterwards
names exactly the clips that were committed. Nothing is published twice and nothing is lost, with no window.
"""

from __future__ import annotations

import json
import time
from contextlib import closing

from google.protobuf.message import Message
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from auditoryhum import topics
from auditoryhum.bus import BusError
from auditoryhum.bus.codec import encode
from auditoryhum.bus.kafka import ISOLATION, MAX_MESSAGE_BYTES, RECONNECT, ensure_topics

# An open transaction of a producer that died holds back read_committed readers (the progress readers of the other
# shards included) until the broker aborts it: this long at most.
TRANSACTION_TIMEOUT_MS = 30_000
COMPACTED = {"cleanup.policy": "compact"}


def ensure_progress_topic(bootstrap: str) -> None:
    ensure_topics(bootstrap, [topics.INGEST_PROGRESS], 1, configs=COMPACTED)


class Ledger:
    """One transactional producer: :meth:`send` adds to the open transaction, :meth:`commit` ends it together
    with a progress record. Opening one fences every earlier producer of the same ``name``."""

    def __init__(self, bootstrap: str, name: str):
        self.bootstrap, self.name = bootstrap, name
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap, client_id="auditoryhum-ingest",
                transactional_id=f"auditoryhum-ingest/{name}",
                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS, acks="all", enable_idempotence=True, linger_ms=20,
                batch_size=256 * 1024, max_request_size=MAX_MESSAGE_BYTES, **RECONNECT)
            self._producer.init_transactions()  # fences the old producer, aborts its open transaction
        except KafkaError as exc:
            raise BusError(f"cannot open the ingest transaction {name} on {bootstrap}: {exc}") from exc
        self._open = False

    def progress(self) -> dict | None:
        """The last committed progress record of this name, or None."""
        return read_progress(self.bootstrap, self.name)

    def send(self, topic: str, key: str, message: Message) -> None:
        value, headers = encode(message)
        try:
            if not self._open:
                self._producer.begin_transaction()
                self._open = True
            self._producer.send(topic, key=key.encode("utf-8"), value=value,
                                headers=[(k, v.encode("utf-8")) for k, v in headers.items()])
        except KafkaError as exc:
            raise BusError(f"cannot publish to {topic}: {exc}") from exc

    def commit(self, progress: dict) -> None:
        """Commit the open transaction with ``progress`` as this name's progress record."""
        try:
            if not self._open:
                self._producer.begin_transaction()
            self._producer.send(topics.INGEST_PROGRESS, key=self.name.encode("utf-8"),
                                value=json.dumps(progress).encode("utf-8"))
            self._producer.commit_transaction()
            self._open = False
        except KafkaError as exc:  # ProducerFenced included: another copy of this shard took over
            raise BusError(f"ingest transaction {self.name} not committed: {exc}") from exc

    def close(self) -> None:
        try:  # an open transaction is left to be aborted by the next run (or the broker's timeout)
            self._producer.close(timeout=5)
        except KafkaError:
            pass


def read_progress(bootstrap: str, name: str, *, timeout_s: float = 3 * TRANSACTION_TIMEOUT_MS / 1000) -> dict | None:
    """The last committed progress record of ``name``. Read up to the log end as it is now: every record of
    ours lies below it; other shards' transactions still open below it (which read_committed may not pass) end
    within the transaction timeout."""
    tp = TopicPartition(topics.INGEST_PROGRESS, 0)
    kwargs = dict(bootstrap_servers=bootstrap, client_id="auditoryhum-ingest", enable_auto_commit=False,
                  group_id=None, **RECONNECT)
    try:
        with closing(KafkaConsumer(**kwargs)) as probe:  # read_uncommitted: the log end itself
            if not probe.partitions_for_topic(tp.topic):  # no ingest has run on this cluster yet
                return None
            end = probe.end_offsets([tp])[tp]
        with closing(KafkaConsumer(isolation_level=ISOLATION, **kwargs)) as consumer:
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            key, found = name.encode("utf-8"), None
            deadline = time.monotonic() + timeout_s
            while consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise BusError(f"{topics.INGEST_PROGRESS}: a transaction stayed open for {timeout_s:g} s")
                for record in consumer.poll(timeout_ms=500).get(tp, ()):
                    if record.key == key:
                        found = json.loads(record.value)
            return found
    except KafkaError as exc:
        raise BusError(f"cannot read {topics.INGEST_PROGRESS} on {bootstrap}: {exc}") from exc

