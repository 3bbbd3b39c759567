"""`auditoryhum evaluate` on two real runs (real recordings, the lite models, different settings): every cell of
the table checked against the runs' own files, the ground-truth scores recomputed with scikit-learn."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from typer.testing import CliRunner

from auditoryhum.cli import app
from auditoryhum.config import Settings
from auditoryhum.pipeline import run
from tests.conftest import LINCITY, SIMUTRANS

SCENES = {"traffic": ["TraficHigh1", "TraficHigh2", "TraficLow1"],
          "market": ["MarketFull1", "MarketMed1", "MarketLow1"],
          "harbour": ["Harbor1", "Harbor2"], "park": ["Green1", "Green2", "Green3"]}
DATASET = "scenes<b>&"  # names are untrusted text too


def table(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("eval")
    audio = root / "audio"
    for scene, names in SCENES.items():
        (audio / scene).mkdir(parents=True)
        for name in names:
            (audio / scene / f"{name}.wav").symlink_to(LINCITY / f"{name}.wav")
    (audio / "harbour" / "boat-horn.wav").symlink_to(SIMUTRANS / "boat-horn.wav")
    files = sorted(p.relative_to(audio).as_posix() for p in audio.rglob("*.wav"))
    notes = root / "notes.csv"  # the authors' annotation format: one line per clip in file order
    notes.write_text("\n".join("boat horn, seagulls" if f == "harbour/Harbor1.wav" else
                               "road traffic" if f == "traffic/TraficLow1.wav" else "" for f in files) + "\n")
    a = run(audio, root / "default", Settings(class_from_folder=True, k_max=6), dataset=DATASET, models=models)
    b = run(audio, root / "reference", Settings(class_from_folder=True, protocol="reference"), dataset=DATASET,
            models=models, annotations=notes)
    return root, [a, b]


def test_evaluate_writes_the_papers_table_cell_by_cell(runs, models):
    root, results = runs
    out = root / "evaluation"
    result = CliRunner().invoke(app, ["evaluate", str(root / "default"), str(root / "reference"), "--out", str(out)],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    rows = table(out / "evaluation.csv")
    as_json = json.loads((out / "evaluation.json").read_text())["runs"]
    for r, j in zip(rows, as_json, strict=True):  # the JSON holds the same cells, typed
        assert list(r) == list(j)
        assert all(r[c] == ("" if j[c] is None else str(j[c])) for c in r)
    assert [r["run"] for r in rows] == ["default", "reference"]
    n_clips = sum(map(len, SCENES.values())) + 1
    for row, res in zip(rows, results):
        folder = root / row["run"]
        final = table(folder / "final_labels.csv")
        clusters = {r["clip_id"]: r["cluster_id"] for r in table(folder / "assignments.csv")}
        curve = {p["k"]: p["silhouette"] for p in json.loads((folder / "taxonomy.json").read_text())["curve"]}
        scores = np.array([float(r["score"]) for r in final])
        assert row["dataset"] == DATASET and row["labeler"] == models.labeler.model_id
        assert int(row["clips"]) == n_clips == len(final)
        assert int(row["unique_labels"]) == len({r["label"] for r in final})
        assert float(row["mu_c"]) == pytest.approx(scores.mean())
        assert float(row["mu_1pct"]) == pytest.approx(scores.min())  # ceil(1 % of 12) = 1 clip
        k = int(row["k"])
        assert k == len(set(clusters.values()))
        assert float(row["s_k"]) == pytest.approx(curve[k]) and float(row["s_2"]) == pytest.approx(curve[2])
        truth = [r["ground_truth"] for r in final]
        assigned = [clusters[r["clip_id"]] for r in final]
        assert float(row["nmi"]) == pytest.approx(normalized_mutual_info_score(truth, assigned))
        assert float(row["ari"]) == pytest.approx(adjusted_rand_score(truth, assigned))
        majority = sum(Counter(t for t, c in zip(truth, assigned) if c == cid).most_common(1)[0][1]
                       for cid in set(assigned))
        assert float(row["purity"]) == pytest.approx(majority / len(final))

    default, reference = rows
    assert default["protocol"] == "kmeans" and reference["protocol"] == "reference"
    # No reviewer decided in the default run: the queue's mean before, nothing after.
    queued = [float(r["score"]) for r in table(root / "default/review_queue.csv")]
    assert float(default["hitl_before"]) == pytest.approx(np.mean(queued))
    assert default["hitl_after"] == default["hitl_uplift"] == "" and default["s_unique"] == ""
    # The annotated run: the two corrected pairs before (the model's scores) and after (the aligner's).
    final = table(root / "reference/final_labels.csv")
    corrected = [r for r in final if r["review_action"] == "correct"]
    assert {Path(r["path"]).name for r in corrected} == {"Harbor1.wav", "TraficLow1.wav"}
    before = np.mean([float(r["score"]) for r in corrected])
    after = np.mean([float(r["final_score"]) for r in corrected])
    # final_labels.csv writes scores to 6 decimals: each mean is within 5e-7 of the summary's, their difference 1e-6
    assert (float(reference["hitl_before"]), float(reference["hitl_after"])) == (pytest.approx(before, abs=5e-7),
                                                                                 pytest.approx(after, abs=5e-7))
    assert float(reference["hitl_uplift"]) == pytest.approx(after - before, abs=1e-6)
    # S(unique): the reference protocol sweeps to k = U, every label alone: sklearn on one row per clip agrees.
    counts = Counter(r["label"] for r in final)
    labels = sorted(counts)
    rows_per_clip = np.repeat(models.embedder.embed(labels), [counts[l] for l in labels], axis=0)
    alone = np.repeat(np.arange(len(labels)), [counts[l] for l in labels])
    assert float(reference["s_unique"]) == pytest.approx(silhouette_score(rows_per_clip, alone), abs=1e-6)

    page = (out / "evaluation.html").read_text()
    assert "scenes&lt;b&gt;&amp;" in page and "scenes<b>" not in page
    assert page.count("<tr>") == 3 and "S(unique)" in page and "HITL uplift" in page
    for png in ("evaluation_curves.png", "evaluation_scores.png"):
        assert f'src="{png}"' in page and (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_refuses_a_folder_that_is_not_a_run(runs, tmp_path):
    root, _ = runs
    result = CliRunner().invoke(app, ["evaluate", str(root / "default"), str(tmp_path), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and f"{tmp_path / 'summary.json'}: missing" in result.output
    assert not (tmp_path / "e").exists()
