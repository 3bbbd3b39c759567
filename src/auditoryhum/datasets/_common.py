"""What the published-dataset loaders share: the error they raise, CSV reading with line numbers, and the
manifest they build."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from auditoryhum.manifest import Entry, Manifest, ManifestError


class DatasetLayoutError(ManifestError):
    """A folder that is not the published dataset (wrong layout, a partial download, a bad metadata row)."""


def find_root(root: Path, marker: str, folder_name: str, dataset: str) -> Path:
    """The dataset folder: ``root`` itself when it holds ``marker``, else its ``folder_name`` child (the folder the
    published archives extract to)."""
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: no such folder")
    for candidate in (root, root / folder_name):
        if (candidate / marker).exists():
            return candidate
    raise DatasetLayoutError(f"{root}: not the {dataset} layout: no {marker} here or in {folder_name}/")


def rows(path: Path, columns: tuple[str, ...], delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a CSV with a header holding at least ``columns``; a missing column names the file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise DatasetLayoutError(f"{path}: no {', '.join(missing)} column (header: "
                                         f"{delimiter.join(reader.fieldnames or ()) or 'empty'})")
            for row in reader:
                yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}
    except UnicodeDecodeError as exc:
        raise DatasetLayoutError(f"{path}: not a UTF-8 text file: {exc.reason}") from exc
    except csv.Error as exc:
        raise DatasetLayoutError(f"{path}: malformed CSV: {exc}") from exc


def audio_file(root: Path, written: str, where: str) -> Path:
    """The audio file a metadata row names, which must exist below ``root``; ``where`` is "file:line"."""
    if not written:
        raise DatasetLayoutError(f"{where}: no file name")
    path = root / written
    if ".." in Path(written).parts or Path(written).is_absolute():
        raise DatasetLayoutError(f"{where}: {written} is outside the dataset folder")
    if not path.is_file():
        raise DatasetLayoutError(f"{where}: names {written}, which is not in {root} (a partial download?)")
    return path


def manifest(name: str, root: Path, entries: list[Entry]) -> Manifest:
    """Entries in the authors' order: sorted by file name (their scripts move every file into one folder and glob
    it), which is also the row order of their published label and annotation files."""
    entries = sorted(entries, key=lambda e: (Path(e.key).name, e.key))
    names = [Path(e.key).name for e in entries]
    for a, b in zip(names, names[1:]):
        if a == b:
            raise DatasetLayoutError(f"{root}: two files named {a}; the authors' flat layout needs unique names")
    return Manifest(str(root), name, entries)
