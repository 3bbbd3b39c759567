"""Dataset manifests (a folder, a CSV of URIs, an object-store prefix on fsspec's real `file://` and `memory://`
filesystems), their shards, and audio read by URL with the same checks as files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest

from auditoryhum import audio, ingest, manifest
from auditoryhum.manifest import ManifestError
from tests.conftest import LINCITY


@pytest.fixture
def folder(tmp_path) -> Path:
    """Ten real recordings in two class folders, a text file and a hidden folder."""
    root = tmp_path / "city"
    for n, path in enumerate(sorted(LINCITY.glob("*.wav"))[:10]):
        (root / ("busy" if n % 2 else "calm")).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / ("busy" if n % 2 else "calm") / path.name)
    (root / "notes.txt").write_text("not audio")
    (root / ".cache").mkdir()
    shutil.copy(next(LINCITY.glob("*.wav")), root / ".cache" / "hidden.wav")
    return root


@pytest.fixture
def memory(folder):
    """``folder`` copied to fsspec's in-memory object store; yields the prefix URL."""
    fs = fsspec.filesystem("memory")
    prefix = f"/{uuid.uuid4().hex[:8]}/city"
    fs.put(str(folder), prefix, recursive=True)
    yield f"memory://{prefix}"
    fs.rm(prefix.rsplit("/", 1)[0], recursive=True)


def ids(clips) -> list[str]:
    return [c.clip_id for c in clips]


def test_a_folder_gives_the_ids_order_and_classes_ingest_always_gave(folder):
    found = manifest.load(str(folder), class_from_folder=True)
    before = [(ingest.clip_id("city", p.relative_to(folder).as_posix()), str(p.resolve()),
               p.relative_to(folder).parts[0]) for p in ingest.scan(folder).files]  # the id scheme ingest always used
    after = list(found.clips("city"))
    assert found.name == "city" and len(after) == 10
    assert [(c.clip_id, c.uri, c.ground_truth) for c in after] == before
    assert {c.ground_truth for c in after} == {"busy", "calm"}
    # reported with the reason, the hidden folder too (once, not searched)
    assert [(s.path, s.reason.split(" (")[0]) for s in found.skipped] == [
        (str(folder / ".cache"), "hidden folder, not searched"), (str(folder / "notes.txt"), "no audio extension")]


@pytest.mark.parametrize("store", ["file", "memory"])
def test_a_prefix_on_an_object_store_keeps_the_folders_ids(folder, memory, store):
    url = folder.as_uri() if store == "file" else memory
    local = list(manifest.load(str(folder), class_from_folder=True).clips("city"))
    found = manifest.load(url, class_from_folder=True)
    remote = list(found.clips("city"))
    assert found.name == "city"
    assert ids(remote) == ids(local)  # same keys, same order: re-ingesting from the store duplicates nothing
    assert [c.ground_truth for c in remote] == [c.ground_truth for c in local]
    assert all(c.uri.startswith(f"{store}://") for c in remote)
    assert [(c.duration_s, c.sample_rate) for c in remote] == [(c.duration_s, c.sample_rate) for c in local]
    assert [(s.path, s.reason) for s in found.skipped] == [
        (f"{url}/.cache/hidden.wav", "hidden (a name on its path starts with '.')"),
        (f"{url}/notes.txt", "no audio extension")]


def test_audio_read_by_url_decodes_as_the_file_does(folder, memory):
    for entry in manifest.load(memory).entries[:3]:
        by_url = audio.load(entry.uri, 16000)
        by_path = audio.load(folder / entry.key, 16000)
        assert np.array_equal(by_url.samples, by_path.samples) and by_url.source_rate == by_path.source_rate


def test_a_bad_url_is_an_audio_error_with_the_reason(memory):
    fs = fsspec.filesystem("memory")
    empty = f"{memory}/empty.wav"
    fs.pipe(empty.removeprefix("memory://"), b"")
    first = manifest.load(memory).entries[0].uri
    cases = [
        (first, audio.AudioLimits(max_file_bytes=1000), "file too large"),  # refused before it is downloaded
        (empty, audio.AudioLimits(), "empty file"),
        (f"{memory}/missing.wav", audio.AudioLimits(), "cannot open"),
        ("nosuchprotocol://bucket/a.wav", audio.AudioLimits(), "cannot open"),
    ]
    for uri, limits, reason in cases:
        with pytest.raises(audio.AudioError, match=reason):
            audio.load(uri, 16000, limits)
    with pytest.raises(audio.AudioError, match="cannot open"):
        audio.probe(f"{memory}/missing.wav")


def test_a_csv_lists_uris_with_class_and_split_in_file_order(folder, memory):
    files = manifest.load(str(folder)).entries
    remote = f"{memory}/{files[0].key}"
    (folder / "list.csv").write_text("uri,class,split\n"
                                     f"{files[3].key},horn,test\n"
                                     f"./{files[1].key},engine,train\n"
                                     f"{remote},,train\n")
    found = manifest.load(str(folder / "list.csv"))
    clips = list(found.clips("city"))
    assert found.name == "list"
    # relative rows are keyed like the folder's files, so they keep the folder's ids
    assert ids(clips[:2]) == [ingest.clip_id("city", files[3].key), ingest.clip_id("city", files[1].key)]
    assert [c.uri for c in clips] == [files[3].uri, files[1].uri, remote]
    assert [(c.ground_truth, c.split) for c in clips] == [("horn", "test"), ("engine", "train"), ("", "train")]
    assert clips[2].clip_id == ingest.clip_id("city", remote) and clips[2].duration_s > 0


def test_a_csv_on_an_object_store_resolves_relative_rows_there(memory):
    key = manifest.load(memory).entries[0].key
    fsspec.filesystem("memory").pipe(f"{memory.removeprefix('memory://')}/list.csv", f"uri\n{key}\n".encode())
    [entry] = manifest.load(f"{memory}/list.csv").entries
    assert (entry.uri, entry.key) == (f"{memory}/{key}", key)
    assert audio.load(entry.uri, 16000).duration_s > 0


@pytest.mark.parametrize("content, message", [
    ("path,class\na.wav,x\n", "no 'uri' column"),
    ("uri\n\"a.wav\n", "malformed CSV"),
    (b"uri\n\xff.wav\n", "not a UTF-8 CSV file"),
])
def test_a_csv_that_cannot_be_read_as_a_whole_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "list.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ManifestError, match=message):
        manifest.load(str(path)).count()


def test_bad_rows_are_entries_with_the_reason_and_repeats_are_skipped_with_both_lines(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("uri,class\n"
                    "a.wav,first\n"             # 2
                    ",empty\n"                  # 3
                    "nosuchprotocol://b/x.wav\n"  # 4
                    "http://[::1/x.wav\n"        # 5: unparseable
                    "./a.wav,repeat\n"          # 6: a.wav again, after normalisation
                    "b.wav\n"                   # 7
                    "b.wav\n"                   # 8
                    "a.wav,again\n")            # 9
    found = manifest.load(str(path))
    entries = list(found)
    assert [(e.key, e.ground_truth) for e in entries if not e.error] == [("a.wav", "first"), ("b.wav", "")]
    assert [e.error for e in entries if e.error] == [
        f"{path}:3: empty uri",
        f"{path}:4: 'nosuchprotocol://b/x.wav': unknown protocol nosuchprotocol://",
        f"{path}:5: 'http://[::1/x.wav': unparseable URL: Invalid IPv6 URL"]
    # bad rows keep their place (and so count: their dead letters complete the dataset); repeats do not
    assert found.count() == 5 and (found.errors, found.repeats) == (3, 3)
    assert [(s.path, s.reason.split(";")[0]) for s in found.skipped] == [
        (f"{path}:6", "./a.wav is listed twice (first on line 2)"),
        (f"{path}:8", "b.wav is listed twice (first on line 7)"),
        (f"{path}:9", "a.wav is listed twice (first on line 2)")]
    # the first row's clip is the one published, untouched by its repeats
    [first] = [c for c in found.clips("d") if c.clip_id == ingest.clip_id("d", "a.wav")]
    assert first.ground_truth == "first"
    # every bad row has a clip id of its own, so each dead letter counts once
    assert len({ingest.clip_id("d", e.key) for e in entries}) == 5


def test_a_source_that_is_none_of_the_three_is_a_clear_error(tmp_path):
    (tmp_path / "clip.wav").write_bytes(b"RIFF")
    cases = [(tmp_path / "nope", "no such folder or file"), (tmp_path / "clip.wav", "not a folder, a .csv file"),
             ("memory://no/such/prefix", "no such prefix"), ("nosuchprotocol://bucket/x", "cannot list")]
    for source, message in cases:
        with pytest.raises(ManifestError, match=message):
            manifest.load(str(source))


def test_shards_split_the_manifest_round_robin_into_disjoint_parts(folder):
    found = manifest.load(str(folder))
    entries = found.entries
    for count in (1, 3, 4, 10, 13):
        shards = [list(found.shard(i, count)) for i in range(count)]
        # every clip in exactly one shard
        assert sorted(e.key for s in shards for e in s) == sorted(e.key for e in entries)
        assert all(shard == entries[i::count] for i, shard in enumerate(shards))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ManifestError, match="not in 0..2"):
        found.shard(3, 3)


def test_streamed_listing_keeps_the_order_the_whole_list_had(tmp_path):
    """Names whose order differs part by part and as whole strings (' ' and '-' sort before '/'): a folder walk
    keeps the sorted-path order, a prefix walk the sorted-key order fs.find() gave, so the shards are the old ones."""
    root = tmp_path / "odd"
    wav = next(LINCITY.glob("*.wav"))
    for name in ("a/x.wav", "a b/x.wav", "a-b/x.wav", "a.wav", "a/b/c.wav", "a/b.wav", "ab.wav", "Z.wav", "é/x.wav"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(wav, root / name)
    fs = fsspec.filesystem("memory")
    prefix = f"/{uuid.uuid4().hex[:8]}/odd"
    fs.put(str(root), prefix, recursive=True)
    try:
        whole = {  # how the list-everything code ordered them
            str(root): [p.relative_to(root).as_posix() for p in sorted(root.rglob("*.wav"))],
            f"memory://{prefix}": [p[len(prefix) + 1:] for p in sorted(fs.find(prefix))]}
        assert whole[str(root)] != whole[f"memory://{prefix}"]  # the two orders do differ here
        for source, keys in whole.items():
            found = manifest.load(source)
            assert [e.key for e in found] == keys
            for count in (2, 3):
                assert [[e.key for e in found.shard(i, count)] for i in range(count)] == \
                    [keys[i::count] for i in range(count)]
    finally:
        fs.rm(prefix.rsplit("/", 1)[0], recursive=True)


_LIST = """
import resource, sys
from auditoryhum import manifest
found = manifest.load(sys.argv[1])
assert found.count() == int(sys.argv[2])
assert sum(1 for _ in found.shard(1, 8)) == len(range(1, int(sys.argv[2]), 8))
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def test_listing_a_csv_takes_the_same_memory_for_200k_rows_as_for_20k(tmp_path):
    """Peak RSS of a child that counts, finds the repeats and shards a CSV: flat in the number of rows (the
    list-everything listing held about 0.5 kB per row: 90 MB more at 200k)."""
    peaks = {}
    for rows in (20_000, 200_000):
        path = tmp_path / f"{rows}.csv"
        with path.open("w") as f:
            f.write("uri,class\n")
            f.writelines(f"s3://bucket/clips/{n % 97}/{n:09d}.wav,class{n % 97}\n" for n in range(rows))
        child = subprocess.run([sys.executable, "-c", _LIST, str(path), str(rows)], capture_output=True, text=True,
                               timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert child.returncode == 0, child.stderr
        peaks[rows] = int(child.stdout)  # kB
    assert peaks[200_000] - peaks[20_000] < 12_000, peaks
