"""The embedded pipeline end to end on real recordings, with bad files mixed in."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from auditoryhum import pipeline
from auditoryhum.config import Settings
from tests.conftest import LINCITY, SIMUTRANS, write_bad_files

SCENES = {
    "traffic": [LINCITY / f"Trafic{n}.wav" for n in ("High1", "High2", "High3", "Low2", "Low3")],
    "nature": [SIMUTRANS / n for n in ("forest.wav", "desert.wav", "seagulls.wav")],
    "city": [LINCITY / n for n in ("School1.wav", "SportsCroud1.wav", "MarketFull1.wav", "Harbor1.wav")],
}


def read(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(models, tmp_path_factory):
    audio_dir = tmp_path_factory.mktemp("clips") / "mini"
    for scene, paths in SCENES.items():
        (audio_dir / scene).mkdir(parents=True)
        for p in paths:
            shutil.copy(p, audio_dir / scene / p.name)
    bad = write_bad_files(audio_dir / "bad")
    (audio_dir / "notes.txt").write_text("not a clip")
    out = audio_dir.parent / "out"
    settings = Settings(max_duration_s=10, class_from_folder=True, review_fraction=0.1)
    result = pipeline.run(audio_dir, out, settings, models=models)
    return result, out, bad


def test_every_output_file_follows_the_contract(run):
    result, out, bad = run
    columns = {
        "labels.csv": ["clip_id", "path", "model", "raw", "labels"],
        "alignments.csv": ["clip_id", "label", "score", "is_best"],
        "labelers.csv": ["clip_id", "model", "label", "score", "kept"],
        "review_queue.csv": ["clip_id", "path", "label", "score", "disagreement"],
        "assignments.csv": ["clip_id", "path", "label", "cluster_id", "composite_label", "scene_id", "scene_label"],
        "dead_letters.csv": ["path", "stage", "reason"],
    }
    for name, header in columns.items():
        with (out / name).open() as f:
            assert next(csv.reader(f)) == header, name
    good = sum(len(v) for v in SCENES.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary
    assert summary["clips"] == good + len(bad) and summary["dead_letters"] == len(bad)
    assert summary["labelled"] == good and summary["skipped_files"][0]["path"].endswith("notes.txt")
    assert {"clips", "dead_letters", "unique_labels", "mu_c", "mu_1pct", "k", "lambda", "silhouette"} <= set(summary)
    labels = read(out / "labels.csv")
    alignments = read(out / "alignments.csv")
    assert len(labels) == good and len({a["clip_id"] for a in alignments}) == good
    best = [a for a in alignments if a["is_best"] == "1"]
    assert len(best) == good
    scores = sorted(float(a["score"]) for a in best)
    assert summary["mu_c"] == pytest.approx(sum(scores) / good, abs=1e-5)
    assert summary["mu_1pct"] == pytest.approx(scores[0], abs=1e-5)  # 1 % of 12 clips is one clip
    queue = read(out / "review_queue.csv")
    assert len(queue) == 2 and sorted(float(q["score"]) for q in queue) == pytest.approx(scores[:2], abs=1e-5)
    assert not read(out / "labelers.csv") and {q["disagreement"] for q in queue} == {"0.000000"}  # one labeler
    taxonomy = json.loads((out / "taxonomy.json").read_text())
    assert taxonomy["k"] == summary["k"] == len(taxonomy["clusters"]) and taxonomy["lambda"] == 2.0
    assert sum(c["size"] for c in taxonomy["clusters"]) == good
    assert {"k", "silhouette", "adjusted"} <= set(taxonomy["curve"][0])
    page = (out / "report.html").read_text()
    for png in ("selection_curve.png", "label_map.png", "score_histogram.png"):
        assert f'src="{png}"' in page and (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"nmi", "ari", "purity"} <= set(summary)  # the scene folders are the ground truth
    assignments = read(out / "assignments.csv")
    assert len(assignments) == good
    composite = {c["id"]: c["composite_label"] for c in taxonomy["clusters"]}
    assert all(composite[int(a["cluster_id"])] == a["composite_label"] for a in assignments)
    scene_of = {c["id"]: c["scene_id"] for c in taxonomy["clusters"]}
    scene_name = {s["id"]: s["composite_label"] for s in taxonomy["scenes"]}
    assert all(a["scene_id"] == ("" if scene_of[int(a["cluster_id"])] is None else str(scene_of[int(a["cluster_id"])]))
               and a["scene_label"] == scene_name.get(scene_of[int(a["cluster_id"])], "") for a in assignments)


def test_each_bad_file_is_a_dead_letter_with_its_reason(run):
    _, out, bad = run
    letters = {Path(r["path"]).name: r for r in read(out / "dead_letters.csv")}
    assert set(letters) == set(bad)
    for name, words in bad.items():
        assert letters[name]["stage"] == "labeler" and words in letters[name]["reason"]


def test_traffic_clips_are_labelled_as_vehicles(run):
    _, out, _ = run
    for row in read(out / "labels.csv"):
        if "/traffic/" in row["path"]:
            assert any(w in row["labels"] for w in ("vehicle", "traffic", "car", "engine")), row


def test_a_rerun_gives_the_same_taxonomy(run, models, tmp_path):
    result, out, _ = run
    again = pipeline.run(Path(result.out).parent / "mini", tmp_path / "again",
                         Settings(max_duration_s=10, class_from_folder=True, review_fraction=0.1), models=models)
    assert (tmp_path / "again" / "taxonomy.json").read_text().split('"clusters"')[1] == \
        (out / "taxonomy.json").read_text().split('"clusters"')[1]
    assert again.summary["k"] == result.summary["k"]
