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

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402

COLUMNS = ("run", "dataset", "labeler", "protocol", "clips", "unique_labels", "mu_c", "mu_1pct", "hitl_before",
           "hitl_after", "hitl_uplift", "k", "s_k", "s_2", "s_unique", "nmi", "ari", "purity")
HEADINGS = {"run": "run", "dataset": "dataset", "labeler": "labeler", "protocol": "protocol", "clips": "clips",
            "unique_labels": "unique labels", "mu_c": "μc", "mu_1pct": "μ1%", "hitl_before": "HITL before",
            "hitl_after": "HITL after", "hitl_uplift": "HITL uplift", "k": "k*", "s_k": "S(k*)", "s_2": "S(2)",
            "s_unique": "S(unique)", "nmi": "NMI", "ari": "ARI", "purity": "purity"}
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


def evaluate(runs: list[Path], out: Path) -> list[dict]:
    """Read every run first (a bad folder stops before anything is written), then write the table."""
    rows = [run_row(Path(folder)) for folder in runs]
    names = Counter(r["run"] for r in rows)
    for r, folder in zip(rows, runs):  # two runs named alike (a/out, b/out): tell them apart by their parent
        if names[r["run"]] > 1:
            r["run"] = f"{Path(folder).parent.name}/{Path(folder).name}"
    out.mkdir(parents=True, exist_ok=True)
    table = [{c: r[c] for c in COLUMNS} for r in rows]
    with (out / "evaluation.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({c: "" if v is None else v for c, v in row.items()} for row in table)
    (out / "evaluation.json").write_text(json.dumps({"columns": list(COLUMNS), "runs": table}, indent=2) + "\n",
                                         encoding="utf-8")
    _plot_curves(rows, out / CURVES_PNG)
    _plot_scores(rows, out / SCORES_PNG)
    (out / "evaluation.html").write_text(_page(table), encoding="utf-8")
    return table


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _page(table: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(HEADINGS[c])}</th>" for c in COLUMNS)
    body = "\n".join("<tr>" + "".join(f"<td>{_cell(row[c])}</td>" for c in COLUMNS) + "</tr>" for row in table)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AuditoryHuM evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:.3em .6em;text-align:right}}td:nth-child(-n+4){{text-align:left}}</style></head>
<body><h1>AuditoryHuM evaluation</h1>
<p>One row per run. μc: mean clip score; μ1%: mean of the lowest 1 %; HITL: mean score of the reviewed pairs
before and after the human decisions; k*: the chosen number of clusters; S: silhouette; NMI, ARI, purity: clusters
against the ground-truth classes.</p>
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
