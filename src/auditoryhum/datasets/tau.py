"""TAU Urban Acoustic Scenes 2019 and TAU Urban Audio-Visual Scenes 2021, development sets (Zenodo 2589280 and
4477542), as their zips extract:

    TAU-urban-acoustic-scenes-2019-development/
        audio/<scene>-<city>-<location>-<segment>-<device>.wav    10 s, 48 kHz, 24-bit, stereo
        meta.csv                      tab-separated: filename, scene_label, identifier, source_label
        evaluation_setup/fold1_train.csv, fold1_evaluate.csv, fold1_test.csv

    TAU-urban-audio-visual-scenes-2021-development/
        audio/<scene>-<city>-<location>-<segment>.wav, video/…
        meta.csv                      tab-separated: filename_audio, filename_video, scene_label, identifier
        evaluation_setup/fold1_train.csv, fold1_evaluate.csv, fold1_test.csv

Every clip in ``meta.csv`` must be present (the audio comes in 21 or 8 zips: a missing one is an error, not a
smaller dataset). Its ground truth is ``scene_label``; its split is ``train`` or ``evaluate`` from fold 1 of
``evaluation_setup`` (``fold1_test.csv`` lists the evaluate clips without labels), empty for the clips the setup
leaves out.
"""

from __future__ import annotations

from pathlib import Path

from auditoryhum.datasets._common import DatasetLayoutError, audio_file, find_root, manifest, rows
from auditoryhum.manifest import Entry, Manifest

SCENES = ("airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall", "street_pedestrian",
          "street_traffic", "tram")


def load_tau2019(root: Path) -> Manifest:
    return _load(root, "TAU-urban-acoustic-scenes-2019-development", "tau2019", "filename")


def load_tau2021(root: Path) -> Manifest:
    return _load(root, "TAU-urban-audio-visual-scenes-2021-development", "tau2021", "filename_audio")


def _load(root: Path, folder: str, name: str, file_column: str) -> Manifest:
    root = find_root(Path(root), "meta.csv", folder, folder)
    meta = root / "meta.csv"
    splits = _splits(root, file_column)
    entries = []
    for line, row in rows(meta, (file_column, "scene_label", "identifier"), delimiter="\t"):
        where = f"{meta}:{line}"
        path = audio_file(root, row[file_column], where)
        if row["scene_label"] not in SCENES:
            raise DatasetLayoutError(f"{where}: scene_label {row['scene_label']!r} is not one of the ten scenes")
        entries.append(Entry(str(path.resolve()), row[file_column], row["scene_label"],
                             splits.pop(row[file_column], "")))
    if not entries:
        raise DatasetLayoutError(f"{meta}: lists no clips")
    if splits:  # the setup names clips meta.csv does not: two different datasets mixed up
        stray = next(iter(splits))
        raise DatasetLayoutError(f"{root / 'evaluation_setup'}: lists {stray}, which meta.csv does not")
    return manifest(name, root, entries)


def _splits(root: Path, file_column: str) -> dict[str, str]:
    setup = root / "evaluation_setup"
    found: dict[str, str] = {}
    for split in ("train", "evaluate"):
        path = setup / f"fold1_{split}.csv"
        if not path.is_file():
            raise DatasetLayoutError(f"{root}: no evaluation_setup/fold1_{split}.csv")
        # The setup files name the audio as "filename" in both releases.
        column = "filename" if file_column == "filename" else _setup_column(path)
        for line, row in rows(path, (column,), delimiter="\t"):
            if row[column] in found:
                raise DatasetLayoutError(f"{path}:{line}: {row[column]} is also in fold1_{found[row[column]]}.csv")
            found[row[column]] = split
    return found


def _setup_column(path: Path) -> str:
    header = path.open(encoding="utf-8-sig").readline().rstrip("\r\n").split("\t")
    return "filename_audio" if "filename_audio" in header else "filename"
