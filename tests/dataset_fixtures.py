"""Small copies of the paper's datasets in their exact published layouts, made of real recordings (Debian's
lincity-ng and simutrans sounds) converted to each dataset's format: rate, width, channels and 10-s length."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from tests.conftest import LINCITY, SIMUTRANS

# A recording that sounds like each class, where one does.
TAU_CLIPS = [("street_traffic", "barcelona", LINCITY / "TraficHigh1.wav"), ("park", "helsinki", LINCITY / "Green1.wav"),
             ("street_traffic", "lisbon", LINCITY / "TraficLow1.wav"), ("bus", "london", SIMUTRANS / "bus.wav"),
             ("public_square", "lyon", LINCITY / "MarketFull1.wav"), ("park", "milan", LINCITY / "Green2.wav")]
ADVANCE_CLIPS = [("harbour", "00012", LINCITY / "Harbor1.wav"), ("forest", "00007", SIMUTRANS / "forest.wav"),
                 ("train station", "00301", LINCITY / "RailTrain1.wav"), ("farmland", "00150", LINCITY / "Farm1.wav"),
                 ("harbour", "00099", LINCITY / "Harbor2.wav")]
AHEAD_CLIPS = [("in_traffic", LINCITY / "TraficHigh2.wav"), ("music", LINCITY / "MarketMed1.wav"),
               ("in_traffic", LINCITY / "TraficLow2.wav"), ("in_vehicle", SIMUTRANS / "truck.wav"),
               ("quiet_indoors", LINCITY / "Health1.wav"), ("music", LINCITY / "MarketLow1.wav")]


def write_clip(source: Path, dest: Path, rate: int, channels: int, subtype: str, seconds: float = 10.0) -> Path:
    """``source`` resampled to ``rate``, repeated to ``seconds``, in ``channels`` channels and ``subtype``."""
    samples, source_rate = sf.read(source, dtype="float32", always_2d=True)
    mono = soxr.resample(samples.mean(axis=1), source_rate, rate)
    mono = np.resize(mono, int(seconds * rate)) * 0.9 / max(1e-6, float(np.abs(mono).max()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dest, np.repeat(mono[:, None], channels, axis=1), rate, subtype=subtype)
    return dest


def _tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def build_tau(parent: Path, year: int = 2019) -> Path:
    """TAU-urban-acoustic-scenes-2019-development/ (or the 2021 audio-visual one) with meta.csv and fold 1."""
    folder = parent / ("TAU-urban-acoustic-scenes-2019-development" if year == 2019
                       else "TAU-urban-audio-visual-scenes-2021-development")
    meta, train, evaluate = [], [], []
    for i, (scene, city, source) in enumerate(TAU_CLIPS):
        identifier = f"{city}-{100 + i}"
        device = "-a" if year == 2019 else ""  # 2019 names end with the recording device
        name = f"audio/{scene}-{identifier}-{i * 10}{device}.wav"
        write_clip(source, folder / name, 48_000, 2, "PCM_24")
        if year == 2019:
            meta.append([name, scene, identifier, "a"])
        else:
            meta.append([name, name.replace("audio/", "video/").replace(".wav", ".mp4"), scene, identifier])
        if city == "milan":
            continue  # the setup leaves some clips out
        (evaluate if i % 3 == 2 else train).append(meta[-1][:-2] if year == 2019 else meta[-1][:3])
    file_column = ["filename"] if year == 2019 else ["filename_audio", "filename_video"]
    _tsv(folder / "meta.csv", [*file_column, "scene_label", "identifier"] + (["source_label"] if year == 2019 else []),
         meta)
    (folder / "evaluation_setup").mkdir()
    _tsv(folder / "evaluation_setup/fold1_train.csv", [*file_column, "scene_label"], train)
    _tsv(folder / "evaluation_setup/fold1_evaluate.csv", [*file_column, "scene_label"], evaluate)
    _tsv(folder / "evaluation_setup/fold1_test.csv", file_column, [r[:len(file_column)] for r in evaluate])
    return folder


def build_advance(parent: Path) -> Path:
    """sound/<scene>/<id>.wav, as ADVANCE_sound.zip extracts."""
    for scene, clip_id, source in ADVANCE_CLIPS:
        write_clip(source, parent / "sound" / scene / f"{clip_id}.wav", 22_050, 1, "PCM_16")
    return parent


def build_ahead_ds(parent: Path) -> Path:
    """ahead_ds/ with <class>_<NNNNN>.wav and the four CSVs (files + one 0/1 column per class)."""
    from auditoryhum.datasets.ahead import CLASSES

    folder = parent / "ahead_ds"
    rows, counters = [], {}
    for cls, source in AHEAD_CLIPS:
        n = counters[cls] = counters.get(cls, -1) + 1
        name = f"{cls}_{n:05d}.wav"
        write_clip(source, folder / name, 16_000, 1, "PCM_16")
        rows.append([name, *("1" if c == cls else "0" for c in CLASSES)])
    header = ["files", *CLASSES]
    parts = {"all": rows, "training": rows[0::3] + rows[1::3], "validation": [], "testing": rows[2::3]}
    for part, part_rows in parts.items():
        with (folder / f"ahead_ds_{part}.csv").open("w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(part_rows)
    return folder
