"""The paper's results table for one or many finished runs (dataset × labeler model): ``auditoryhum evaluate``.

Each run folder is what ``auditoryhum run`` (or ``taxonomy``) writes; nothing is recomputed that a run already
measured. One row per run:

| column | from |
|---|---|
| ``dataset``, ``labeler``, ``protocol`` | summary.json; labels.csv's model; taxonomy.json's algorithm |
| ``clips``, ``unique_labels`` | summary.json |
| ``mu_c``, ``mu_1pct`` | summary.json: the mean clip score, the mean of the lowest 1 % |
| ``hitl_before``, ``hitl_after``, ``hitl_uplift`` | summary.json: mean score of the reviewed pairs, before/after |
| ``k``, ``s_k`` | taxonomy.json: the chosen k and its silhouette |
| ``s_2``, ``s_unique`` | taxonomy.json's curve at k = 2 and at k = U (only the reference protocol sweeps up to U) |
| ``nmi``, ``ari``, ``purity`` | summary.json: clusters against the clips' ground truth |

With an evaluation set's ground truth (``truth``, :mod:`auditoryhum.quality.truth`), six more columns:

| column | from |
|---|---|
| ``categories``, ``truth_clips`` | the truth's category count; the run's clips it lists |
| ``swapped_auc`` | every clip's audio scored against every category's description by the run's own scorer (rebuilt from summary.json's ``settings``): how often the true description beats another |
| ``truth_nmi``, ``truth_ari`` | assignments.csv's clusters against the truth's categories |
| ``k_ratio`` | k* / the category count |

Written as ``evaluation.csv``, ``evaluation.json`` and ``evaluation.html`` with two plots (every run's selection
curve; μc, μ1 % and the review's before/after). Dataset names and model ids are untrusted text: the page escapes
them.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

from auditoryhum.quality.measures import clustering_agreement, k_ratio, swapped_label_auc  # noqa: E402
from auditoryhum.quality.truth import Truth  # noqa: E402

if TYPE_CHECKING:
    from auditoryhum.config import Settings
    from auditoryhum.models import Models

COLUMNS = ("run", "dataset", "labeler", "protocol", "clips", "unique_labels", "mu_c", "mu_1pct", "hitl_before",
           "hitl_after", "hitl_uplift", "k", "s_k", "s_2", "s_unique", "nmi", "ari", "purity")
HEADINGS = {"run": "run", "dataset": "dataset", "labeler": "labeler", "protocol": "protocol", "clips": "clips",
            "unique_labels": "unique labels", "mu_c": "μc", "mu_1pct": "μ1%", "hitl_before": "HITL before",
            "hitl_after": "HITL after", "hitl_uplift": "HITL uplift", "k": "k*", "s_k": "S(k*)", "s_2": "S(2)",
            "s_unique": "S(unique)", "nmi": "NMI", "ari": "ARI", "purity": "purity"}
TRUTH_COLUMNS = ("categories", "truth_clips", "swapped_auc", "truth_nmi", "truth_ari", "k_ratio")
HEADINGS |= {"categories": "categories", "truth_clips": "clips in truth", "swapped_auc": "swapped AUC",
             "truth_nmi": "NMI (truth)", "truth_ari": "ARI (truth)", "k_ratio": "k* / categories"}
CURVES_PNG, SCORES_PNG = "evaluation_curves.png", "evaluation_scores.png"


class RunFolderError(ValueError):
    """A folder that is not a finished run; the message names the missing or bad file."""


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{path}: missing (not a finished run's folder?)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: not a JSON file: {exc}") from None


def _labeler(path: Path) -> str:
    """The model that wrote most of a run's labels (reviewers' corrections are labelled "human")."""
    if not path.is_file():
        return ""
    with path.open(newline="", encoding="utf-8") as f:
        models = Counter(row["model"] for row in csv.DictReader(f) if row.get("model") not in (None, "", "human"))
    return models.most_common(1)[0][0] if models else ""


def run_row(folder: Path) -> dict:
    summary = _json(folder / "summary.json")
    taxonomy = _json(folder / "taxonomy.json")
    curve = {p["k"]: p["silhouette"] for p in taxonomy.get("curve", [])}
    before, after = summary.get("review_mean_before"), summary.get("review_mean_after")
    unique = summary.get("unique_labels")
    return {
        "run": folder.name, "dataset": summary.get("dataset", ""), "labeler": _labeler(folder / "labels.csv"),
        "protocol": taxonomy.get("algorithm", ""), "clips": summary.get("clips"), "unique_labels": unique,
        "mu_c": summary.get("mu_c"), "mu_1pct": summary.get("mu_1pct"), "hitl_before": before, "hitl_after": after,
        "hitl_uplift": after - before if before is not None and after is not None else None,
        "k": taxonomy.get("k"), "s_k": curve.get(taxonomy.get("k"), taxonomy.get("silhouette")),
        "s_2": curve.get(2), "s_unique": curve.get(unique), "nmi": summary.get("nmi"), "ari": summary.get("ari"),
        "purity": summary.get("purity"), "_curve": taxonomy.get("curve", []),
    }


def run_settings(folder: Path) -> "Settings":
    """The settings a run was made with (summary.json's ``settings``); this environment's for a run that has none
    (made before they were recorded, or by the distributed mode)."""
    from pydantic import ValidationError

    from auditoryhum.config import Settings

    recorded = _json(folder / "summary.json").get("settings")
    try:
        return Settings(**recorded) if isinstance(recorded, dict) else Settings()
    except ValidationError as exc:
        raise RunFolderError(f"{folder / 'summary.json'}: its settings are not valid now: {exc}") from None


def score_descriptions(models: "Models", paths: list[Path], descriptions: list[str]) -> np.ndarray:
    """clips × descriptions: every clip's audio scored against every description, by ``models.scorer``."""
    from functools import partial

    from auditoryhum.audio import AudioError
    from auditoryhum.backends import ScoreItem
    from auditoryhum.pipeline import audio_loader
    from auditoryhum.v1 import pipeline_pb2 as pb

    load = audio_loader(models.settings)

    def audio(path: Path):
        try:
            return load(pb.Clip(uri=str(path)), models.scorer_rate)
        except AudioError as exc:  # the run scored this clip: its audio changed or went away since
            raise RunFolderError(f"{path}: its audio cannot be scored again: {exc}") from None

    items = [ScoreItem(descriptions, audio=partial(audio, p)) for p in paths]
    step = models.settings.batch_size
    return np.vstack([r.scores for i in range(0, len(items), step)
                      for r in models.scorer.score_batch(items[i:i + step])])


def truth_row(folder: Path, truth: Truth, models: "Models", k: int | None) -> dict:
    """The truth columns of one run: its clips the truth lists, scored again and matched to their clusters."""
    category_of = truth.category_of()
    with (folder / "assignments.csv").open(newline="", encoding="utf-8") as f:
        matched = [(Path(r["path"]).resolve(), r["cluster_id"]) for r in csv.DictReader(f)]
    matched = [(p, cluster) for p, cluster in matched if p in category_of]
    if len(matched) < 2:
        raise RunFolderError(f"{folder}: {len(matched)} of its clips are listed in the truth of {truth.root}")
    paths = [p for p, _ in matched]
    categories = [category_of[p] for p in paths]
    names = truth.names
    scores = score_descriptions(models, paths, [truth.descriptions[c] for c in names])
    true_index = np.array([names.index(c) for c in categories])
    # Which categories the scorer gets wrong: the same AUC over each category's clips alone (not a table column).
    by_category = {c: swapped_label_auc(scores[true_index == j], true_index[true_index == j])
                   for j, c in enumerate(names) if (true_index == j).any()}
    return {"categories": len(names), "truth_clips": len(paths),
            "swapped_auc": swapped_label_auc(scores, true_index),
            **{f"truth_{m}": v for m, v in clustering_agreement([c for _, c in matched], categories).items()},
            "k_ratio": k_ratio(k, len(names)) if k else None, "_auc_by_category": by_category}


def evaluate(runs: list[Path], out: Path, truth: Truth | None = None,
             models_for: Callable[["Settings"], "Models"] | None = None) -> list[dict]:
    """Read every run first (a bad folder stops before anything is written), then write the table.

    With ``truth``: the truth columns too, each run scored by ``models_for(its settings)`` (default: load them;
    runs made with the same settings share one set of models)."""
    rows = [run_row(Path(folder)) for folder in runs]
    columns = COLUMNS + (TRUTH_COLUMNS if truth else ())
    if truth:
        from auditoryhum.models import Models

        loaded: dict[str, Models] = {}

        def load(settings: "Settings") -> "Models":
            key = settings.model_dump_json()
            if key not in loaded:
                loaded[key] = Models(settings)
            return loaded[key]

        for row, folder in zip(rows, runs):
            settings = run_settings(Path(folder))
            row |= truth_row(Path(folder), truth, (models_for or load)(settings), row["k"])
    names = Counter(r["run"] for r in rows)
    for r, folder in zip(rows, runs):  # two runs named alike (a/out, b/out): tell them apart by their parent
        if names[r["run"]] > 1:
            r["run"] = f"{Path(folder).parent.name}/{Path(folder).name}"
    out.mkdir(parents=True, exist_ok=True)
    table = [{c: r[c] for c in columns} for r in rows]
    with (out / "evaluation.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows({c: "" if v is None else v for c, v in row.items()} for row in table)
    (out / "evaluation.json").write_text(json.dumps({"columns": list(columns), "runs": table}, indent=2) + "\n",
                                         encoding="utf-8")
    _plot_curves(rows, out / CURVES_PNG)
    _plot_scores(rows, out / SCORES_PNG)
    (out / "evaluation.html").write_text(_page(table, columns), encoding="utf-8")
    return table


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _page(table: list[dict], columns: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(HEADINGS[c])}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{_cell(row[c])}</td>" for c in columns) + "</tr>" for row in table)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AuditoryHuM evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:.3em .6em;text-align:right}}td:nth-child(-n+4){{text-align:left}}</style></head>
<body><h1>AuditoryHuM evaluation</h1>
<p>One row per run. μc: mean clip score; μ1%: mean of the lowest 1 %; HITL: mean score of the reviewed pairs
before and after the human decisions; k*: the chosen number of clusters; S: silhouette; NMI, ARI, purity: clusters
against the ground-truth classes. With an evaluation set's truth: swapped AUC, how often a clip's true category
description outscores another category's on its audio; NMI and ARI against the truth's categories; k* / categories.
</p>
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
<h2>Choosing k</h2><img src="{CURVES_PNG}" alt="silhouette S(k) of every run">
<h2>Alignment scores</h2><img src="{SCORES_PNG}" alt="mean scores of every run">
</body></html>
"""


def _plot_curves(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        if r["_curve"]:
            line, = ax.plot([p["k"] for p in r["_curve"]], [p["silhouette"] for p in r["_curve"]], "-", lw=1.2,
                            label=f"{r['run']} (k* = {r['k']})")
            if r["s_k"] is not None:
                ax.plot([r["k"]], [r["s_k"]], "o", color=line.get_color())
    ax.set(xlabel="k (clusters)", ylabel="silhouette S(k)", title="Silhouette by k; dots: the chosen k*")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_scores(rows: list[dict], path: Path) -> None:
    series = [("μc", "mu_c"), ("μ1%", "mu_1pct"), ("HITL before", "hitl_before"), ("HITL after", "hitl_after")]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(series)
    for i, (name, key) in enumerate(series):
        ax.bar([j + i * width for j in range(len(rows))], [r[key] if r[key] is not None else 0 for r in rows],
               width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], [r["run"] for r in rows], fontsize=8)
    ax.set(ylabel="alignment score", title="Mean scores per run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
