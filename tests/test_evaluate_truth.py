"""`auditoryhum evaluate --truth` on a small set of real recordings: the swapped-label AUC from the run's own
scorer, NMI/ARI against the truth's categories, k* against the category count; and the evaluation set itself."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from typer.testing import CliRunner

from auditoryhum.backends import ScoreItem
from auditoryhum.cli import app
from auditoryhum.config import Settings
from auditoryhum.evaluate import run_settings
from auditoryhum.pipeline import audio_loader, run
from auditoryhum.quality.truth import load_truth
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import LINCITY, SIMUTRANS
from tests.test_quality_measures import pairwise_auc

ROOT = Path(__file__).resolve().parents[1]
SCENES = {"traffic": ("road traffic", [LINCITY / "TraficHigh1.wav", LINCITY / "TraficLow2.wav", SIMUTRANS / "bus.wav"]),
          "water": ("flowing water", [LINCITY / "Water1.wav", LINCITY / "Water3.wav", SIMUTRANS / "Water.wav"]),
          "crowd": ("crowd cheering", [LINCITY / "SportsCroud1.wav", LINCITY / "SportsCroud2.wav"])}


def make_set(folder: Path, scenes: dict) -> Path:
    """Links to real clips in one folder per category, and its truth.csv."""
    rows = [("path", "category", "description")]
    for category, (description, files) in scenes.items():
        (folder / category).mkdir(parents=True)
        for f in files:
            (folder / category / f.name).symlink_to(f)
            rows.append((f"{category}/{f.name}", category, description))
    with (folder / "truth.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return folder


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory, models):
    """The set of SCENES and a run of the lite pipeline on it."""
    root = tmp_path_factory.mktemp("truth")
    run(make_set(root / "set", SCENES), root / "run", Settings(class_from_folder=True, k_max=4), models=models)
    return root


def test_evaluate_with_truth_adds_the_swapped_auc_agreement_and_k_against_the_categories(scene_run, models):
    root = scene_run
    result = CliRunner().invoke(app, ["evaluate", str(root / "run"), "--truth", str(root / "set" / "truth.csv"),
                                      "--out", str(root / "evaluation")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "swapped AUC" in result.output and "k* / categories" in result.output
    row = json.loads((root / "evaluation" / "evaluation.json").read_text())["runs"][0]
    n = sum(len(files) for _, files in SCENES.values())
    assert row["categories"] == 3 and row["truth_clips"] == n == row["clips"]

    # The AUC, recomputed pair by pair from the run's scorer scoring each clip against the three descriptions.
    truth = load_truth(root / "set" / "truth.csv")
    load = audio_loader(models.settings)
    scores = np.vstack([models.scorer.score_batch([ScoreItem(
        [truth.descriptions[c] for c in truth.names],
        audio=lambda p=p: load(pb.Clip(uri=str(p)), models.scorer_rate))])[0].scores for p in truth.paths])
    assert row["swapped_auc"] == pytest.approx(pairwise_auc(scores, [truth.names.index(c) for c in truth.categories]))

    with (root / "run" / "assignments.csv").open() as f:
        cluster = {Path(r["path"]).resolve(): r["cluster_id"] for r in csv.DictReader(f)}
    assigned = [cluster[p] for p in truth.paths]
    assert row["truth_nmi"] == pytest.approx(normalized_mutual_info_score(truth.categories, assigned))
    assert row["truth_ari"] == pytest.approx(adjusted_rand_score(truth.categories, assigned))
    assert row["k_ratio"] == pytest.approx(row["k"] / 3)
    with (root / "evaluation" / "evaluation.csv").open() as f:
        assert list(csv.DictReader(f))[0]["swapped_auc"] == str(row["swapped_auc"])

    # Without --truth the table is as it was.
    plain = CliRunner().invoke(app, ["evaluate", str(root / "run"), "--out", str(root / "plain")])
    assert plain.exit_code == 0 and "swapped AUC" not in plain.output
    assert "swapped_auc" not in json.loads((root / "plain" / "evaluation.json").read_text())["columns"]


def test_a_run_records_the_settings_its_scorer_is_rebuilt_from(scene_run):
    recorded = run_settings(scene_run / "run")
    assert recorded.class_from_folder and recorded.k_max == 4 and recorded.profile == "lite"
    assert recorded.scorer_model is None and recorded.model_dump() == Settings(class_from_folder=True,
                                                                               k_max=4).model_dump()


def test_evaluate_with_truth_refuses_a_run_of_other_clips_and_a_bad_truth(scene_run, tmp_path):
    root = scene_run
    other = tmp_path / "other"
    other.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(other / name, np.zeros(8000, dtype=np.float32), 16000)
    (other / "truth.csv").write_text("path,category,description\na.wav,x,silence\nb.wav,y,more silence\n")
    result = CliRunner().invoke(app, ["evaluate", str(root / "run"), "--truth", str(other / "truth.csv"),
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and "0 of its clips are listed in the truth" in result.output
    (other / "truth.csv").write_text("path,category\na.wav,x\n")
    result = CliRunner().invoke(app, ["evaluate", str(root / "run"), "--truth", str(other / "truth.csv"),
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and "missing column(s) description" in result.output
    assert not (tmp_path / "e").exists()


def test_the_evaluation_set_is_real_categorised_clips_built_the_same_every_time(tmp_path):
    """scripts/make_eval_set.py: ≥ 12 categories of ≥ 6 clips of 1-10 s, every one traced to its package's files,
    no recording twice, the same bytes on a second build."""
    builds = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_eval_set.py"), str(tmp_path / name)],
                       check=True, capture_output=True)
        builds.append({p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*.*")})
    assert builds[0] == builds[1]
    truth = load_truth(tmp_path / "a" / "truth.csv")
    counts = {c: truth.categories.count(c) for c in truth.names}
    assert len(counts) >= 12 and min(counts.values()) >= 6 and 120 <= len(truth.paths) <= 200
    with (tmp_path / "a" / "truth.csv").open() as f:
        rows = list(csv.DictReader(f))
    pcm = set()
    for r, path in zip(rows, truth.paths):
        assert path.parent.name == r["category"]  # --class-from-folder reads the same categories
        assert 1.0 <= sf.info(str(path)).duration <= 10.0 + 1e-3
        assert r["source"] and (r["source"] == "espeak-ng" or all(Path(f).is_file() for f in r["files"].split(";")))
        assert not r["source"].startswith(("0ad", "tuxpaint", "openttd"))  # kept for an independent check
        pcm.add(sf.read(str(path), dtype="int16")[0].tobytes())
    assert len(pcm) == len(rows)  # no recording in two places


def test_the_harness_prints_one_row_per_profile_and_writes_it_as_json_and_csv(tmp_path):
    """`python -m auditoryhum.quality.harness` (make eval) on two categories of two clips, lite only: its row is
    what `evaluate --truth` says of the run it made."""
    import typer

    from auditoryhum.evaluate import evaluate
    from auditoryhum.quality.harness import main

    scenes = {c: (d, files[:2]) for c, (d, files) in SCENES.items() if c != "crowd"}
    eval_set = make_set(tmp_path / "set", scenes)
    harness = typer.Typer()
    harness.command()(main)
    out = tmp_path / "eval"
    result = CliRunner().invoke(harness, [str(eval_set), "--out", str(out), "--family-size", "10", "--repeats", "2"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "swapped AUC" in result.output and "k vs true count" in result.output
    report = json.loads((out / "eval.json").read_text())
    (row,) = report["real_set"]
    assert row["profile"] == "lite" and row["clips"] == 4 and row["categories"] == row["k_true"] == 2
    assert f"{row['k']} / 2" in result.output
    assert set(row["auc_by_category"]) == set(scenes)
    measured = evaluate([out / "lite"], tmp_path / "again", load_truth(eval_set / "truth.csv"))[0]
    assert (row["swapped_auc"], row["nmi"], row["ari"]) == pytest.approx(
        (measured["swapped_auc"], measured["truth_nmi"], measured["truth_ari"]))
    with (out / "eval.csv").open() as f:
        (written,) = list(csv.DictReader(f))
    assert written["profile"] == "lite" and float(written["swapped_auc"]) == pytest.approx(row["swapped_auc"])
    # The other sections: every synthetic family at the size asked, both criteria; every rank of both labeler sets.
    families = report["synthetic_families"]
    assert {(f["family"], f["unique_labels"]) for f in families} == {
        (name, 10) for name in ("paraphrase/balanced", "paraphrase/zipf", "subtypes/balanced", "subtypes/zipf")}
    assert all(f["true_groups"] == 2 and {"k_plateau", "k_linear"} <= set(f) for f in families)
    ranking = report["review_ranking"]
    assert [(r["labelers"], r["rank"]) for r in ranking] == [
        (labelers, rank) for labelers in ("yamnet + reference", "yamnet + soundnet")
        for rank in ("score", "disagreement", "combined")]
    assert all(0.0 <= r["p@5%"] <= 1.0 and r["clips"] == 4 for r in ranking)
    assert (out / "eval_synthetic_families.csv").is_file() and (out / "eval_review_ranking.csv").is_file()
    (scenes_row,) = report["scenes"]  # four clips make fewer than four clusters: no scenes, and why
    assert scenes_row["profile"] == "lite" and scenes_row["scenes"] == 0 and scenes_row["nmi_top"] is None
    assert scenes_row["scenes_note"].endswith("broad scenes need at least 4") and "NMI scenes" in result.output
    assert (out / "eval_scenes.csv").is_file()

    bad = CliRunner().invoke(harness, [str(eval_set), "--out", str(tmp_path / "never"),
                                       "--paper-models", str(tmp_path)], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "no labeler, scorer, embedder folder" in bad.output
    assert not (tmp_path / "never").exists()  # refused before anything ran
