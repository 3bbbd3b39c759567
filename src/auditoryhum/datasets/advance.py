"""ADVANCE (Zenodo 3828124), the sound half: ``ADVANCE_sound.zip`` extracts to

    sound/<scene>/<id>.wav        13 scene folders; 5 075 clips of 10 s, ids unique across scenes

The scene folder is each clip's ground truth. The dataset publishes no split.
"""

from __future__ import annotations

from pathlib import Path

from auditoryhum.audio import AUDIO_EXTENSIONS
from auditoryhum.datasets._common import DatasetLayoutError, find_root, manifest
from auditoryhum.manifest import Entry, Manifest

SCENES = ("airport", "beach", "bridge", "farmland", "forest", "grassland", "harbour", "lake", "orchard", "residential",
          "sparse shrub land", "sports land", "train station")


def load_advance(root: Path) -> Manifest:
    root = Path(root)
    sound = root if root.name == "sound" and root.is_dir() else find_root(root, "sound", "sound", "ADVANCE") / "sound"
    entries = []
    for item in sorted(sound.iterdir()):
        if item.name.startswith("."):
            continue
        if item.is_file():
            raise DatasetLayoutError(f"{item}: a file directly in sound/; ADVANCE keeps each clip in its scene's "
                                     f"folder (extract the zip with its folders, not flattened)")
        if item.name not in SCENES:
            raise DatasetLayoutError(f"{item}: {item.name!r} is not one of ADVANCE's 13 scenes")
        for path in sorted(item.iterdir()):
            if path.suffix.lower() in AUDIO_EXTENSIONS:
                entries.append(Entry(str(path.resolve()), path.relative_to(sound.parent).as_posix(), item.name))
    if not entries:
        raise DatasetLayoutError(f"{sound}: no clips in any scene folder")
    return manifest("advance", sound.parent, entries)
