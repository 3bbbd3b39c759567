"""Broker faults on real processes: the single broker SIGKILLed mid-stream and restarted on its data, and one broker
of a three-node KRaft cluster (replication factor 3, ``min.insync.replicas=2``) SIGKILLed for good under load.

Each run ingests 1,000 clips through ``auditoryhum ingest`` into its own stack (Triton and the four services) and
asserts on the final-labels topic itself: exactly one FinalLabel record per clip, none missing, and the clusterer's
taxonomy counts 1,000. Each also proves that its fault bit, so it cannot pass by luck.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Sequence

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaConnectionError

from auditoryhum import topics
from auditoryhum.bus import BusError
from auditoryhum.bus.kafka import KafkaBus, read_topics
from auditoryhum.service.client import wait_for_taxonomy
from auditoryhum.service.local import SERVICES, KafkaCluster, LocalStack
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import own_stack
from tests.test_distributed import cli, final_labels_on_topic, metric, recordings

pytestmark = pytest.mark.distributed

CLIPS = 1000


def by_service(stack: LocalStack, family: str, kind: str) -> dict[str, float]:
    """Each service's ``family{kind="<kind>"}`` sample."""
    counts = {}
    for name in SERVICES:
        text = urllib.request.urlopen(f"http://{stack.metrics_address(name)}/metrics", timeout=5).read().decode()
        samples = re.findall(rf'^{family}\{{[^}}]*kind="{kind}"[^}}]*\}} (\S+)$', text, re.M)
        counts[name] = sum(float(v) for v in samples)
    return counts


def bus_errors(stack: LocalStack) -> dict[str, float]:
    """Each service's ``auditoryhum_errors_total{kind="bus"}``: the times it found the broker away."""
    return by_service(stack, "auditoryhum_errors_total", "bus")


def records_in(stack: LocalStack) -> dict[str, float]:
    return {name: metric(stack, name, "auditoryhum_records_in_total") for name in SERVICES}


def stalls(stack: LocalStack) -> dict[str, dict[str, float]]:
    return {kind: by_service(stack, "auditoryhum_consumer_stalls_total", kind)
            for kind in ("heartbeat", "unjoined", "idle")}


def assert_resumed_by_themselves(stack: LocalStack) -> None:
    """No consumer had to be rescued by the stall watch once brokers were there (a ``heartbeat`` stall while the
    only broker is away is the watch doing its job)."""
    found = stalls(stack)
    assert not any(found["idle"].values()) and not any(found["unjoined"].values()), found


def ingest_and_wait_mid_stream(stack: LocalStack, tmp_path: Path, dataset: str) -> float:
    """Publish 1,000 clips and return once the aligner has scored 40 of them (records cross every topic up to
    review); returns how many the labeler had consumed by then."""
    audio = recordings(tmp_path / "audio", 100, copies=10)
    assert '"clips": 1000' in cli("ingest", str(audio), "--bootstrap", stack.bootstrap, "--dataset", dataset)
    deadline = time.monotonic() + 180
    while metric(stack, "aligner", "auditoryhum_records_in_total") < 40:
        assert time.monotonic() < deadline, "the aligner consumed nothing"
        time.sleep(0.05)
    return metric(stack, "labeler", "auditoryhum_records_in_total")


def assert_exactly_once(stack: LocalStack, dataset: str) -> float:
    """The dataset's taxonomy, then exactly one FinalLabel record per ingested clip on the topic; returns the
    seconds its taxonomy took to come."""
    started = time.monotonic()
    taxonomy = wait_for_taxonomy(stack.grpc_address("clusterer"), dataset, wait_s=300)
    took = time.monotonic() - started
    assert taxonomy.clips == CLIPS
    assert sum(lc.count for c in taxonomy.clusters for lc in c.labels) == CLIPS
    clips = {m.clip_id for m in (r.message() for r in read_topics(stack.bootstrap, [topics.CLIPS]))
             if isinstance(m, pb.Clip) and m.dataset == dataset}
    assert len(clips) == CLIPS
    finals = Counter(f.clip.clip_id for f in final_labels_on_topic(stack, dataset))
    assert set(finals) == clips  # none lost
    assert sum(finals.values()) == CLIPS, [c for c, n in finals.items() if n > 1]  # none written twice
    return took


def describe(bootstrap: str, names: Sequence[str]) -> dict[tuple[str, int], dict]:
    """(topic, partition) → its metadata: leader_id, replica_nodes, isr_nodes. kafka-python's admin client asks
    any broker it knows and fails if that one is dead: asked again, it picks another."""
    deadline = time.monotonic() + 30
    while True:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
        try:
            return {(t["name"], p["partition_index"]): p for t in admin.describe_topics(list(names))
                    for p in t["partitions"]}
        except KafkaConnectionError:
            if time.monotonic() > deadline:
                raise
        finally:
            admin.close()


def min_insync_replicas(bootstrap: str, names: Sequence[str]) -> dict[str, int]:
    """Each topic's effective ``min.insync.replicas`` (its own, or the brokers' default)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    try:
        wanted = [ConfigResource(ConfigResourceType.TOPIC, name, {"min.insync.replicas": None}) for name in names]
        found = admin.describe_configs(wanted, config_filter="all")["topic"]
    finally:
        admin.close()
    return {name: int(configs["min.insync.replicas"]["value"]) for name, configs in found.items()}


def test_the_broker_killed_mid_stream_and_restarted_loses_and_duplicates_nothing(tmp_path):
    t0 = time.monotonic()
    with own_stack(tmp_path / "stack", 29500) as stack:
        dataset = "broker-kill"
        consumed = ingest_and_wait_mid_stream(stack, tmp_path, dataset)
        assert consumed < CLIPS  # mid-stream
        before = bus_errors(stack)
        stack.kill_kafka()
        killed_at = time.monotonic()
        # Down until the services notice: the stream stops, and polls, commits and lag reads find no broker.
        while sum(bus_errors(stack).values()) == sum(before.values()):
            assert time.monotonic() - killed_at < 120, "no service noticed that the broker is gone"
            time.sleep(0.5)
        with pytest.raises(LookupError):
            wait_for_taxonomy(stack.grpc_address("clusterer"), dataset)
        stack.start_kafka()  # the same data directory: the log, the committed offsets and the producers' state
        down_s = time.monotonic() - killed_at
        noticed = {name: n - before[name] for name, n in bus_errors(stack).items()}

        took = assert_exactly_once(stack, dataset)
        assert_resumed_by_themselves(stack)
        print(f"\nlabeler had consumed {consumed:.0f} clips at the kill; broker down {down_s:.1f} s; bus errors "
              f"{noticed}; taxonomy {took:.1f} s after the restart; {time.monotonic() - t0:.0f} s in all; stalls "
              f"{stalls(stack)}; records in {records_in(stack)}")


def test_a_three_broker_cluster_losing_a_broker_under_load_loses_and_duplicates_nothing(tmp_path):
    # Brokers on 29600, 29610, 29630 (controllers one port up); the stack's Triton has 29620-29622.
    cluster = KafkaCluster(tmp_path / "kafka", (29600, 29610, 29630), replication=3, min_isr=2)
    t0 = time.monotonic()
    with own_stack(tmp_path / "stack", 29600, {"AUDITORYHUM_REPLICATION_FACTOR": "3"}, kafka=cluster) as stack:
        partitions = describe(stack.bootstrap, topics.ALL)
        assert all(len(p["replica_nodes"]) == len(p["isr_nodes"]) == 3 for p in partitions.values())
        assert all(len(p["replica_nodes"]) == 3 for p in describe(stack.bootstrap, ["__consumer_offsets"]).values())
        assert set(min_insync_replicas(stack.bootstrap, topics.ALL).values()) == {2}
        # The victim leads the most partitions of the pipeline's topics: its loss moves the most leaders.
        victim, led = Counter(p["leader_id"] for p in partitions.values()).most_common(1)[0]
        assert led > 0

        dataset = "cluster-broker-loss"
        consumed = ingest_and_wait_mid_stream(stack, tmp_path, dataset)
        assert consumed < CLIPS
        stack.kill_kafka(victim)  # for good: the rest of the run is on two brokers

        # Review emits final labels once every clip is scored: all of them were written after the kill.
        took = assert_exactly_once(stack, dataset)
        assert_resumed_by_themselves(stack)
        # The cluster ran on the two others: they lead every partition, the victim's included, and are its ISR.
        survivors = {1, 2, 3} - {victim}
        after = describe(stack.bootstrap, topics.ALL)
        assert all(p["leader_id"] in survivors and set(p["isr_nodes"]) == survivors for p in after.values())
        print(f"\nkilled broker {victim}, leader of {led}/{len(partitions)} partitions of the pipeline, with the "
              f"labeler at {consumed:.0f} clips; taxonomy {took:.1f} s after the kill; {time.monotonic() - t0:.0f} s "
              f"in all; bus errors {bus_errors(stack)}; stalls {stalls(stack)}; records in {records_in(stack)}")


def test_a_partition_left_without_a_replica_is_an_outage_not_a_crash(tmp_path):
    """A topic of replication factor 1 whose broker is lost has a partition without a leader. kafka-python 3.0.12
    leaves such a partition out of its offsets answer and then fails with KeyError, which took down every service
    consuming the topic (its lag) or relaying to it (the outbox reads the topic's tail); the bus reports it as the
    broker being away (BusError), which a service waits out."""
    cluster = KafkaCluster(tmp_path / "kafka", (29600, 29610, 29630), replication=3, min_isr=2)
    cluster.start()
    try:
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        admin.create_topics({"faults.orphan.v1": {"assignments": {0: [3], 1: [1]}}})  # one replica each
        admin.close()
        bus = KafkaBus(cluster.bootstrap)
        consumer = bus.subscribe("orphan", ["faults.orphan.v1"])
        deadline = time.monotonic() + 60
        while len(consumer._consumer.assignment()) < 2:
            assert time.monotonic() < deadline, "never assigned both partitions"
            consumer.poll(timeout_s=0.5)
        assert consumer.lag() == 0
        cluster.kill(3)
        while describe(cluster.bootstrap, ["faults.orphan.v1"])[("faults.orphan.v1", 0)]["leader_id"] != -1:
            assert time.monotonic() < deadline + 60, "broker 3 was never fenced"
            time.sleep(0.5)
        with pytest.raises(BusError, match="no leader"):
            consumer.lag()
        with pytest.raises(BusError, match="no leader"):
            bus.tail("faults.orphan.v1", 10)
        consumer.close()
        bus.close()
    finally:
        cluster.stop()
