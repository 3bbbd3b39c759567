"""Reading label tables for `auditoryhum cluster`.

Accepted: a table with a ``label`` column and an optional ``count`` column (one row per unique label, or one per
clip), optionally ``ground_truth`` and ``score`` columns (a run's ``final_labels.csv`` has both); or a run's
``labels.csv``, whose ``labels`` column holds each clip's comma-separated labels.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from auditoryhum.labels import parse_labels


@dataclass
class LabelTable:
    counts: Counter[str] = field(default_factory=Counter)
    # One (clip id, label, ground truth) per clip when rows are clips; empty for unique labels with counts.
    clips: list[tuple[str, str, str]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def read_label_table(path: Path, max_words: int = 2) -> LabelTable:
    table = LabelTable()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or ())
        if not columns & {"label", "labels"}:
            raise ValueError(f"{path}: needs a 'label' (or a run's 'labels') column, found {sorted(columns)}")
        for line, row in enumerate(reader, start=2):
            if "label" in columns:
                labels = parse_labels(row["label"] or "", max_words)[:1]
                count = _count(row.get("count"), path, line) if "count" in columns else 1
            else:
                labels, count = parse_labels(row["labels"] or "", max_words), 1
            for label in labels:
                table.counts[label] += count
            if "count" not in columns and labels:
                table.clips.append((row.get("clip_id") or str(line), labels[0], (row.get("ground_truth") or "").strip()))
            if row.get("score"):
                table.scores.append(float(row["score"]))
    if not table.counts:
        raise ValueError(f"{path}: no usable labels")
    return table


def _count(value: str | None, path: Path, line: int) -> int:
    try:
        count = int(float(value or 1))
    except ValueError:
        raise ValueError(f"{path}:{line}: count {value!r} is not a number") from None
    if count < 1:
        raise ValueError(f"{path}:{line}: count must be at least 1, got {count}")
    return count
