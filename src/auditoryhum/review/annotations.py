"""The authors' human annotations, applied as review decisions.

Their supplementary data publishes one annotation file per dataset and labeler (``advance_qwen2a_labels_annotations
.csv`` …): a text file with one line per clip, in the order of the dataset's files sorted by name, blank where the
clip was not reviewed; a reviewed line holds the reviewer's labels, comma-separated pairs. Their scripts put each
reviewed line in place of the model's labels and score them again with CLAP, keeping the best pair (their
``util_merge_csv.py`` pads a shorter file with blank lines). Here each reviewed line becomes a *correct* decision
with that text (the review stage scores every pair and keeps the best), or, with ``action="relabel"``, a re-label
with the line as the reviewer's hint (their ``--annotations`` option of the labelers).

Everything is checked before anything is applied: a file with more lines than the dataset has clips, or a line
with no usable label, is refused with the file and line, and nothing is decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auditoryhum import ingest
from auditoryhum.labels import parse_labels
from auditoryhum.manifest import Manifest
from auditoryhum.v1 import pipeline_pb2 as pb

ACTIONS = {"correct": pb.REVIEW_ACTION_CORRECT, "relabel": pb.REVIEW_ACTION_RELABEL}


class AnnotationError(ValueError):
    """An annotation file that does not fit the dataset; the message names the file and line."""


@dataclass(frozen=True)
class Annotation:
    line: int
    clip_id: str
    path: str  # the clip's path under the dataset root, for messages
    text: str

    @property
    def task_id(self) -> str:
        return f"{self.clip_id}/review"  # the review stage's task of the clip

    def decision(self, action: str, reviewer: str) -> pb.ReviewDecision:
        code = ACTIONS[action]
        decision = pb.ReviewDecision(task_id=self.task_id, clip_id=self.clip_id, action=code, reviewer=reviewer)
        if code == pb.REVIEW_ACTION_CORRECT:
            decision.label = self.text
        else:
            decision.hint = self.text
        return decision


def read_annotations(path: Path, found: Manifest, dataset: str, max_words: int = 2) -> list[Annotation]:
    """The reviewed lines of ``path``, each matched to its clip of ``found`` (the dataset in the authors' order)."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not a UTF-8 text file: {exc.reason}") from None
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read: {exc.strerror or exc}") from None
    while lines and not lines[-1].strip():  # the authors' files end with a newline, some with blank lines
        lines.pop()
    entries = found.entries
    if len(lines) > len(entries):
        raise AnnotationError(f"{path}:{len(entries) + 1}: the file has {len(lines)} lines but the dataset "
                              f"{found.source} has {len(entries)} clips: an annotation file for other clips?")
    annotations = []
    for number, (text, entry) in enumerate(zip(lines, entries), start=1):
        text = text.strip()
        if not text:
            continue
        if not parse_labels(text, max_words):
            raise AnnotationError(f"{path}:{number}: {text[:80]!r} has no usable label (for {entry.key})")
        annotations.append(Annotation(number, ingest.clip_id(dataset, entry.key), entry.key, text))
    if not annotations:
        raise AnnotationError(f"{path}: no reviewed line (every line is blank)")
    return annotations


def check_pending(annotations: list[Annotation], pending: set[str], path: Path) -> None:
    """Refuse the whole file when an annotated clip has no pending review task."""
    for a in annotations:
        if a.task_id not in pending:
            raise AnnotationError(f"{path}:{a.line}: {a.path} has no pending review task (not selected for review, "
                                  f"decided already, or another dataset's clip); nothing was applied")
