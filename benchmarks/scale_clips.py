"""The scale benchmark's clips: 1-s cuts of the evaluation set's real recordings, each in its recording's category.

    python benchmarks/scale_clips.py data/scale --clips 100000 --more 10000

The recordings are those of ``scripts/make_eval_set.py`` (17 categories from Debian packages), rendered once with
its sox commands, decoded to 16 kHz mono and kept in memory. Clip ``i`` of a set takes category ``i mod 17`` (so
the categories are balanced), a recording of it in turn, a 1-s window at an offset and a gain drawn from a seed of
(set, i): deterministic, so a cache built for 100,000 clips also serves any smaller run. YAMNet's window is
0.975 s, so a clip is one model patch: the benchmark measures the pipeline around the model, not the model.

Layout: ``DIR/<set>/<category>/<set>-<i>.wav`` (16-bit, 16 kHz), and ``DIR/<set>-<n>.csv``, the first ``n`` clips
of a set as an ingest manifest (``uri``, ``class``). ``DIR/<set>.built`` records how many clips of the set exist.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from functools import cache
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
RATE = 16_000
CLIP_S = 1.0
AUDIBLE = 1e-3  # a window's peak at least -60 dBFS
VERSION = 2  # bump when the clips a seed gives change, so an old cache is rebuilt
SEEDS = {"main": 0, "more": 1}


@dataclass(frozen=True)
class Recording:
    category: str
    name: str
    samples: np.ndarray  # mono float32 at RATE, at least CLIP_S long


@cache
def recordings() -> list[Recording]:
    """The evaluation set's recordings, rendered by its own script (same packages, same bytes) into memory."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_eval_set as ev

    from auditoryhum import audio

    ev.check_installed()
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for category, (_, sources) in ev.CATEGORIES.items():
            taken: set[str] = set()
            for i, src in enumerate(sources):
                taken.add(name := ev.clip_name(src, i, taken))
                dest = Path(tmp) / f"{category}-{name}.wav"
                ev.render(src, dest, Path(tmp))
                samples = audio.load(dest, RATE).samples
                if len(samples) >= CLIP_S * RATE:
                    found.append(Recording(category, name, samples.astype(np.float32)))
    return found


def cut(by_category: dict[str, list[Recording]], set_name: str, i: int) -> tuple[str, np.ndarray]:
    """Clip ``i`` of ``set_name``: its category and samples."""
    categories = sorted(by_category)
    category = categories[i % len(categories)]
    recs = by_category[category]
    rec = recs[(i // len(categories)) % len(recs)]
    rng = np.random.default_rng([VERSION, SEEDS[set_name], i])
    n = int(CLIP_S * RATE)
    for _ in range(20):  # a window of digital silence would be a dead letter ("silent"), not a clip
        start = int(rng.integers(0, len(rec.samples) - n + 1))
        if np.abs(rec.samples[start:start + n]).max() >= AUDIBLE:
            break
    gain = 10 ** (rng.uniform(-9.0, 0.0) / 20)  # distinct bytes even where a recording has one window
    clip = rec.samples[start:start + n] * gain
    return category, np.clip(clip, -1.0, 1.0)


def relative(set_name: str, category: str, i: int) -> str:
    return f"{set_name}/{category}/{set_name}-{i:06d}.wav"


def built(folder: Path, set_name: str) -> int:
    marker = folder / f"{set_name}.built"
    if not marker.exists():
        return 0
    state = json.loads(marker.read_text())
    return state["clips"] if state.get("version") == VERSION else 0


def ensure(folder: Path, set_name: str, count: int, threads: int = 2) -> Path:
    """At least ``count`` clips of ``set_name`` on disk (only the missing ones are written); returns the manifest
    of its first ``count``."""
    have = built(folder, set_name)
    if have < count:
        recs = recordings()
        by_category: dict[str, list[Recording]] = {}
        for rec in recs:
            by_category.setdefault(rec.category, []).append(rec)
        if missing := set(categories_of(len(by_category) + 17)) - set(by_category):
            sys.exit(f"no recording of at least {CLIP_S:g} s in: {', '.join(sorted(missing))}")
        for category in by_category:
            (folder / set_name / category).mkdir(parents=True, exist_ok=True)

        def write(i: int) -> None:
            category, samples = cut(by_category, set_name, i)
            sf.write(folder / relative(set_name, category, i), samples, RATE, subtype="PCM_16")

        with ThreadPoolExecutor(threads) as pool:  # libsndfile writes outside the GIL
            for _ in pool.map(write, range(have, count), chunksize=256):
                pass
        (folder / f"{set_name}.built").write_text(json.dumps({"version": VERSION, "clips": count,
                                                              "recordings": len(recs),
                                                              "categories": len(by_category)}))
    return manifest(folder, set_name, count)


def categories_of(count: int) -> list[str]:
    """The category of each of the first ``count`` clips of a set, without decoding anything."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_eval_set as ev

    names = sorted(ev.CATEGORIES)
    return [names[i % len(names)] for i in range(count)]


def manifest(folder: Path, set_name: str, count: int) -> Path:
    path = folder / f"{set_name}-{count}.csv"
    if not path.exists():
        with path.open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["uri", "class"])
            for i, category in enumerate(categories_of(count)):
                writer.writerow([relative(set_name, category, i), category])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--clips", type=int, default=100_000)
    parser.add_argument("--more", type=int, default=10_000)
    args = parser.parse_args()
    for set_name, count in (("main", args.clips), ("more", args.more)):
        print(ensure(args.folder, set_name, count))


if __name__ == "__main__":
    main()
