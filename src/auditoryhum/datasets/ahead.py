"""AHEAD-DS (Hugging Face ``hzhongresearch/ahead_ds``): one folder holding every clip and the CSVs that describe
them:

    <class>_<NNNNN>.wav           10 s, 16 kHz, 16-bit, mono
    ahead_ds_all.csv              files, then one 0/1 column per class (14)
    ahead_ds_training.csv, ahead_ds_validation.csv, ahead_ds_testing.csv    the same columns, one split each

Every row must name a present file and exactly one class; the split comes from the three split files.
"""

from __future__ import annotations

from pathlib import Path

from auditoryhum.datasets._common import DatasetLayoutError, audio_file, find_root, manifest, rows
from auditoryhum.manifest import Entry, Manifest

CLASSES = ("cocktail_party", "interfering_speakers", "in_traffic", "in_vehicle", "music", "quiet_indoors",
           "reverberant_environment", "wind_turbulence", "speech_in_traffic", "speech_in_vehicle", "speech_in_music",
           "speech_in_quiet_indoors", "speech_in_reverberant_environment", "speech_in_wind_turbulence")
SPLITS = {"training": "train", "validation": "validation", "testing": "test"}


def load_ahead_ds(root: Path) -> Manifest:
    root = find_root(Path(root), "ahead_ds_all.csv", "ahead_ds", "AHEAD-DS")
    split_of: dict[str, str] = {}
    for part, split in SPLITS.items():
        path = root / f"ahead_ds_{part}.csv"
        if not path.is_file():
            raise DatasetLayoutError(f"{root}: no ahead_ds_{part}.csv")
        for line, row in rows(path, ("files",)):
            if row["files"] in split_of:
                raise DatasetLayoutError(f"{path}:{line}: {row['files']} is in two splits")
            split_of[row["files"]] = split
    table = root / "ahead_ds_all.csv"
    entries = []
    for line, row in rows(table, ("files", *CLASSES)):
        where = f"{table}:{line}"
        path = audio_file(root, row["files"], where)
        marked = [c for c in CLASSES if row[c] == "1"]
        if len(marked) != 1 or any(row[c] not in ("0", "1") for c in CLASSES):
            raise DatasetLayoutError(f"{where}: {row['files']} must have exactly one class column set to 1")
        entries.append(Entry(str(path.resolve()), row["files"], marked[0], split_of.get(row["files"], "")))
    if not entries:
        raise DatasetLayoutError(f"{table}: lists no clips")
    return manifest("ahead-ds", root, entries)
