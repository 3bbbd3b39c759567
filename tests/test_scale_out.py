"""Review and clusterer scaled out: two replicas of each on a real broker and a real PostgreSQL, three datasets at
once, a replica of each killed (SIGKILL) mid-way and left dead, so the survivors take its datasets over from the
shared state. Every dataset's taxonomy and final labels must be what one process gives (the embedded runner on
the same clips), each final label on the topic once, each taxonomy built once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
from kafka.partitioner.default import murmur2

from auditoryhum import topics
from auditoryhum.bus.kafka import read_topics
from auditoryhum.config import Settings
from auditoryhum.outputs import OutputWriter
from auditoryhum.pipeline import run
from auditoryhum.service.client import wait_for_taxonomy
from auditoryhum.service.local import LocalStack
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import LINCITY, SIMUTRANS, own_stack
from tests.postgres import PostgresServer, create_database
from tests.test_distributed import rows

pytestmark = pytest.mark.distributed

THRESHOLD = 0.3  # review streams final labels as clips are scored: the clusterer is busy while review is
PARTITIONS = 4
# Three datasets on partitions 0, 3 and 1: with two replicas (partitions 0-1 and 2-3) each owns at least one.
DATASETS = ("city-a", "city-b", "city-c")
REPLICATED = {"review": 2, "clusterer": 2}
CLIPS = 40  # per dataset


def partition(name: str) -> int:
    return (murmur2(name.encode()) & 0x7FFFFFFF) % PARTITIONS


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[LocalStack]:
    with PostgresServer(port=31390) as postgres:
        env = {"AUDITORYHUM_STATE_URL": create_database(postgres.url()), "AUDITORYHUM_PARTITIONS": str(PARTITIONS),
               "AUDITORYHUM_REVIEW_THRESHOLD": str(THRESHOLD)}
        with own_stack(tmp_path_factory.mktemp("scale-stack"), 31200, env, replicas=REPLICATED,
                       triton=False) as stack:
            yield stack


def datasets(root: Path) -> dict[str, Path]:
    """Three datasets of CLIPS real recordings each (lincity-ng-data, simutrans-pak64), none shared."""
    files = sorted(LINCITY.glob("*.wav")) + sorted(SIMUTRANS.glob("*.wav"))
    assert len(files) >= 3 * CLIPS, "lincity-ng-data and simutrans-pak64 are not installed (make setup)"
    found = {}
    for i, name in enumerate(DATASETS):
        found[name] = root / name
        found[name].mkdir(parents=True)
        for f in files[i * CLIPS:(i + 1) * CLIPS]:
            (found[name] / f"{f.parent.parent.name}-{f.name}").symlink_to(f)
    return found


def outputs(stack: LocalStack, models, name: str, taxonomy: pb.Taxonomy, out: Path) -> Path:
    """What `auditoryhum taxonomy` writes (taxonomy.json, final_labels.csv...), here in-process."""
    writer = OutputWriter(out, dataset=name)
    for record in read_topics(stack.bootstrap, [t for t in OutputWriter.consumes if t != topics.TAXONOMY]):
        writer.handle(record.message())
    writer.taxonomies[name] = taxonomy
    writer.finish(name, models.embedder, {"skipped_files": [], "seconds": None, "clips_per_s": None})
    return out


def records_in(stack: LocalStack, name: str, replica: int) -> float:
    text = urllib.request.urlopen(f"http://{stack.metrics_address(name, replica)}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r"^auditoryhum_records_in_total(?:{[^}]*})? (\S+)$", text, re.M))


def busiest(stack: LocalStack, name: str, at_least: int, wait_s: float = 180.0) -> int:
    """The replica of ``name`` that has consumed at least ``at_least`` records (the one holding datasets)."""
    deadline = time.monotonic() + wait_s
    while True:
        counts = {r: records_in(stack, name, r) for r in range(REPLICATED[name])}
        replica = max(counts, key=counts.get)
        if counts[replica] >= at_least:
            return replica
        assert time.monotonic() < deadline, f"{name} consumed only {counts}"
        time.sleep(0.1)


def test_replicas_split_the_datasets_and_a_killed_one_changes_nothing(stack, models, tmp_path):
    assert sorted(partition(d) // 2 for d in DATASETS) == [0, 0, 1]  # both replicas of each own a dataset
    folders = datasets(tmp_path / "audio")
    ingests = [subprocess.Popen([sys.executable, "-m", "auditoryhum", "ingest", str(folder), "--bootstrap",
                                 stack.bootstrap, "--dataset", name], stdout=subprocess.PIPE)
               for name, folder in folders.items()]
    assert [p.wait(timeout=300) for p in ingests] == [0, 0, 0]

    # Mid-way: a review replica holding datasets, then a clusterer replica holding final labels, killed for good.
    victims = {name: busiest(stack, name, 10) for name in ("review", "clusterer")}
    for name, replica in victims.items():
        stack.signal(name, signal.SIGKILL, replica=replica)
    taxonomies = [r.key for r in read_topics(stack.bootstrap, [topics.TAXONOMY])]
    assert len(taxonomies) < len(DATASETS), "killed too late: every taxonomy was out already"
    # The embedded runner (one process, in-process models) on the same clips, meanwhile: the single-replica truth.
    expected = {name: run(folder, tmp_path / "embedded" / name, Settings(review_threshold=THRESHOLD),
                          dataset=name, models=models).summary for name, folder in folders.items()}

    finals = Counter()
    survivor = stack.grpc_address("clusterer", 1 - victims["clusterer"])
    for name in DATASETS:
        taxonomy = wait_for_taxonomy(survivor, name, wait_s=300)
        assert taxonomy.clips == expected[name]["clips"] == CLIPS
        out = outputs(stack, models, name, taxonomy, tmp_path / "distributed" / name)
        ours, theirs = (json.loads((d / "taxonomy.json").read_text()) for d in (out, tmp_path / "embedded" / name))
        assert ours["k"] == theirs["k"] >= 2, name
        assert ours["clusters"] == theirs["clusters"], name
        labels = lambda d: {r["clip_id"]: r["label"] for r in rows(d / "final_labels.csv")}  # noqa: E731
        assert labels(out) == labels(tmp_path / "embedded" / name), name
    for record in read_topics(stack.bootstrap, [topics.FINAL_LABELS]):
        message = record.message()
        if isinstance(message, pb.FinalLabel):
            finals[message.clip.clip_id] += 1
            # Keys stay clip ids; the partition is the dataset's (its taxonomy's: here the same).
            assert record.key == message.clip.clip_id and record.partition == partition(message.clip.dataset)
    assert len(finals) == 3 * CLIPS and set(finals.values()) == {1}  # none lost, none twice across the kills
    built = Counter(r.key for r in read_topics(stack.bootstrap, [topics.TAXONOMY]))
    assert built == {name: 1 for name in DATASETS}  # each taxonomy built and published once


@pytest.mark.parametrize("name", ["review", "clusterer"])
def test_replicas_on_sqlite_are_refused_at_start(name, tmp_path):
    """A SQLite file is one replica's: a service told it runs several refuses to start, and says what to do."""
    done = subprocess.run([sys.executable, "-m", "auditoryhum", "serve", name], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "AUDITORYHUM_REPLICAS": "2",
                                                          "AUDITORYHUM_STATE_DIR": str(tmp_path)})
    assert done.returncode == 2
    assert f"{name}: 2 replicas (AUDITORYHUM_REPLICAS) need a shared state database" in done.stderr
    assert "AUDITORYHUM_STATE_URL" in done.stderr and not list(tmp_path.iterdir())  # nothing started, no file
