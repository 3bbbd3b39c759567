"""The services' state on PostgreSQL, and PostgreSQL restarted under load: review and clusterer wait the outage out
(a lost connection is a transient database error: retried, the batch given back, never a dead letter), and every
clip's final label is on the topic exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Iterator

import pytest

from auditoryhum import topics
from auditoryhum.bus.kafka import read_topics
from auditoryhum.service.client import wait_for_taxonomy
from auditoryhum.service.local import LocalStack
from tests.conftest import own_stack
from tests.postgres import PostgresServer, create_database
from tests.test_distributed import cli, final_labels_on_topic, metric, recordings

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A server of this module's own, free to be restarted."""
    with PostgresServer(port=25443) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory, postgres) -> Iterator[LocalStack]:
    env = {"AUDITORYHUM_STATE_URL": create_database(postgres.url())}
    with own_stack(tmp_path_factory.mktemp("pg-stack"), 29700, env) as stack:
        yield stack


def database_errors(stack: LocalStack, name: str) -> float:
    return metric(stack, name, f'auditoryhum_errors_total{{kind="database",stage="{name}"}}')


def test_postgres_restarted_under_load_loses_and_duplicates_nothing(stack, postgres, tmp_path):
    dataset = "pg-restart"
    audio = recordings(tmp_path / "audio", 100, copies=10)  # 1,000 clips
    cli("ingest", str(audio), "--bootstrap", stack.bootstrap, "--dataset", dataset)
    deadline = time.monotonic() + 120
    while metric(stack, "review", "auditoryhum_records_in_total") < 200:  # review is writing its state
        assert time.monotonic() < deadline, "review consumed nothing"
        time.sleep(0.05)
    postgres.stop("immediate")  # a crash: connections cut mid-transaction
    deadline = time.monotonic() + 60
    while not database_errors(stack, "review"):  # the outage bit: review's writes fail, and are given back
        assert time.monotonic() < deadline, "review never noticed that PostgreSQL is gone"
        time.sleep(0.2)
    time.sleep(3)  # down a while, as a restarting server is
    postgres.start()

    taxonomy = wait_for_taxonomy(stack.grpc_address("clusterer"), dataset, wait_s=300)
    assert taxonomy.clips == 1000
    finals = Counter(f.clip.clip_id for f in final_labels_on_topic(stack, dataset))
    assert len(finals) == 1000 and set(finals.values()) == {1}  # none lost, none twice
    letters = [r.message() for r in read_topics(stack.bootstrap, [topics.DLQ])]
    assert not [m for m in letters if m.dataset == dataset]  # an outage is not bad input
    assert database_errors(stack, "review") > 0
