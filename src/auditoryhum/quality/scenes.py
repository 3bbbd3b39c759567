"""How a run's broad scenes match a coarser grouping of the evaluation set's categories.

The coarse grouping is the top level of the AudioSet ontology (Gemmeke et al. 2017), which the categories' sounds
sit under: fixed here from the ontology, not fitted to any run. "harbour" is left out: its clips are gulls (Animal),
waves (Natural sounds) and a boat horn (Sounds of things), so no one top-level class is its own.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from auditoryhum.quality.truth import Truth
from auditoryhum.taxonomy.metrics import purity

SHUFFLES = 200
AUDIOSET_TOP = {
    "speech": "Human sounds", "crowd": "Human sounds", "footsteps": "Human sounds",
    "birdsong": "Animal", "farm": "Animal",
    "music": "Music",
    "water": "Natural sounds", "thunderstorm": "Natural sounds", "fire": "Natural sounds",
    "traffic": "Sounds of things", "aircraft": "Sounds of things", "train": "Sounds of things",
    "explosion": "Sounds of things", "gunfire": "Sounds of things", "construction": "Sounds of things",
    "alert": "Sounds of things",
}


def scene_row(folder: Path, truth: Truth) -> dict:
    """The scenes of the run in ``folder`` against the truth: their count, NMI and purity against the AudioSet top
    level (beside it: the fine clusters' NMI, and the mean NMI of the same scenes with the clusters dealt out at
    random, ``SHUFFLES`` times: what grouping by chance scores), how whole each category stays (the share of its clips in its most
    common scene, averaged over categories), and each scene's clips per category."""
    taxonomy = json.loads((folder / "taxonomy.json").read_text(encoding="utf-8"))
    category_of = truth.category_of()
    with (folder / "assignments.csv").open(newline="", encoding="utf-8") as f:
        rows = [(category_of.get(Path(r["path"]).resolve()), r["cluster_id"], r.get("scene_id", ""))
                for r in csv.DictReader(f)]
    rows = [(c, k, s) for c, k, s in rows if c is not None and k != ""]
    row = {"scenes": len(taxonomy.get("scenes", [])), "k": taxonomy.get("k"), "clips": len(rows),
           "scenes_note": taxonomy.get("scenes_note", "")}
    if not row["scenes"]:
        return row | {"nmi_top": None, "nmi_top_fine": None, "nmi_top_random": None, "purity_top": None,
                      "category_whole": None, "scene_categories": {}}
    coarse = [(AUDIOSET_TOP[c], k, s) for c, k, s in rows if c in AUDIOSET_TOP]
    top, fine, scenes = (list(col) for col in zip(*coarse))
    scene_of = {k: s for _, k, s in rows}
    clusters, rng = sorted(scene_of), np.random.default_rng(0)
    shuffled = [dict(zip(clusters, rng.permutation([scene_of[k] for k in clusters]))) for _ in range(SHUFFLES)]
    by_category: dict[str, Counter] = {}
    for c, _, s in rows:
        by_category.setdefault(c, Counter())[s] += 1
    spread: dict[str, Counter] = {}
    for c, _, s in rows:
        spread.setdefault(s, Counter())[c] += 1
    return row | {
        "nmi_top": float(normalized_mutual_info_score(top, scenes)),
        "nmi_top_fine": float(normalized_mutual_info_score(top, fine)),
        "nmi_top_random": float(np.mean([normalized_mutual_info_score(top, [s[k] for k in fine]) for s in shuffled])),
        "purity_top": purity(scenes, top),
        "category_whole": sum(max(n.values()) / sum(n.values()) for n in by_category.values()) / len(by_category),
        "scene_categories": {s: dict(n.most_common()) for s, n in sorted(spread.items(), key=lambda kv: int(kv[0]))},
    }
