"""An evaluation set's ground truth: ``truth.csv`` next to the audio, one row per clip.

Columns ``path`` (relative to the file's folder), ``category`` and ``description`` (the short text a scorer is
asked to match against the audio; one per category); any others (``source``, ``files``) are kept for people, not
read. Everything in it is untrusted text: a row that is not what it should be stops loading with a
:class:`TruthError` naming the file, line and problem, before anything runs.
"""

from __future__ import annotations

import csv
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REQUIRED = ("path", "category", "description")
MAX_TEXT = 100  # a category or description is a few words


class TruthError(ValueError):
    """A truth file that cannot be used; the message names the file (and line) at fault."""


@dataclass(frozen=True)
class Truth:
    root: Path  # the folder the paths are relative to (resolved)
    paths: tuple[Path, ...]  # each clip's file (resolved)
    categories: tuple[str, ...]  # each clip's category
    descriptions: dict[str, str]  # category → its description, in order of first appearance

    @property
    def names(self) -> list[str]:
        """The categories, in order of first appearance."""
        return list(self.descriptions)

    def category_of(self) -> dict[Path, str]:
        return dict(zip(self.paths, self.categories))


def _text(value: str | None, column: str, where: str) -> str:
    text = (value or "").strip()
    if not text:
        raise TruthError(f"{where}: empty {column}")
    if len(text) > MAX_TEXT:
        raise TruthError(f"{where}: {column} is longer than {MAX_TEXT} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        raise TruthError(f"{where}: {column} {text[:40]!r} has control characters")
    return text


def _clip_path(root: Path, written: str, where: str) -> Path:
    rel = PurePosixPath(written)
    if rel.is_absolute() or "\\" in written or ".." in rel.parts or Path(written).is_absolute():
        raise TruthError(f"{where}: path {written!r} must be relative to {root}, inside it")
    path = (root / rel).resolve()
    if not path.is_file():
        raise TruthError(f"{where}: {written!r} is not a file under {root}")
    return path


def load_truth(path: Path) -> Truth:
    path = Path(path)
    root = path.resolve().parent
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
            if missing:
                raise TruthError(f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(REQUIRED)})")
            paths, categories, descriptions = [], [], {}
            seen: dict[Path, int] = {}
            for line, row in enumerate(reader, start=2):
                where = f"{path}:{line}"
                if None in row or any(row[c] is None for c in REQUIRED):
                    raise TruthError(f"{where}: {len(reader.fieldnames)} columns expected")
                clip = _clip_path(root, row["path"].strip(), where)
                category = _text(row["category"], "category", where)
                description = _text(row["description"], "description", where)
                if clip in seen:
                    raise TruthError(f"{where}: {row['path'].strip()!r} is listed twice (line {seen[clip]})")
                if descriptions.setdefault(category, description) != description:
                    raise TruthError(f"{where}: category {category!r} is described as {description!r} here, "
                                     f"{descriptions[category]!r} before")
                seen[clip] = line
                paths.append(clip)
                categories.append(category)
    except FileNotFoundError:
        raise TruthError(f"{path}: missing (build the evaluation set: make eval)") from None
    except UnicodeDecodeError as exc:
        raise TruthError(f"{path}: not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise TruthError(f"{path}: not a CSV file: {exc}") from None
    if len(descriptions) < 2:
        raise TruthError(f"{path}: needs clips of at least 2 categories, found {len(descriptions)}")
    if len(set(descriptions.values())) < len(descriptions):  # a swap between them would measure nothing
        shared = [c for c, d in descriptions.items() if list(descriptions.values()).count(d) > 1]
        raise TruthError(f"{path}: categories {', '.join(shared)} share a description")
    return Truth(root, tuple(paths), tuple(categories), descriptions)
