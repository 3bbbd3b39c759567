"""Dataset manifests: the clips of a local folder, a CSV of URIs, or an object-store prefix (fsspec), in one
deterministic order, so that N ingest processes each publish a disjoint shard and together every clip once.

- **Folder** (``data/birds``): every audio file below it, sorted by path (what `ingest` always did).
- **CSV** (``birds.csv``, or a URL ending in ``.csv``): a ``uri`` column (a path or URL, absolute or relative to
  the CSV's own folder) and optional ``class`` (ground truth) and ``split`` columns; rows in file order, taken as
  given.
- **Prefix** (``s3://bucket/birds/``, ``gs://…``, ``file:///data/birds``, ``memory://birds``): every audio object
  below it, sorted by key. Other protocols need their fsspec driver installed (s3fs, gcsfs).

Listing streams: a manifest is read again for each pass (count, then publish) and never held as a list, so a
million-row CSV or bucket costs the memory of one row (and of one folder's names while a folder is walked).
A folder is walked with each folder's names sorted, which is its sorted path order; a prefix likewise with a
folder's name compared as ``name/``, which is the stores' own key order.

Clip ids are :func:`auditoryhum.ingest.clip_id` of the dataset and the clip's path relative to the dataset root,
so a clip keeps its id when ingested again, and when its folder is copied to an object store. A CSV row's key is
its ``uri`` as written (relative paths normalised): a CSV of relative paths at a folder's root gives that
folder's ids.

A CSV row whose uri is empty, unparseable or of a protocol not installed is an entry with an ``error``: ingest
dead-letters it (it counts in the dataset); a row whose key repeats an earlier row's is skipped with both line
numbers, neither published nor counted. Finding repeats takes one pass that writes every key to an on-disk SQLite
table and sorts it there (:class:`_Repeats`), so memory stays flat however long the CSV is.

Sharding is round-robin: shard ``i`` of ``N`` holds the entries whose position ``p`` has ``p mod N == i``.
Folders and prefixes are usually sorted class by class; interleaving gives every shard a similar mix and size.
"""

from __future__ import annotations

import csv
import os
import posixpath
import sqlite3
import tempfile
import urllib.parse
from dataclasses import dataclass
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import fsspec

from auditoryhum import audio, ingest, objectstore
from auditoryhum.v1 import pipeline_pb2 as pb

SKIPPED_KEPT = 1000  # skipped entries listed by name; beyond that only counted


class ManifestError(ValueError):
    """A dataset source that cannot be listed, with the reason."""


@dataclass(frozen=True)
class Entry:
    uri: str  # where the stages read the audio: an absolute path or a URL
    key: str  # the clip id's input: the path relative to the dataset root
    ground_truth: str = ""
    split: str = ""
    error: str = ""  # a CSV row that names no readable URI: "<csv>:<line>: <problem>", dead-lettered by ingest


class Skips:
    """Entries skipped during one pass: the first :data:`SKIPPED_KEPT` by name, and how many in all."""

    def __init__(self) -> None:
        self.kept: list[ingest.Skipped] = []
        self.total = self.repeats = 0

    def add(self, skipped: ingest.Skipped, *, repeat: bool = False) -> None:
        self.total += 1
        self.repeats += repeat
        if len(self.kept) < SKIPPED_KEPT:
            self.kept.append(skipped)


class Manifest:
    """Iterating streams the entries (a fresh listing each time); ``entries`` is them as a list, for the embedded
    mode and annotation files, which hold every clip anyway. ``skipped``, ``skipped_total``, ``repeats`` (CSV rows
    skipped as repeats) and ``errors`` (entries of bad rows) describe the last complete pass."""

    def __init__(self, source: str, name: str, entries: Iterable[Entry] | Callable[[Skips], Iterator[Entry]] = (),
                 skipped: Iterable[ingest.Skipped] = ()):
        self.source, self.name = source, name
        self._entries = entries if callable(entries) else list(entries)
        self.skipped: list[ingest.Skipped] = list(skipped)
        self.skipped_total = len(self.skipped)
        self.repeats = self.errors = 0
        self._count: int | None = None

    def __iter__(self) -> Iterator[Entry]:
        if not callable(self._entries):
            yield from self._entries
            return
        skips = Skips()
        count = errors = 0
        for entry in self._entries(skips):
            count += 1
            errors += bool(entry.error)
            yield entry
        self.skipped, self.skipped_total, self.repeats = skips.kept, skips.total, skips.repeats
        self._count, self.errors = count, errors

    @property
    def entries(self) -> list[Entry]:
        return list(self)

    def count(self) -> int:
        """The number of entries (one listing pass, remembered)."""
        if self._count is None:
            self._count = sum(1 for _ in self)
        return self._count

    def shard(self, index: int, count: int) -> Iterator[Entry]:
        if count < 1 or not 0 <= index < count:
            raise ManifestError(f"shard index {index} is not in 0..{count - 1}")
        return islice(self, index, None, count)

    def clips(self, dataset: str, entries: Iterable[Entry] | None = None, *, probe: bool | None = True,
              taxonomy: str = "") -> Iterator[pb.Clip]:
        """``probe``: read each file's header; None reads local files' only (see :func:`probes`)."""
        for entry in self if entries is None else entries:
            yield clip(dataset, entry, probe=probe, taxonomy=taxonomy)


def probes(entry: Entry, probe: bool | None) -> bool:
    """Whether to read ``entry``'s header: ``probe``, or when None, only a local file's (a remote one's is a GET
    per object: a million of them for a million-clip bucket, for facts the labeler learns when it decodes)."""
    return (audio.local_path(entry.uri) is not None) if probe is None else probe


def clip(dataset: str, entry: Entry, *, probe: bool | None = True, taxonomy: str = "") -> pb.Clip:
    return ingest.clip(dataset, entry.key, entry.uri, ground_truth=entry.ground_truth, split=entry.split,
                       taxonomy=taxonomy, probe=not entry.error and probes(entry, probe))


def load(source: str, *, class_from_folder: bool = False) -> Manifest:
    """The manifest of ``source``: a folder, a ``.csv`` file (local or a URL) or a URL prefix."""
    if audio.is_url(source):
        return _csv(source) if source.lower().endswith(".csv") else _prefix(source, class_from_folder)
    path = Path(source)
    if path.is_dir():
        return _folder(path, class_from_folder)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _csv(source)
    if path.exists():
        raise ManifestError(f"{source}: not a folder, a .csv file or a URL prefix")
    raise ManifestError(f"{source}: no such folder or file")


def _folder_class(key: str, class_from_folder: bool) -> str:
    parts = PurePosixPath(key).parts
    return parts[0] if class_from_folder and len(parts) > 1 else ""


def _folder(root: Path, class_from_folder: bool) -> Manifest:
    def entries(skips: Skips) -> Iterator[Entry]:
        for found in ingest.walk(root):
            if isinstance(found, ingest.Skipped):
                skips.add(found)
                continue
            key = found.relative_to(root).as_posix()
            yield Entry(audio.path_uri(found.resolve()), key, _folder_class(key, class_from_folder))

    return Manifest(str(root), root.resolve().name, entries)


def _prefix(url: str, class_from_folder: bool) -> Manifest:
    try:
        fs, root = fsspec.core.url_to_fs(url, **objectstore.options(url))
        root = root.rstrip("/")
        exists = fs.isdir(root)
        if not exists:  # s3fs answers False for a bucket that is not there, or not ours: say which
            objectstore.check_bucket(fs, url)
    except Exception as exc:  # unreachable store, no bucket, refused, unknown protocol, driver not installed
        raise ManifestError(f"{url}: cannot list: {objectstore.describe(url, exc)}") from exc
    if not exists:
        raise ManifestError(f"{url}: no such prefix (or it holds no objects)")
    # Local objects as percent-encoded file:// URLs, which audio.load decodes back to the name's bytes.
    uri_of = audio.file_url if "file" in fs.protocol else fs.unstrip_protocol

    def entries(skips: Skips) -> Iterator[Entry]:
        try:
            for path in _keys(fs, root):
                key = posixpath.relpath(path, root)
                if any(part.startswith(".") for part in PurePosixPath(key).parts):
                    skips.add(ingest.Skipped(uri_of(path), "hidden (a name on its path starts with '.')"))
                elif PurePosixPath(key).suffix.lower() in audio.AUDIO_EXTENSIONS:
                    yield Entry(uri_of(path), key, _folder_class(key, class_from_folder))
                else:
                    skips.add(ingest.Skipped(uri_of(path), "no audio extension"))
        except Exception as exc:  # the store went away mid-walk, or refuses a sub-folder
            raise ManifestError(f"{url}: cannot list: {objectstore.describe(url, exc)}") from exc

    return Manifest(url, PurePosixPath(root).name or "dataset", entries)


def _keys(fs, folder: str) -> Iterator[str]:
    """The object keys below ``folder`` in key order, one folder's listing at a time (dropped from the driver's
    listing cache once read, so a walk does not accumulate the bucket)."""
    listing = fs.ls(folder, detail=True)
    fs.invalidate_cache(folder)
    children = sorted((info["name"].rstrip("/") + ("/" if info["type"] == "directory" else ""), info["type"])
                      for info in listing if info["name"].rstrip("/") != folder)
    for name, kind in children:
        if kind == "directory":
            yield from _keys(fs, name.rstrip("/"))
        else:
            yield name


# -- CSV ----------------------------------------------------------------------------------------------------------


def _csv(source: str) -> Manifest:
    remote = audio.is_url(source)
    folder = source.rsplit("/", 1)[0] if remote else str(Path(source).resolve().parent)
    drivers: dict[str, str] = {}  # protocol -> "" if installed, else why not

    def key_of(written: str) -> str:
        if audio.is_url(written) or PurePosixPath(written).is_absolute():
            return written
        return posixpath.normpath(written)

    def entry(line: int, written: str, ground_truth: str, split: str) -> Entry:
        if not written:
            return Entry("", f"{source}:{line}", ground_truth, split, f"{source}:{line}: empty uri")
        key = key_of(written)
        if audio.is_url(key) or PurePosixPath(key).is_absolute():
            uri = key
        else:
            uri = f"{folder}/{key}" if remote else str(Path(folder, key).resolve())
        problem = _uri_problem(written, uri, drivers)
        return Entry(uri, key, ground_truth, split, f"{source}:{line}: {written!r}: {problem}" if problem else "")

    repeats = _Repeats()

    def entries(skips: Skips) -> Iterator[Entry]:
        if not repeats.indexed:
            repeats.index((line, key_of(written)) for line, written, _, _ in _rows(source) if written)
        later = repeats.lines()
        repeat = next(later, None)
        for line, written, ground_truth, split in _rows(source):
            while repeat is not None and repeat[0] < line:
                repeat = next(later, None)
            if repeat is not None and repeat[0] == line:  # its clip id is the earlier row's: counting it twice
                why = (f"{written} is listed twice (first on line {repeat[1]}); the repeat is neither published "
                       "nor counted")
                skips.add(ingest.Skipped(f"{source}:{line}", why), repeat=True)
                continue
            yield entry(line, written, ground_truth, split)

    return Manifest(source, PurePosixPath(source).stem, entries)


def _rows(source: str) -> Iterator[tuple[int, str, str, str]]:
    """``(line, uri, class, split)`` of each row, stripped; the CSV as a whole unreadable is a ManifestError."""
    try:
        with fsspec.open(source, "rt", encoding="utf-8-sig", newline="", **objectstore.options(source)) as f:
            reader = csv.reader(f, strict=True)  # an unclosed quote is an error, not the rest of the file
            header = [name.strip() for name in next(reader, [])]
            if "uri" not in header:
                raise ManifestError(f"{source}: no 'uri' column (columns: uri, optional class, split)")
            columns = [header.index(c) if c in header else None for c in ("uri", "class", "split")]
            for row in reader:
                if not row:  # a blank line, as csv.DictReader skips it
                    continue
                yield (reader.line_num, *((row[i].strip() if i is not None and i < len(row) else "")
                                          for i in columns))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: not a UTF-8 CSV file: {exc.reason}") from exc
    except csv.Error as exc:
        raise ManifestError(f"{source}: malformed CSV: {exc}") from exc
    except ManifestError:
        raise
    except Exception as exc:  # missing object, unreachable store, unknown protocol, driver not installed
        raise ManifestError(f"{source}: cannot read: {objectstore.describe(source, exc)}") from exc


def _uri_problem(written: str, uri: str, drivers: dict[str, str]) -> str:
    """Why a row's URI cannot name an object, or "" (whether the object exists is the labeler's question)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in written):
        return "unparseable: a control character in the uri"
    if not audio.is_url(uri):
        return ""
    try:
        protocol = urllib.parse.urlsplit(uri).scheme.lower()
    except ValueError as exc:
        return f"unparseable URL: {exc}"
    if protocol not in drivers:
        try:
            fsspec.get_filesystem_class(protocol)
            drivers[protocol] = ""
        except ImportError as exc:
            drivers[protocol] = f"protocol {protocol}:// is not installed ({exc})"
        except ValueError:
            drivers[protocol] = f"unknown protocol {protocol}://"
    return drivers[protocol]


class _Repeats:
    """The rows of a CSV whose key an earlier row already has, found on disk: every ``(line, key)`` goes into a
    SQLite table in a temporary folder, and a window over the keys sorted by SQLite's external sort (bounded
    cache, spilling to temporary files) gives each repeat with its first line. Reading them back in line order
    merges with a second pass over the CSV."""

    def __init__(self) -> None:
        self.indexed = False
        self._folder = tempfile.TemporaryDirectory(prefix="auditoryhum-manifest-")
        self._db = sqlite3.connect(os.path.join(self._folder.name, "keys.sqlite"), check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", "cache_size=-8192"):
            self._db.execute(f"PRAGMA {pragma}")

    def index(self, rows: Iterable[tuple[int, str]]) -> None:
        db = self._db
        db.execute("CREATE TABLE keys (line INTEGER, key TEXT)")
        rows = iter(rows)
        while batch := list(islice(rows, 10_000)):
            db.executemany("INSERT INTO keys VALUES (?, ?)", batch)
        db.execute("CREATE TABLE repeats AS SELECT line, first FROM "
                   "(SELECT line, MIN(line) OVER (PARTITION BY key) AS first FROM keys) WHERE line > first")
        db.execute("DROP TABLE keys")
        db.commit()
        self.indexed = True

    def lines(self) -> Iterator[tuple[int, int]]:
        """``(line, first line)`` of each repeat, by line."""
        return iter(self._db.execute("SELECT line, first FROM repeats ORDER BY line"))
