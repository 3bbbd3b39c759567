"""The edge trainer on a small run folder cut from real recordings: split by recording, int8 against float,
determinism with a seed, the recogniser reading what training wrote, and the bad inputs' errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from auditoryhum.audio import load
from auditoryhum.cli import app
from auditoryhum.edge import dataset
from auditoryhum.edge.build import build
from auditoryhum.edge.errors import EdgeError
from auditoryhum.edge.recogniser import Recogniser, RecogniserError
from tests.conftest import LINCITY

# class → the recordings of its clips; each recording is cut into CUTS clips of CUT_S seconds.
FAMILIES = {"traffic": ["TraficHigh1", "TraficHigh2", "TraficHigh3", "TraficLow1", "TraficLow2"],
            "water": ["Water1", "Water2", "Water3", "Water4", "Water5"],
            "farm": ["Farm1", "Farm2", "Farm3", "OrganicFarm1", "OrganicFarm2"]}
CUTS, CUT_S = 2, 1.5


def write_run(folder: Path, families: dict[str, list[str]] = FAMILIES, removed: set[str] = frozenset()) -> Path:
    """A run folder as `auditoryhum run` leaves it: taxonomy.json, final_labels.csv, assignments.csv. Clip files
    are named <recording letter>_<cut> so every cut of one recording shares its name. ``removed``: clip ids a
    reviewer marked unusable: in labels.csv, absent from final_labels.csv and assignments.csv, as the review
    stage leaves them."""
    clips_dir, run = folder / "clips", folder / "run"
    clips_dir.mkdir(parents=True)
    run.mkdir()
    rows, clusters = [], []
    for cid, (label, recordings) in enumerate(families.items()):
        clusters.append({"id": cid, "composite_label": f"{label} / scene", "size": 0, "labels": [{"label": label}]})
        for r, name in enumerate(recordings):
            samples, rate = sf.read(LINCITY / f"{name}.wav", dtype="float32", always_2d=True)
            for k in range(CUTS):
                cut = samples[int(k * CUT_S * rate) : int((k + 1) * CUT_S * rate)].mean(axis=1)
                path = clips_dir / f"{label}{'ABCDEFG'[r]}_{k + 1}.wav"
                sf.write(path, cut, rate)
                rows.append({"clip_id": f"{label}{r}{k}", "path": str(path), "label": label, "cluster_id": cid,
                             "composite_label": f"{label} / scene", "scene_id": "", "scene_label": ""})
                clusters[-1]["size"] += 1
    with (run / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "path"])
        w.writerows([(r["clip_id"], r["path"]) for r in rows])
    kept = [r for r in rows if r["clip_id"] not in removed]
    for name, columns in (("assignments.csv", list(rows[0])), ("final_labels.csv", ["clip_id", "path", "label"])):
        with (run / name).open("w", newline="") as f:
            w = csv.DictWriter(f, columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(kept)
    (run / "taxonomy.json").write_text(json.dumps({"version": 1, "k": len(clusters), "clusters": clusters}))
    return run


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("edge"))


@pytest.fixture(scope="module")
def trained(run_folder, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model")
    return out, build(run_folder, out, seed=3, epochs=4)


def test_split_keeps_each_recording_on_one_side(run_folder):
    data = dataset.load(run_folder, seed=1)
    side = {}
    for name in dataset.SPLITS:
        for clip in data.clips_of(name):
            assert side.setdefault(clip.recording, name) == name, f"{clip.recording} on {side[clip.recording]} and {name}"
    assert len({c.recording for c in data.clips}) == 15  # each of the 15 recordings' 2 cuts share one
    for name in dataset.SPLITS:  # 5 recordings per class: one to test, one to validation, three to train
        assert data.counts(name).tolist() == ([6, 6, 6] if name == "train" else [2, 2, 2])
    assert dataset.load(run_folder, seed=1).split == data.split
    assert dataset.load(run_folder, seed=2).split != data.split


def test_a_mix_is_one_recording_with_its_parts():
    groups = dataset._recordings(["/m/speech_over_TraficHigh1.wav", "/a/TraficHigh2.wav", "/s/speech3.wav",
                                  "/w/Water1.wav"])
    assert groups[0] == groups[1] == groups[2] != groups[3]


def test_unusable_clips_are_left_out(tmp_path):
    run = write_run(tmp_path, removed={"water00", "water01"})
    data = dataset.load(run)
    ids = {c.clip_id for c in data.clips}
    assert "water00" not in ids and "water01" not in ids and len(ids) == 28
    assert data.classes[1]["size"] == 8


def test_training_writes_the_contract_and_int8_agrees_with_float(trained):
    out, metrics = trained
    manifest = json.loads((out / "recogniser.json").read_text())
    assert manifest["format"] == "auditoryhum.recogniser/1"
    assert [c["composite_label"] for c in manifest["classes"]] == ["traffic / scene", "water / scene", "farm / scene"]
    assert [c["train_clips"] for c in manifest["classes"]] == [6, 6, 6]
    for kind in ("cnn", "head"):
        e = metrics["models"][kind]["export"]
        assert e["checked_clips"] == 6
        assert e["int8_max_abs_dp"] <= 0.1 and e["int8_worst_choice_gap"] <= 0.05
        assert e["int8_kb"] < e["float_kb"] and (out / e["int8_file"]).is_file()
        assert (out / f"confusion_{kind}.png").stat().st_size > 1000
        assert sum(map(sum, metrics["models"][kind]["test"]["confusion"])) == 6
    assert metrics["models"]["cnn"]["export"]["int8_kb"] <= 250
    card = (out / "model_card.md").read_text()
    assert "water / scene" in card and "baseline" in card and "ms per s of audio" in card


def test_the_recogniser_reads_what_training_wrote(trained, run_folder):
    out, metrics = trained
    data = dataset.load(run_folder, seed=3)
    clips = [load(c.path, 16000) for c in data.clips_of("test")]
    for kind in ("cnn", "head"):
        probs = Recogniser(out, kind).classify(clips)
        assert probs.shape == (6, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
        # The recogniser's decisions are the ones graded on the card.
        confusion = np.zeros((3, 3), int)
        np.add.at(confusion, ([c.label for c in data.clips_of("test")], probs.argmax(1)), 1)
        assert confusion.tolist() == metrics["models"][kind]["test"]["confusion"]
    with pytest.raises(RecogniserError, match="precision 'int4'"):
        Recogniser(out, "cnn", precision="int4")
    with pytest.raises(RecogniserError, match="recogniser.json: not found"):
        Recogniser(out / "nowhere")


def test_training_is_deterministic_with_a_seed(run_folder, trained, tmp_path):
    first_dir, first = trained
    again = build(run_folder, tmp_path, seed=3, epochs=4)
    for kind in ("cnn", "head"):
        assert again["models"][kind]["test"] == first["models"][kind]["test"]
    import onnx

    def weights(path: Path) -> dict:
        return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}

    for name in ("logmel_cnn.onnx", "embedding_head.onnx", "logmel_cnn.int8.onnx"):
        a, b = weights(first_dir / name), weights(tmp_path / name)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), name


def test_bad_run_folders_are_refused_with_the_reason(tmp_path, run_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeError, match="taxonomy.json: not found"):
        dataset.load(tmp_path / "empty")
    one = write_run(tmp_path / "one", {"traffic": FAMILIES["traffic"]})
    with pytest.raises(EdgeError, match="1 cluster.*at least two classes"):
        dataset.load(one)
    gone = write_run(tmp_path / "gone")
    lost = sorted((tmp_path / "gone" / "clips").glob("water*"))
    for path in lost:
        path.unlink()
    with pytest.raises(EdgeError, match=f"10 of 30 clips .* no longer exist \\(first: {lost[0]}.*--skip-missing"):
        dataset.load(gone)
    data = dataset.load(gone, skip_missing=True)
    assert len(data.missing) == 10 and [c["composite_label"] for c in data.classes] == ["traffic / scene",
                                                                                        "farm / scene"]


def test_the_command_fails_short_on_bad_input(tmp_path):
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "taxonomy.json: not found" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "m"), "--models", "rnn"])
    assert result.exit_code == 1 and "choose from cnn, head" in result.output
