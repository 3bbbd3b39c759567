"""`auditoryhum ingest` resumes: killed (SIGKILL) mid-way and run again against the real Kafka broker, every clip is
on the clips topic exactly once (as the services read it, read_committed), bad rows are dead letters once, and
the re-run says how many it skipped. Also its progress output, and the taxonomy it passes on.
On a broker of its own (see the ``kafka`` fixture)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from auditoryhum import feed, ingest, kube, topics
from auditoryhum.bus.kafka import read_topics
from auditoryhum.bus.ledger import read_progress
from auditoryhum.service.local import KafkaCluster

ROWS = 40_000
KAFKA_PORT = 31100  # this module's broker (31100-31101), in the ingest tests' range 31100-31199
BAD = ["", "nosuchprotocol://bucket/x.wav", "http://[::1/x.wav"]


def command(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("auditoryhum")), "ingest", *args]


def messages(bootstrap: str, topic: str, dataset: str) -> list:
    return [m for m in (record.message() for record in read_topics(bootstrap, [topic])) if m.dataset == dataset]


@pytest.fixture(scope="module")
def kafka(tmp_path_factory) -> Iterator[KafkaCluster]:
    """A broker of this module's own: its 40,000 clips of files that do not exist must not sit on the session
    broker's clips topic, where every labeler that joins later would have to dead-letter them first."""
    broker = KafkaCluster(tmp_path_factory.mktemp("ingest-kafka"), [KAFKA_PORT])
    broker.start()
    yield broker
    broker.stop()


def write_csv(path: Path) -> list[str]:
    """ROWS clips (files that need not exist: --no-probe), three bad rows and two repeats; returns the keys."""
    keys = [f"clips/{n % 10}/{n:06d}.wav" for n in range(ROWS)]
    rows = keys[:100] + BAD + keys[100:] + [keys[5], "./" + keys[7]]
    path.write_text("uri,class\n" + "".join(f"{row},c\n" for row in rows))
    return keys


def test_a_killed_ingest_run_again_publishes_every_clip_exactly_once(kafka, tmp_path):
    bootstrap, dataset = kafka.bootstrap, f"resume-{uuid.uuid4().hex[:6]}"
    keys = write_csv(tmp_path / "big.csv")
    args = [str(tmp_path / "big.csv"), "--dataset", dataset, "--bootstrap", bootstrap, "--no-probe",
            "--shard-count", "2", "--commit-every", "500", "--taxonomy", "city-sounds"]
    shard0 = [*args, "--shard-index", "0"]
    killed = subprocess.Popen(command(*shard0), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while killed.poll() is None and time.monotonic() < deadline:
        progress = read_progress(bootstrap, f"{dataset}/0-of-2", timeout_s=30)
        if progress and progress["position"] >= 2000:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    assert killed.wait(30) == -signal.SIGKILL, killed.communicate()
    recorded = read_progress(bootstrap, f"{dataset}/0-of-2")["position"]
    shard_size = len(range(0, ROWS + len(BAD), 2))
    assert 2000 <= recorded < shard_size and recorded % 500 == 0

    again = subprocess.run(command(*shard0), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["already_published"] == recorded  # said in the result...
    assert result["published"] + result["dead_letters"] + recorded == shard_size
    assert (result["clips"], result["bad_rows"], result["repeats"]) == (ROWS + len(BAD), len(BAD), 2)
    assert result["announced"] is False  # the killed run had announced it
    # ...and on the final line (stderr is not a terminal: no bar, one line)
    [line] = again.stderr.strip().splitlines()
    assert f"{recorded:,} already published (skipped)" in line and "2 repeated rows skipped" in line
    other = subprocess.run(command(*args, "--shard-index", "1", "--no-announce"), capture_output=True, text=True,
                           timeout=300)
    assert other.returncode == 0, other.stderr

    clips = messages(bootstrap, topics.CLIPS, dataset)
    assert Counter(Counter(c.clip_id for c in clips).values()) == {1: ROWS}  # every clip once, none twice
    assert {c.clip_id for c in clips} == {ingest.clip_id(dataset, key) for key in keys}
    assert {c.taxonomy for c in clips} == {"city-sounds"}
    letters = messages(bootstrap, topics.DLQ, dataset)
    assert sorted(letter.reason.split(": ", 1)[1] for letter in letters) == sorted(
        ["empty uri", "'nosuchprotocol://bucket/x.wav': unknown protocol nosuchprotocol://",
         "'http://[::1/x.wav': unparseable URL: Invalid IPv6 URL"])
    assert {letter.stage for letter in letters} == {"ingest"} and len({letter.clip_id for letter in letters}) == 3
    [announcement] = messages(bootstrap, topics.DATASETS, dataset)  # the bad rows count, the repeats do not
    assert (announcement.expected_clips, announcement.taxonomy) == (ROWS + len(BAD), "city-sounds")

    # A third run finds both shards done: it publishes nothing and says so.
    done = subprocess.run(command(*shard0), capture_output=True, text=True, timeout=300)
    assert json.loads(done.stdout)["published"] == 0 and json.loads(done.stdout)["already_published"] == shard_size
    assert len(messages(bootstrap, topics.CLIPS, dataset)) == ROWS


def test_a_changed_source_is_refused_not_resumed(kafka, tmp_path):
    bootstrap, dataset = kafka.bootstrap, f"changed-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "list.csv"
    path.write_text("uri\na.wav\nb.wav\n")
    first = subprocess.run(command(str(path), "--dataset", dataset, "--bootstrap", bootstrap), capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    path.write_text("uri\na.wav\nb.wav\nc.wav\n")
    second = subprocess.run(command(str(path), "--dataset", dataset, "--bootstrap", bootstrap), capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 1 and "announced with 2 clips" in second.stderr
    strict = subprocess.run(command(str(path), "--dataset", dataset + "-strict", "--bootstrap", bootstrap, "--strict"),
                            capture_output=True, text=True, timeout=300)
    assert strict.returncode == 0  # nothing wrong with it
    path.write_text("uri\na.wav\n\na.wav\n")
    strict = subprocess.run(command(str(path), "--dataset", dataset + "-strict2", "--bootstrap", bootstrap,
                                    "--strict"), capture_output=True, text=True, timeout=300)
    assert strict.returncode == 2 and "1 repeated rows (--strict); nothing published" in strict.stderr
    assert messages(bootstrap, topics.CLIPS, dataset + "-strict2") == []


def test_the_progress_bar_shows_rate_and_eta_on_a_terminal_only(monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    shown = io.StringIO()
    report = feed.Report("ingest d shard 1/1", shown, terminal=True)
    report.start(10_000, 2_000)
    for position in range(2_001, 6_001):
        report.advance(position)
        if position % 1000 == 0:
            time.sleep(0.3)
    report.finish(6_000)
    text = shown.getvalue()
    assert "ingest d shard 1/1 (2,000 already published, skipped)" in text
    assert "6000/10000" in text and "clips/s" in text and "0:00:" in text  # count, rate, time remaining
    quiet = io.StringIO()
    report = feed.Report("ingest d shard 1/1", quiet, terminal=False)
    report.start(10, 0)
    report.advance(10)
    report.finish(10)
    assert quiet.getvalue() == ""
    report.line({"published": 9, "dead_letters": 1, "already_published": 0, "repeats": 0})
    assert quiet.getvalue().startswith("ingest d shard 1/1: 9 published, 1 dead letters, 0 already published")


def test_the_job_passes_the_taxonomy_and_probe_choice_to_its_pods():
    spec = kube.IngestJob("s3://b/p/", "birds", 10, 2, 2, "img", "kafka:9092", taxonomy="wildlife", probe=False)
    assert kube.ingest_job(spec)["spec"]["template"]["spec"]["containers"][0]["args"][-3:] == \
        ["--taxonomy", "wildlife", "--no-probe"]
