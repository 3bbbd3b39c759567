"""Dataset manifests: the clips of a local folder, a CSV of URIs, or an object-store prefix (fsspec), in one
deterministic order, so that N ingest processes each publish a disjoint shard and together every clip once.

- **Folder** (``data/birds``): every audio file below it, sorted by path (what `ingest` always did).
- **CSV** (``birds.csv``, or a URL ending in ``.csv``): a ``uri`` column (a path or URL, absolute or relative to
  the CSV's own folder) and optional ``class`` (ground truth) and ``split`` columns; rows in file order, taken as
  given.
- **Prefix** (``s3://bucket/birds/``, ``gs://…``, ``file:///data/birds``, ``memory://birds``): every audio object
  below it, sorted by key. Other protocols need their fsspec driver installed (s3fs, gcsfs).

Clip ids are :func:`auditoryhum.ingest.clip_id` of the dataset and the clip's path relative to the dataset root,
so a clip keeps its id when ingested again, and when its folder is copied to an object store. A CSV row's key is
its ``uri`` as written (relative paths normalised): a CSV of relative paths at a folder's root gives that
folder's ids.

Sharding is round-robin: shard ``i`` of ``N`` holds the entries whose position ``p`` has ``p mod N == i``.
Folders and prefixes are usually sorted class by class; interleaving gives every shard a similar mix and size.
"""

from __future__ import annotations

import csv
import posixpath
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

import fsspec

from auditoryhum import audio, ingest, objectstore
from auditoryhum.v1 import pipeline_pb2 as pb


class ManifestError(ValueError):
    """A dataset source that cannot be listed, with the reason."""


@dataclass(frozen=True)
class Entry:
    uri: str  # where the stages read the audio: an absolute path or a URL
    key: str  # the clip id's input: the path relative to the dataset root
    ground_truth: str = ""
    split: str = ""


@dataclass
class Manifest:
    source: str
    name: str  # the default dataset name
    entries: list[Entry] = field(default_factory=list)
    skipped: list[ingest.Skipped] = field(default_factory=list)  # with the reason, never silently ignored

    def shard(self, index: int, count: int) -> list[Entry]:
        if count < 1 or not 0 <= index < count:
            raise ManifestError(f"shard index {index} is not in 0..{count - 1}")
        return self.entries[index::count]

    def clips(self, dataset: str, entries: list[Entry] | None = None) -> Iterator[pb.Clip]:
        for entry in self.entries if entries is None else entries:
            yield ingest.clip(dataset, entry.key, entry.uri, ground_truth=entry.ground_truth, split=entry.split)


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
    found = ingest.scan(root)
    entries = []
    for path in found.files:
        key = path.relative_to(root).as_posix()
        entries.append(Entry(audio.path_uri(path.resolve()), key, _folder_class(key, class_from_folder)))
    return Manifest(str(root), root.resolve().name, entries, found.skipped)


def _prefix(url: str, class_from_folder: bool) -> Manifest:
    try:
        fs, root = fsspec.core.url_to_fs(url, **objectstore.options(url))
        root = root.rstrip("/")
        paths = sorted(fs.find(root, withdirs=False)) if fs.isdir(root) else None
        if paths is None:
            objectstore.check_bucket(fs, url)
    except Exception as exc:  # unreachable store, no bucket, refused, unknown protocol, driver not installed
        raise ManifestError(f"{url}: cannot list: {objectstore.describe(url, exc)}") from exc
    if paths is None:
        raise ManifestError(f"{url}: no such prefix (or it holds no objects)")
    manifest = Manifest(url, PurePosixPath(root).name or "dataset")
    # Local objects as percent-encoded file:// URLs, which audio.load decodes back to the name's bytes.
    uri_of = audio.file_url if "file" in fs.protocol else fs.unstrip_protocol
    for path in paths:
        key = posixpath.relpath(path, root)
        if any(part.startswith(".") for part in PurePosixPath(key).parts):
            manifest.skipped.append(ingest.Skipped(uri_of(path), "hidden (a name on its path starts with '.')"))
        elif PurePosixPath(key).suffix.lower() in audio.AUDIO_EXTENSIONS:
            manifest.entries.append(Entry(uri_of(path), key, _folder_class(key, class_from_folder)))
        else:
            manifest.skipped.append(ingest.Skipped(uri_of(path), "no audio extension"))
    return manifest


def _csv(source: str) -> Manifest:
    remote = audio.is_url(source)
    folder = source.rsplit("/", 1)[0] if remote else str(Path(source).resolve().parent)
    manifest = Manifest(source, PurePosixPath(source).stem)
    seen: dict[str, int] = {}
    try:
        with fsspec.open(source, "rt", encoding="utf-8-sig", newline="", **objectstore.options(source)) as f:
            reader = csv.DictReader(f)
            if "uri" not in (reader.fieldnames or ()):
                raise ManifestError(f"{source}: no 'uri' column (columns: uri, optional class, split)")
            for row in reader:
                line = reader.line_num
                written = (row.get("uri") or "").strip()
                if not written:
                    raise ManifestError(f"{source}:{line}: empty uri")
                if audio.is_url(written) or PurePosixPath(written).is_absolute():
                    key = uri = written
                else:
                    key = posixpath.normpath(written)
                    uri = f"{folder}/{key}" if remote else str(Path(folder, key).resolve())
                if key in seen:  # the same clip id twice: the dataset's count would be wrong
                    raise ManifestError(f"{source}:{line}: {written} is listed twice (first on line {seen[key]})")
                seen[key] = line
                manifest.entries.append(Entry(uri, key, (row.get("class") or "").strip(),
                                              (row.get("split") or "").strip()))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: not a UTF-8 CSV file: {exc.reason}") from exc
    except csv.Error as exc:
        raise ManifestError(f"{source}: malformed CSV: {exc}") from exc
    except ManifestError:
        raise
    except Exception as exc:  # missing object, unreachable store, unknown protocol, driver not installed
        raise ManifestError(f"{source}: cannot read: {objectstore.describe(source, exc)}") from exc
    return manifest
