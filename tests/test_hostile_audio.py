"""Hostile and careless audio (issue 16): scripts/hostile_corpus.py's corpus through `auditoryhum run`, `label`,
`score` and the services' gRPC calls with inline audio.

Every entry must end labelled, dead-lettered or skipped with a reason that says what to do; none vanishes, none
stops a run, nothing that is not sound (NaN, inf, garbage, silence, DC, a 19 kHz tone, one sample) gets a label,
and memory stays bounded: a 2 MB FLAC that decodes to 7 GB is refused from its header.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from auditoryhum import audio, ingest
from auditoryhum.service.local import LocalStack
from auditoryhum.v1 import services_pb2 as api
from auditoryhum.v1 import services_pb2_grpc as api_grpc
from scripts import hostile_corpus
from scripts.hostile_corpus import Expect
from tests.conftest import TRAFFIC

GIB = 1024**3
# Peak RSS of `auditoryhum run` over the whole corpus: the in-process models take about 1.3 GB; without the
# decoded-size limit the 8-channel 384 kHz FLAC alone needs about 13.5 GB.
RUN_RSS_BOUND = 2 * GIB
# What the aligner service may grow by while it refuses a 237 KB inline FLAC that decodes to 920 MB.
SERVICE_GROWTH_BOUND = 300 * 1024**2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Expect]]:
    folder = tmp_path_factory.mktemp("hostile") / "corpus"
    return folder, hostile_corpus.write(folder, TRAFFIC[:3])


def auditoryhum(*args: str | bytes, out: Path) -> tuple[int, str, str, int]:
    """Run the console script; its exit code, stdout, stderr and peak RSS in bytes. The peak is the child's own
    VmHWM, polled while it runs: wait4's ru_maxrss would include this (large) pytest process, which a vfork'd
    child's exec records as its own high-water mark."""
    exe = Path(sys.executable).with_name("auditoryhum")
    env = {**os.environ, "COLUMNS": "400"}
    with (out / "stdout").open("w+b") as stdout, (out / "stderr").open("w+b") as stderr:
        process = subprocess.Popen([str(exe), *args], stdout=stdout, stderr=stderr, env=env)
        peak = 0
        while process.poll() is None:
            peak = max(peak, hwm_bytes(process.pid))
            time.sleep(0.05)
        stdout.seek(0), stderr.seek(0)
        return process.returncode, stdout.read().decode(), stderr.read().decode(errors="replace"), peak


def hwm_bytes(pid: int) -> int:
    """A live process's peak resident memory (0 once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def relative(uri: str, folder: Path) -> str:
    return os.path.relpath(audio.local_path(uri), folder.resolve())


def check_outcomes(got: dict[str, tuple[str, str]], expect: dict[str, Expect]) -> None:
    """``got``: entry → (outcome, reason); each as the corpus expects, and nothing more or less."""
    assert got.keys() == expect.keys(), f"gone: {expect.keys() - got.keys()}, extra: {got.keys() - expect.keys()}"
    wrong = {name: got[name] for name, e in expect.items() if got[name][0] != e.outcome or e.words not in got[name][1]}
    assert not wrong, wrong


def test_run_over_the_corpus_labels_dead_letters_or_skips_every_entry(corpus, tmp_path):
    folder, expect = corpus
    code, stdout, stderr, peak = auditoryhum("run", str(folder), "--out", str(tmp_path / "out"), out=tmp_path)
    assert code == 0, stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    got = {relative(r["path"], folder): ("labelled", "") for r in rows(out / "final_labels.csv")}
    got |= {relative(r["path"], folder): ("dead", r["reason"]) for r in rows(out / "dead_letters.csv")}
    got |= {os.path.relpath(s["path"], folder): ("skipped", s["reason"]) for s in summary["skipped_files"]}
    check_outcomes(got, expect)
    assert summary["clips"] == summary["labelled"] + summary["dead_letters"]
    for name, e in expect.items():  # the user sees each skipped entry and why, not just a count
        if e.outcome == "skipped":
            assert f"{audio.path_uri(folder / name)}: " in stderr  # with the run's other notes
    assert peak < RUN_RSS_BOUND, f"peak RSS {peak / GIB:.2f} GiB"


def test_label_and_score_take_names_as_bytes_and_refuse_what_is_not_sound(corpus, tmp_path):
    folder, expect = corpus
    name = os.fsdecode(hostile_corpus.NON_UTF8_NAME)
    code, stdout, stderr, _ = auditoryhum("label", os.fsencode(folder / name), out=tmp_path)
    assert code == 0 and "vehicle" in stdout, stderr[-3000:]

    files = [name for name, e in expect.items() if e.outcome != "skipped"]
    code, stdout, stderr, _ = auditoryhum("score", *(os.fsencode(folder / n) for n in files), "-l", "car traffic",
                                          "--json", out=tmp_path)
    assert code == 1  # some failed, and the rest were still scored
    scored = {relative(json.loads(line)["path"], folder) for line in stdout.splitlines()}
    reasons = dict(line.split(": ", 1) for line in stderr.splitlines() if line.startswith(str(folder)))
    got = {n: ("labelled", "") for n in scored} | {relative(p, folder): ("dead", r) for p, r in reasons.items()}
    check_outcomes(got, {n: expect[n] for n in files})


def test_each_file_decodes_or_is_refused_with_a_reason_a_user_can_act_on(corpus):
    """In-process, file by file: what is wrong with each, not only the first that stops a run. (The 384 kHz FLAC is
    left to the run: without the limit it takes 13.5 GB to find out.)"""
    folder, expect = corpus
    got = {}
    for name, e in expect.items():
        if e.outcome != "skipped" and not name.startswith("huge-8ch"):
            try:
                loaded = audio.load(folder / name, 16000)
                got[name] = ("labelled" if np.isfinite(loaded.samples).all() else "decoded to NaN or inf", "")
            except audio.AudioError as exc:
                got[name] = ("dead", str(exc))
            except Exception as exc:  # noqa: BLE001 - a crash is this file's finding; the others still get checked
                got[name] = ("crashed", repr(exc))
    check_outcomes(got, {n: e for n, e in expect.items() if n in got})


def test_scan_reports_every_entry_it_does_not_read_with_the_reason(corpus):
    folder, expect = corpus
    found = ingest.scan(folder)
    got = {os.path.relpath(s.path, folder): ("skipped", s.reason) for s in found.skipped}
    for path in found.files:
        name = path.relative_to(folder).as_posix()
        got[name] = (expect.get(name, Expect("unexpected")).outcome, "")
    check_outcomes(got, {n: e if e.outcome == "skipped" else Expect(e.outcome) for n, e in expect.items()})


def test_files_that_are_not_regular_are_refused_without_being_opened(corpus):
    folder, expect = corpus
    for name in ("fifo.wav", "device.wav"):  # opening a FIFO blocks; /dev/zero is not an "empty file"
        with pytest.raises(audio.AudioError, match="not a regular file"):
            audio.load(folder / name, 16000)
    with pytest.raises(audio.AudioError, match="cannot open: No such file"):
        audio.load(folder / "dangling.wav", 16000)


def test_a_streaming_encoders_flac_decodes_like_the_file_it_was_made_from(corpus):
    folder, _ = corpus
    streamed = audio.load(folder / "streaming-encoder.flac", 16000)
    whole = audio.load(folder / "nested" / "deeper" / "control.flac", 16000)
    assert sf.info(folder / "streaming-encoder.flac").frames >= audio.UNKNOWN_LENGTH  # the header does not say
    np.testing.assert_array_equal(streamed.samples, whole.samples)


def test_a_name_that_is_not_utf8_keeps_its_bytes_in_the_id_and_a_url(corpus):
    folder, _ = corpus
    found = ingest.scan(folder)
    [path] = [p for p in found.files if os.fsencode(p.name) == hostile_corpus.NON_UTF8_NAME]
    url = audio.path_uri(path)
    assert url.startswith("file://") and url.endswith("caf%E9-latin1-%FF.wav") and url.isascii()
    assert os.fsencode(audio.local_path(url)) == os.fsencode(path.absolute())
    assert audio.path_uri(folder / "control-0.wav") == str(folder / "control-0.wav")  # plain names stay as they are
    assert ingest.clip_id("d", "a/b.wav") == hashlib.sha1(b"d/a/b.wav").hexdigest()[:16]  # UTF-8 ids as before
    assert ingest.clip_id("d", path.name) == hashlib.sha1(b"d/" + hostile_corpus.NON_UTF8_NAME).hexdigest()[:16]
    clip = ingest.clip("d", path.relative_to(folder).as_posix(), url)
    assert clip.uri == url and clip.sample_rate > 0


def test_decoded_size_is_bounded_before_decoding_and_while_streaming(tmp_path):
    limits = audio.AudioLimits(max_decoded_bytes=64 * 1024**2)
    hostile_corpus.constant_flac(tmp_path / "declared.flac", 48000, 8, 599)  # 237 KB → 920 MB decoded
    hostile_corpus.constant_flac(tmp_path / "unknown.flac", 48000, 8, 599, declare_length=False)
    with pytest.raises(audio.AudioError, match=r"decoded size too large: 877 MB \(8 channels × 48000 Hz × 599.0 s\)"):
        audio.load(tmp_path / "declared.flac", 16000, limits)
    with pytest.raises(audio.AudioError, match=r"decoded size too large: more than \d+ MB .* > limit 64 MB"):
        audio.load(tmp_path / "unknown.flac", 16000, limits)
    budget = audio.DecodeBudget(100 * 1024**2)  # one request's: two clips of 40 MB fit, a third does not
    hostile_corpus.constant_flac(tmp_path / "forty.flac", 48000, 2, 109.3)
    data = (tmp_path / "forty.flac").read_bytes()
    for _ in range(2):
        with pytest.raises(audio.AudioError, match="silent"):
            audio.load_bytes(data, 16000, limits, budget)
    with pytest.raises(audio.AudioError, match="decoded-audio budget is spent"):
        audio.load_bytes(data, 16000, limits, budget)


@pytest.fixture(scope="module")
def services(kafka: LocalStack):
    """The labeler and aligner services as processes, on the session's broker and its Triton."""
    try:
        kafka.up(("labeler", "aligner"), kafka=False)
        yield kafka
    finally:
        kafka.stop_services()


def peak_rss(stack: LocalStack, name: str) -> int:
    return hwm_bytes(int(stack._pidfile(name).read_text()))


@pytest.mark.distributed
def test_the_services_label_or_refuse_every_inline_file(services, corpus, tmp_path):
    folder, expect = corpus
    # An empty file is refused with the whole call (INVALID_ARGUMENT names it; test_grpc has it).
    files = [n for n, e in expect.items() if e.outcome != "skipped" and (folder / n).stat().st_size]
    with grpc.insecure_channel(services.grpc_address("labeler")) as channel:
        inline = [api.InlineAudio(name=audio.path_uri(n), data=(folder / n).read_bytes(), dataset="hostile")
                  for n in files]
        response = api_grpc.LabelerServiceStub(channel).LabelClips(api.LabelClipsRequest(inline=inline), timeout=120)
    by_uri = dict(zip((f"inline:{audio.path_uri(n)}" for n in files), files))
    got = {by_uri[p.clip.uri]: ("labelled", "") for p in response.proposals}
    got |= {by_uri[d.uri]: ("dead", d.reason) for d in response.dead_letters}
    check_outcomes(got, {n: expect[n] for n in files})
    # One call's inline clips share a decoded-audio budget (512 MB): two of 211 MB fit, the third does not.
    hostile_corpus.constant_flac(tmp_path / "long.flac", 48000, 2, 550)
    inline = [api.InlineAudio(name=f"long-{i}.flac", data=(tmp_path / "long.flac").read_bytes()) for i in range(3)]
    with grpc.insecure_channel(services.grpc_address("labeler")) as channel:
        response = api_grpc.LabelerServiceStub(channel).LabelClips(api.LabelClipsRequest(inline=inline), timeout=120)
    reasons = sorted(d.reason.split(":")[0] for d in response.dead_letters)
    assert reasons == ["silent", "silent", "the request's decoded-audio budget is spent"]

    hostile_corpus.constant_flac(tmp_path / "inline.flac", 48000, 8, 599)  # 237 KB, 920 MB decoded
    before = peak_rss(services, "aligner")
    with grpc.insecure_channel(services.grpc_address("aligner")) as channel:
        aligner = api_grpc.AlignerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            aligner.Score(api.ScoreRequest(labels=["car"], audio=(tmp_path / "inline.flac").read_bytes()), timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "decoded size too large" in refused.value.details()
        for name in ("mixes-to-inf.wav", "tone-19khz.wav", "mpeg-sync-garbage.mp3", "dc-only.wav"):
            with pytest.raises(grpc.RpcError, match=expect[name].words):
                aligner.Score(api.ScoreRequest(labels=["car"], audio=(folder / name).read_bytes()), timeout=60)
        scored = aligner.Score(api.ScoreRequest(labels=["car"], audio=(folder / "control-0.wav").read_bytes()),
                               timeout=60)
    assert scored.alignment.scores
    assert peak_rss(services, "aligner") - before < SERVICE_GROWTH_BOUND
