"""Start-up in any order: on a fresh broker, the four services started one at a time in each of the 24 orders, with
staggered delays and records waiting before some of them are up, each consume within seconds.

This is the test of kafka-python 3.0.12's join race (see ``KafkaBusConsumer._keep_join_alive``): a member whose
rebalance round trip outlasts its poll could stay REBALANCING for ever and never consume. On a fresh broker a first
join is often followed at once by a second rebalance (the new topics' metadata arrives after the first
assignment), and a short poll makes its round trip outlast the poll: before the fix, 5 of 10 starts with 10 ms
polls stalled, and 1 of 10 with the default 200 ms (1 in 6 full ``make up`` stacks on this 2-core machine). Each
start also checks that no consumer had to be rescued by the stall watch: recovering after a stall window is not
"within seconds".
"""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import pytest

from auditoryhum import ingest, topics
from auditoryhum.bus.kafka import KafkaBus, ensure_topics, group_lag
from auditoryhum.service.client import wait_for_taxonomy
from auditoryhum.service.local import SERVICES, LocalStack
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import LINCITY, TEST_URIS
from tests.test_distributed import metric

pytestmark = pytest.mark.distributed

ORDERS = list(itertools.permutations(SERVICES))
CONSUME_S = 60.0  # from the last service ready to the taxonomy (done by then here); a stalled consumer never is
PORTS = {"kafka_port": 29492, "port_base": 29451, "metrics_base": 29461, "triton_port": 29400, "ui_port": 0,
         "allowed_uris": TEST_URIS}


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    """One Triton for every start (models load once); the broker is what each start gets fresh."""
    stack = LocalStack(tmp_path_factory.mktemp("triton"), **PORTS)
    stack.start_triton()
    yield stack
    stack.stop_triton()


def publish_dataset(bootstrap: str, dataset: str, files: list[Path]) -> None:
    ensure_topics(bootstrap, topics.ALL, 4)
    bus = KafkaBus(bootstrap, client_id="test-ingest")
    bus.publish(topics.DATASETS, dataset, pb.DatasetAnnouncement(dataset=dataset, expected_clips=len(files)))
    for f in files:
        clip = ingest.clip(dataset, f.name, str(f))
        bus.publish(topics.CLIPS, clip.clip_id, clip)
    bus.flush()
    bus.close()


@pytest.mark.parametrize("trial", range(len(ORDERS)), ids=["-".join(order) for order in ORDERS])
def test_services_started_in_any_order_each_consume_at_once(triton, tmp_path, trial, monkeypatch):
    rng = random.Random(trial)
    order = ORDERS[trial]
    delays = [rng.uniform(0.0, 2.0) for _ in order]
    publish_after = rng.randrange(len(order) + 1)  # records wait before the services after this one start
    # Short polls on even trials (the race at its most likely), the default on odd ones.
    monkeypatch.setenv("AUDITORYHUM_POLL_TIMEOUT_S", "0.01" if trial % 2 == 0 else "0.2")
    files = sorted(LINCITY.glob("*.wav"))[trial % 20:][:6]
    stack = LocalStack(tmp_path, **PORTS)
    stack.start_kafka()  # a fresh broker: new data directory, no topics, no groups
    try:
        processes = {}
        for i, (name, delay) in enumerate(zip(order, delays)):
            if i == publish_after:
                publish_dataset(stack.bootstrap, "start", files)
            time.sleep(delay)
            processes[name] = stack.spawn(name)
        last_started = time.monotonic()
        if publish_after == len(order):
            publish_dataset(stack.bootstrap, "start", files)
        for name in order:
            stack.wait_serving(name, 180, processes[name])
        try:
            taxonomy = wait_for_taxonomy(stack.grpc_address("clusterer"), "start", wait_s=CONSUME_S)
        except LookupError:
            lag = group_lag(stack.bootstrap, {f"auditoryhum-{n}": topics.CONSUMES[n] for n in SERVICES})
            pytest.fail(f"order {order}, delays {delays}: no taxonomy {CONSUME_S:g} s after the last service was "
                        f"ready; records each group has not committed: {lag}")
        took = time.monotonic() - last_started
        assert taxonomy.clips == len(files)
        stalls = {name: metric(stack, name, "auditoryhum_consumer_stalls_total") for name in SERVICES}
        assert not any(stalls.values()), f"consumers rescued by the stall watch: {stalls}"
        print(f"{'-'.join(order)}: taxonomy {took:.1f} s after the last service was started")
    finally:
        stack.stop_services()
        stack.stop_kafka()
