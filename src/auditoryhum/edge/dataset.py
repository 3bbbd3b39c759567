"""A run folder → the recogniser's training set: classes, clips, and a split by source recording.

Classes are the taxonomy's clusters (taxonomy.json) that have clips, named by their composite labels. Clips are the
rows of assignments.csv with a cluster: a clip a reviewer marked unusable has no final label (the review stage
removes it), so it is neither in final_labels.csv nor in assignments.csv and never reaches training.

Train, validation and test are split by *recording*, so no recording has clips on two sides (cuts of one recording
sound alike: a split by clip would grade the model on what it trained on). A clip's recording is its file name
without the extension and a trailing take or cut index (``TraficHigh2.wav``, ``crowd05.wav``, ``rain_3.flac`` →
``trafichigh``, ``crowd``, ``rain``), lower-cased; a mix named ``A_over_B`` (scripts/make_demo_set.py) is one
recording with both A and B. Recordings are split per class (by their clips' majority cluster) with a seed.

A cluster with fewer than ``min_clips`` clips (a taxonomy's long tail of one- and two-clip clusters) cannot be
learned nor graded: it is left out with its clips and listed in ``TrainingSet.left_out``.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from auditoryhum.audio import local_path
from auditoryhum.edge.errors import EdgeError

SPLITS = ("train", "val", "test")
_CUT_INDEX = re.compile(r"[\s_.-]*\d+$")
SHOW_MISSING = 5  # missing clips named in the error


@dataclass(frozen=True)
class Clip:
    clip_id: str
    path: str
    label: int  # index into TrainingSet.classes
    recording: str


@dataclass
class TrainingSet:
    run: str
    classes: list[dict]  # {"index", "cluster_id", "composite_label", "size"} per class, index order
    clips: list[Clip]
    split: dict[str, list[int]]  # split name → indexes into clips
    missing: list[str] = field(default_factory=list)  # paths left out with skip_missing
    left_out: list[dict] = field(default_factory=list)  # clusters under min_clips: cluster_id, composite_label, size
    taxonomy: dict = field(default_factory=dict)  # version, k

    def clips_of(self, split: str) -> list[Clip]:
        return [self.clips[i] for i in self.split[split]]

    def counts(self, split: str) -> np.ndarray:
        return np.bincount([c.label for c in self.clips_of(split)], minlength=len(self.classes))


def recording_of(path: str) -> str:
    """The recording a clip was cut from, from its file name (see the module's docstring)."""
    stem = Path(path).name.rsplit(".", 1)[0] if "." in Path(path).name else Path(path).name
    key = stem
    while _CUT_INDEX.search(key) and _CUT_INDEX.sub("", key):  # "Rain2_03" → "Rain"
        key = _CUT_INDEX.sub("", key)
    return key.lower()


def _recordings(paths: list[str]) -> list[str]:
    """Each path's recording group: the parts of a mix ``A_over_B`` join one group (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    parts = []
    for path in paths:
        stem = Path(path).name.rsplit(".", 1)[0]
        keys = [recording_of(p) for p in stem.split("_over_")] if "_over_" in stem else [recording_of(path)]
        for key in keys[1:]:
            parent[find(key)] = find(keys[0])
        parts.append(keys[0])
    return [find(k) for k in parts]


def load(run: str | Path, *, skip_missing: bool = False, seed: int = 0, min_clips: int = 4,
         fractions: tuple[float, float] = (0.15, 0.15)) -> TrainingSet:
    """The training set of a run's output folder. ``fractions``: the share of each class's recordings in
    validation and test. Raises :class:`EdgeError` for a folder without a taxonomy, fewer than two classes with
    clips, or clips whose files are gone (unless ``skip_missing``)."""
    run = Path(run)
    taxonomy = _read_taxonomy(run)
    clusters = {int(c["id"]): c for c in taxonomy.get("clusters", [])}
    rows = _read_assignments(run)
    rows = [r for r in rows if r["cluster_id"] not in ("", None) and int(r["cluster_id"]) in clusters]
    paths = {r["clip_id"]: local_path(r["path"]) or r["path"] for r in rows}
    gone = [p for p in paths.values() if not Path(p).is_file()]
    if gone and not skip_missing:
        raise EdgeError(f"{len(gone)} of {len(rows)} clips in {run / 'assignments.csv'} no longer exist (first: "
                        f"{', '.join(gone[:SHOW_MISSING])}); restore them, or train without them (--skip-missing)")
    gone_set = set(gone)
    rows = [r for r in rows if paths[r["clip_id"]] not in gone_set]

    sizes = Counter(int(r["cluster_id"]) for r in rows)
    kept = sorted(cid for cid in sizes if sizes[cid] >= min_clips)  # in cluster id order
    if len(kept) < 2:
        raise EdgeError(f"{run / 'taxonomy.json'}: {len(clusters)} cluster(s), {len(kept)} with {min_clips} or more "
                        "clips; a recogniser needs at least two classes: rebuild the taxonomy with more clips or a "
                        "larger --k-min, or lower --min-clips")
    left_out = [{"cluster_id": cid, "composite_label": clusters[cid]["composite_label"], "size": sizes[cid]}
                for cid in sorted(sizes) if sizes[cid] < min_clips]
    rows = [r for r in rows if int(r["cluster_id"]) in set(kept)]
    index = {cid: i for i, cid in enumerate(kept)}
    classes = [{"index": i, "cluster_id": cid, "composite_label": clusters[cid]["composite_label"],
                "size": sizes[cid]} for i, cid in enumerate(kept)]
    recordings = _recordings([paths[r["clip_id"]] for r in rows])
    clips = [Clip(r["clip_id"], paths[r["clip_id"]], index[int(r["cluster_id"])], rec)
             for r, rec in zip(rows, recordings)]
    return TrainingSet(str(run), classes, clips, split_by_recording(clips, len(classes), seed, fractions), gone,
                       left_out, {"version": taxonomy.get("version"), "k": taxonomy.get("k")})


def split_by_recording(clips: list[Clip], n_classes: int, seed: int,
                       fractions: tuple[float, float] = (0.15, 0.15)) -> dict[str, list[int]]:
    """Indexes of train/val/test clips; each recording's clips all go to one side. Per class (a recording's
    majority label), its shuffled recordings go to test, then validation, then train: with three or more
    recordings each side gets one at least, with two test and train do, with one only train."""
    by_recording: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_recording[clip.recording].append(i)
    by_class: dict[int, list[str]] = defaultdict(list)
    for rec, members in sorted(by_recording.items()):
        majority = Counter(clips[i].label for i in members).most_common(1)[0][0]
        by_class[majority].append(rec)
    rng = np.random.default_rng(seed)
    split: dict[str, list[int]] = {name: [] for name in SPLITS}
    for label in range(n_classes):
        recs = list(by_class.get(label, []))
        rng.shuffle(recs)
        n = len(recs)
        n_test = max(1, round(n * fractions[1])) if n >= 2 else 0
        n_val = max(1, round(n * fractions[0])) if n >= 3 else 0
        for j, rec in enumerate(recs):
            side = "test" if j < n_test else "val" if j < n_test + n_val else "train"
            split[side].extend(by_recording[rec])
    return {name: sorted(ix) for name, ix in split.items()}


def _read_taxonomy(run: Path) -> dict:
    path = run / "taxonomy.json"
    if not run.is_dir():
        raise EdgeError(f"{run}: not a folder; give the --out folder of `auditoryhum run`")
    if not path.is_file():
        raise EdgeError(f"{path}: not found; RUN_OUT must be the --out folder of a finished `auditoryhum run` "
                        "(it writes taxonomy.json once the taxonomy is built)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise EdgeError(f"{path}: not readable as JSON ({exc})") from None


def _read_assignments(run: Path) -> list[dict]:
    path = run / "assignments.csv"
    if not path.is_file():
        raise EdgeError(f"{path}: not found; the run did not finish (it writes assignments.csv with taxonomy.json)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"clip_id", "path", "cluster_id"} <= set(rows[0]):
        raise EdgeError(f"{path}: needs the columns clip_id, path, cluster_id")
    return rows
