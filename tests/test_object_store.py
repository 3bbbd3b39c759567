"""Datasets in object storage, for real: a SeaweedFS S3 server on loopback (the `s3_server` fixture) holding real
recordings, read by `auditoryhum run`, by `ingest` and by the labeler service over the real broker.

A prefix gives the clip ids its folder gives; a CSV manifest lists s3:// URIs; a missing object is a dead letter
naming its URI; an unreachable endpoint, an unknown bucket and wrong credentials are told apart; and a store that
goes away while clips are read (the server stopped, then started again) delays them and loses none.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import s3fs

from auditoryhum import audio, topics
from auditoryhum.bus.kafka import read_topics
from auditoryhum.config import Settings
from auditoryhum.errors import STORAGE, TransientError
from auditoryhum.pipeline import run
from auditoryhum.uris import REFUSED, UriPolicy
from tests.conftest import LINCITY, TEST_URIS

NAMES = ["TraficHigh1.wav", "TraficLow1.wav", "Harbor1.wav", "School1.wav", "Water1.wav", "SportsCroud1.wav"]
PREFIX = "s3://recordings/lincity"
CLOSED = "http://127.0.0.1:29189"  # in the fixture's range, never listened on


@pytest.fixture(scope="module")
def store(s3_server, tmp_path_factory) -> Path:
    """The recordings in ``s3://recordings/lincity/`` and, the same files, in a local folder ``lincity``."""
    s3_server.bucket("recordings")
    fs = s3_server.fs()
    folder = tmp_path_factory.mktemp("local") / "lincity"
    folder.mkdir()
    for name in NAMES:
        assert (LINCITY / name).is_file(), "lincity-ng-data is not installed (make setup)"
        fs.put_file(str(LINCITY / name), f"recordings/lincity/{name}")
        (folder / name).symlink_to(LINCITY / name)
    return folder


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process reads the store as a deployed service does: settings from the environment only."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a client made under another test's environment keeps it
    yield s3_server.env
    s3fs.S3FileSystem.clear_instance_cache()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditoryhum", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_run_on_a_prefix_labels_the_clips_as_the_same_folder_does(store, s3_server, models, tmp_path):
    done = cli("run", f"{PREFIX}/", "--out", str(tmp_path / "s3"), env=s3_server.env)
    assert done.returncode == 0, done.stderr
    run(store, tmp_path / "local", Settings(), models=models)
    remote = {r["clip_id"]: (r["path"], r["labels"]) for r in rows(tmp_path / "s3" / "labels.csv")}
    local = {r["clip_id"]: (r["path"], r["labels"]) for r in rows(tmp_path / "local" / "labels.csv")}
    assert len(remote) == len(NAMES) and remote.keys() == local.keys()  # the same ids: dataset and relative path
    assert sorted(path for path, _ in remote.values()) == [f"{PREFIX}/{name}" for name in sorted(NAMES)]
    assert {k: labels for k, (_, labels) in remote.items()} == {k: labels for k, (_, labels) in local.items()}
    assert rows(tmp_path / "s3" / "dead_letters.csv") == []


def test_a_csv_of_s3_uris_is_labelled_and_a_missing_object_is_a_dead_letter_naming_it(store, s3_env, models,
                                                                                       tmp_path):
    manifest = tmp_path / "batch.csv"
    gone = f"{PREFIX}/Gone.wav"
    manifest.write_text("uri,class\n" + "".join(f"{PREFIX}/{n},traffic\n" for n in NAMES[:3]) + f"{gone},x\n")
    run(manifest, tmp_path / "out", Settings(), models=models)
    assert sorted(r["path"] for r in rows(tmp_path / "out" / "labels.csv")) == sorted(
        f"{PREFIX}/{n}" for n in NAMES[:3])
    [letter] = rows(tmp_path / "out" / "dead_letters.csv")
    assert letter["path"] == gone and letter["reason"] == f"cannot open {gone}: no such object"


def test_the_stages_tell_a_missing_bucket_wrong_keys_and_an_unreachable_store_apart(store, s3_env, monkeypatch):
    assert audio.load(f"{PREFIX}/{NAMES[0]}", 16000).duration_s > 1
    with pytest.raises(audio.AudioError, match="^cannot open s3://nowhere/a.wav: no such bucket 'nowhere' at http"):
        audio.load("s3://nowhere/a.wav", 16000)

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(audio.AudioError, match=r"access denied( \(\w+\))? at http.*AWS_SECRET_ACCESS_KEY"):
        audio.load(f"{PREFIX}/{NAMES[0]}", 16000)

    # Nothing listens: after botocore's bounded retries, a transient error (the worker retries it, never a dead letter)
    monkeypatch.setenv("AWS_ENDPOINT_URL", CLOSED)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(TransientError, match=f"storage: cannot open {PREFIX}/{NAMES[0]}: Could not connect") as e:
        audio.load(f"{PREFIX}/{NAMES[0]}", 16000)
    assert e.value.kind == STORAGE


def test_ingest_refuses_an_unreachable_store_an_unknown_bucket_and_wrong_keys_in_one_line(store, s3_server):
    kafka = "127.0.0.1:29189"  # never reached: the source is listed first, and nothing is published when it fails
    cases = {
        "unreachable": ({"AWS_ENDPOINT_URL": CLOSED}, PREFIX,
                        f"{PREFIX}: cannot list: cannot reach the object store at {CLOSED}: Could not connect to "
                        "the endpoint URL"),
        "no bucket": ({}, "s3://nowhere/lincity", f"s3://nowhere/lincity: cannot list: no such bucket 'nowhere' at "
                                                    f"{s3_server.endpoint}"),
        "wrong keys": ({"AWS_ACCESS_KEY_ID": "someone-else"}, PREFIX,
                       f"{PREFIX}: cannot list: access denied (InvalidAccessKeyId) at {s3_server.endpoint}: check "
                       "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the chart's objectStore Secret) and the bucket's "
                       "policy"),
    }
    for name, (env, source, message) in cases.items():
        done = cli("ingest", source, "--bootstrap", kafka, env={**s3_server.env, **env})
        assert (done.returncode, done.stderr, done.stdout) == (2, message + "\n", ""), name
    done = cli("run", "s3://nowhere/lincity", "--out", "/nonexistent/out", env=s3_server.env)
    assert done.returncode == 2 and done.stderr.strip().endswith("no such bucket 'nowhere' at "
                                                                 f"{s3_server.endpoint}")


def test_the_uri_policy_admits_a_bucket_prefix_and_nothing_beside_it():
    policy = UriPolicy.parse(f"{PREFIX}/,/data/")
    assert policy.resolve(f"{PREFIX}/a.wav") == f"{PREFIX}/a.wav"
    assert policy.allows(f"{PREFIX}/sub/b.flac")
    for uri in (f"{PREFIX}-evil/a.wav", "s3://recordings/other/a.wav", "s3://recordings-x/lincity/a.wav",
                f"{PREFIX}/../other/a.wav", "gs://recordings/lincity/a.wav", "s3://user@recordings/lincity/a.wav",
                f"{PREFIX}/a.wav::s3://recordings/other/b.wav"):
        assert not policy.allows(uri), uri


# -- the labeler service over the real broker --------------------------------------------------------------------

@pytest.fixture(scope="module")
def labeler(kafka, s3_server, store):
    """The session broker's labeler (models in process), reading s3://recordings/lincity/ with the credentials in
    its environment, as the chart's Secret gives them."""
    env = {**s3_server.env, "AUDITORYHUM_BACKEND": "inprocess",
           "AUDITORYHUM_ALLOWED_URIS": f"{TEST_URIS},{PREFIX}/"}
    try:
        kafka.start("labeler", env=env)
        yield kafka
    finally:
        kafka.signal("labeler")


def labelled(stack, dataset: str) -> dict[str, str]:
    return {r.message().clip.uri: r.message().clip.clip_id for r in read_topics(stack.bootstrap, [topics.LABELS])
            if r.message().clip.dataset == dataset}


def letters(stack, dataset: str) -> dict[str, str]:
    return {m.uri: m.reason for m in (r.message() for r in read_topics(stack.bootstrap, [topics.DLQ]))
            if m.dataset == dataset}


def wait_for(what, check, timeout_s: float = 90.0):
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} after {timeout_s:g} s"
        time.sleep(0.5)
    return result


def errors_total(stack) -> float:
    """The labeler's transient storage errors so far (retries and batches given back)."""
    text = urllib.request.urlopen(f"http://{stack.metrics_address('labeler')}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'^auditoryhum_errors_total\{[^}]*kind="storage"[^}]*\} (\S+)$', text,
                                            re.M))


@pytest.mark.distributed
def test_the_labeler_reads_s3_clips_and_dead_letters_a_missing_one_and_one_outside_the_policy(labeler, s3_server,
                                                                                             tmp_path):
    gone, outside = f"{PREFIX}/Gone.wav", "s3://recordings/elsewhere/a.wav"
    manifest = tmp_path / "s3-batch.csv"
    manifest.write_text("uri\n" + "".join(f"{PREFIX}/{n}\n" for n in NAMES[:3]) + f"{gone}\n{outside}\n")
    done = cli("ingest", str(manifest), "--bootstrap", labeler.bootstrap, env=s3_server.env)
    assert done.returncode == 0, done.stderr
    wait_for("3 clips labelled", lambda: len(labelled(labeler, "s3-batch")) == 3)
    assert sorted(labelled(labeler, "s3-batch")) == sorted(f"{PREFIX}/{n}" for n in NAMES[:3])
    reasons = wait_for("2 dead letters", lambda: (d := letters(labeler, "s3-batch")) and len(d) == 2 and d)
    assert reasons == {gone: f"cannot open {gone}: no such object", outside: REFUSED}


@pytest.mark.distributed
def test_a_store_that_goes_away_mid_read_delays_the_clips_and_loses_none(labeler, s3_server, tmp_path):
    manifest = tmp_path / "outage.csv"
    manifest.write_text("uri\n" + "".join(f"{PREFIX}/{n}\n" for n in NAMES[3:]))
    before = errors_total(labeler)
    s3_server.stop()
    try:
        done = cli("ingest", str(manifest), "--bootstrap", labeler.bootstrap, env=s3_server.env)
        assert done.returncode == 0, done.stderr  # a CSV's rows are not read from the store
        wait_for("the labeler's reads failing", lambda: errors_total(labeler) > before, 60)
    finally:
        s3_server.start()
    wait_for("every clip labelled once the store is back", lambda: len(labelled(labeler, "outage")) == 3, 120)
    assert sorted(labelled(labeler, "outage")) == sorted(f"{PREFIX}/{n}" for n in NAMES[3:])
    assert letters(labeler, "outage") == {}
