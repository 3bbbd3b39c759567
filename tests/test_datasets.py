"""The paper's datasets read exactly as published, on small copies in each exact layout made of real recordings
(tests/dataset_fixtures.py); bad folders fail before anything runs, naming the file and row."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from auditoryhum import datasets
from auditoryhum.audio import load
from auditoryhum.cli import app
from auditoryhum.datasets import DatasetLayoutError
from tests import dataset_fixtures as fx


def names(manifest) -> list[str]:
    return [Path(e.key).name for e in manifest.entries]


@pytest.mark.parametrize("year, layout", [(2019, "tau2019"), (2021, "tau2021")])
def test_tau_development_sets(tmp_path, year, layout):
    folder = fx.build_tau(tmp_path, year)
    for source in (folder, tmp_path):  # the dataset folder, or the folder the zips were extracted in
        found = datasets.load(str(source), layout)
        assert found.name == layout and len(found.entries) == len(fx.TAU_CLIPS)
        assert names(found) == sorted(names(found))  # the authors' order: by file name
        by_scene = {Path(e.key).name.split("-")[0]: e for e in found.entries}
        assert {e.ground_truth for e in found.entries} == {scene for scene, _, _ in fx.TAU_CLIPS}
        assert all(Path(e.key).name.startswith(e.ground_truth + "-") for e in found.entries)
        splits = {Path(e.key).name.split("-")[1]: e.split for e in found.entries}
        assert splits == {"barcelona": "train", "helsinki": "train", "lisbon": "evaluate", "london": "train",
                          "lyon": "train", "milan": ""}
        assert by_scene["bus"].key.startswith("audio/")
    info = sf.info(found.entries[0].uri)
    assert (info.samplerate, info.channels, info.subtype, round(info.duration)) == (48_000, 2, "PCM_24", 10)
    clip = load(found.entries[0].uri, 16_000)
    assert clip.samples.ndim == 1 and abs(len(clip.samples) - 160_000) <= 1


def test_advance_sound(tmp_path):
    fx.build_advance(tmp_path)
    for source in (tmp_path, tmp_path / "sound"):
        found = datasets.load(str(source), "advance")
        assert names(found) == ["00007.wav", "00012.wav", "00099.wav", "00150.wav", "00301.wav"]
        assert [e.ground_truth for e in found.entries] == ["forest", "harbour", "harbour", "farmland", "train station"]
        assert found.entries[-1].key == "sound/train station/00301.wav" and not any(e.split for e in found.entries)


def test_ahead_ds(tmp_path):
    folder = fx.build_ahead_ds(tmp_path)
    found = datasets.load(str(tmp_path), "ahead-ds")
    assert names(found) == sorted(f"{c}_0000{n}.wav" for c, n in [("in_traffic", 0), ("music", 0), ("in_traffic", 1),
                                                                 ("in_vehicle", 0), ("quiet_indoors", 0), ("music", 1)])
    assert all(Path(e.key).name.rsplit("_", 1)[0] == e.ground_truth for e in found.entries)
    split = {Path(e.key).name: e.split for e in found.entries}
    assert split["in_traffic_00001.wav"] == "test" and split["in_traffic_00000.wav"] == "train"
    info = sf.info(folder / "music_00000.wav")
    assert (info.samplerate, info.channels, info.subtype, round(info.duration)) == (16_000, 1, "PCM_16", 10)


def test_bad_folders_fail_naming_the_file_and_row(tmp_path):
    tau = fx.build_tau(tmp_path / "a")
    with pytest.raises(DatasetLayoutError, match="not the TAU-urban-acoustic-scenes-2019-development layout"):
        datasets.load(str(tau / "audio"), "tau2019")  # the wrong folder
    with pytest.raises(DatasetLayoutError, match="not the AHEAD-DS layout"):
        datasets.load(str(tau), "ahead-ds")  # the wrong layout for this folder
    missing = sorted((tau / "audio").iterdir())[3]
    missing.unlink()  # one zip not extracted
    line = 1 + next(i for i, row in enumerate(csv.reader((tau / "meta.csv").open(), delimiter="\t"))
                    if row[0] == f"audio/{missing.name}")
    with pytest.raises(DatasetLayoutError, match=rf"meta.csv:{line}: names audio/{missing.name}, which is not in"):
        datasets.load(str(tau), "tau2019")

    tau = fx.build_tau(tmp_path / "b")
    with (tau / "evaluation_setup/fold1_train.csv").open("a") as f:
        f.write("audio/tram-vienna-1-1-a.wav\ttram\n")
    with pytest.raises(DatasetLayoutError, match="lists audio/tram-vienna-1-1-a.wav, which meta.csv does not"):
        datasets.load(str(tau), "tau2019")

    advance = fx.build_advance(tmp_path / "c")
    shutil.copy(advance / "sound/forest/00007.wav", advance / "sound/00007.wav")
    with pytest.raises(DatasetLayoutError, match="a file directly in sound/"):
        datasets.load(str(advance), "advance")
    (advance / "sound/00007.wav").unlink()
    (advance / "sound/forest").rename(advance / "sound/woods")
    with pytest.raises(DatasetLayoutError, match="'woods' is not one of ADVANCE's 13 scenes"):
        datasets.load(str(advance), "advance")

    ahead = fx.build_ahead_ds(tmp_path / "d")
    rows = (ahead / "ahead_ds_all.csv").read_text().splitlines()
    rows[2] = rows[2].replace(",0", ",1", 1)  # a second class on line 3
    (ahead / "ahead_ds_all.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetLayoutError, match=r"ahead_ds_all.csv:3: .* exactly one class"):
        datasets.load(str(ahead), "ahead-ds")


def test_run_on_a_dataset_carries_ground_truth_and_refuses_a_partial_one(tmp_path, models):
    from auditoryhum.config import Settings
    from auditoryhum.pipeline import run

    folder = fx.build_ahead_ds(tmp_path)
    summary = run(folder, tmp_path / "out", Settings(layout="ahead-ds", k_max=3), models=models).summary
    assert summary["dataset"] == "ahead-ds" and summary["clips"] == len(fx.AHEAD_CLIPS)
    with (tmp_path / "out/final_labels.csv").open() as f:
        truth = {Path(r["path"]).name: r["ground_truth"] for r in csv.DictReader(f)}
    assert truth == {Path(e.key).name: e.ground_truth for e in datasets.load(str(folder), "ahead-ds").entries}

    (folder / "music_00001.wav").unlink()
    result = CliRunner().invoke(app, ["run", str(folder), "--layout", "ahead-ds", "--out", str(tmp_path / "out2")])
    assert result.exit_code == 2 and "ahead_ds_all.csv:" in result.output and "music_00001.wav" in result.output
    assert not (tmp_path / "out2").exists()  # nothing half-done


def test_ingest_reads_a_dataset_layout_and_refuses_a_partial_one_before_publishing(tmp_path):
    from auditoryhum import kube

    folder = fx.build_ahead_ds(tmp_path)
    (folder / "music_00000.wav").unlink()
    # Refused while listing, before any connection to Kafka (none runs here).
    result = CliRunner().invoke(app, ["ingest", str(folder), "--layout", "ahead-ds", "--bootstrap", "127.0.0.1:9"])
    assert result.exit_code == 2 and "music_00000.wav, which is not in" in result.output
    job = kube.IngestJob(str(folder), "ahead-ds", 5, 2, 2, "img", "kafka:9092", layout="ahead-ds")
    assert job.args()[-2:] == ["--layout", "ahead-ds"]  # every pod lists the dataset the same way
