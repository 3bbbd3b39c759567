"""``make eval``: label quality measured on the evaluation set, one row per profile.

    python -m auditoryhum.quality.harness data/eval --out out/eval [--paper-models DIR]

The set is real recordings in one folder per scene category with its ``truth.csv`` (scripts/make_eval_set.py).
Each profile runs the embedded pipeline on it (``auditoryhum run EVAL --class-from-folder``) into OUT/<profile>,
then is measured as ``auditoryhum evaluate --truth`` measures a run: swapped-label AUC (its own scorer), μc, NMI
and ARI against the categories, k against the category count; its broad scenes in a table of their own
(auditoryhum.quality.scenes: NMI and purity against the AudioSet top level of the categories, how whole each
category stays). The lite profile runs on every clip; the paper
profile runs where its models are given (``--paper-models DIR`` with DIR/labeler, DIR/scorer, DIR/embedder; for
the code path, the tiny random-weight ones from scripts/build_tiny_models.py), on the first clips of each category.

A second table runs k selection on synthetic label sets of known group count (auditoryhum.quality.synthetic:
paraphrase groups and mixed sub-types, balanced and Zipf clip counts), the default criterion against the paper's.
A third measures the review ranks (``--review-rank``): with 10 % of the clips given a wrong label on
purpose, which rank puts the wrong kept labels first (auditoryhum.quality.ranking).

Writes OUT/eval.json (every section, with each profile's AUC per category), OUT/eval.csv (the real-set table) and
OUT/eval_<section>.csv for each other section.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from auditoryhum.quality.truth import Truth, TruthError, load_truth

REAL_COLUMNS = ("profile", "clips", "categories", "unique_labels", "swapped_auc", "mu_c", "nmi", "ari", "k",
                "k_true", "seconds")
# Printed: k as "k / true count"; seconds: the pipeline run's.
REAL_HEADINGS = {"profile": "profile", "clips": "clips", "categories": "categories", "unique_labels": "unique labels",
                 "swapped_auc": "swapped AUC", "mu_c": "μc", "nmi": "NMI", "ari": "ARI", "k": "k vs true count",
                 "seconds": "run s"}


def paper_settings(models: Path):
    from auditoryhum.config import Settings

    missing = [role for role in ("labeler", "scorer", "embedder") if not (models / role).is_dir()]
    if missing:
        raise typer.BadParameter(f"{models}: no {', '.join(missing)} folder (scripts/build_tiny_models.py writes "
                                 "them)", param_hint="--paper-models")
    return Settings(profile="paper", class_from_folder=True, labeler_model=str(models / "labeler"),
                    scorer_model=str(models / "scorer"), scorer_processor=str(models / "scorer"),
                    embedder_path=str(models / "embedder"))


def first_clips(truth: Truth, per_category: int, folder: Path) -> Path:
    """A folder of links to the first ``per_category`` clips of each category, laid out as the set is."""
    taken: dict[str, int] = {}
    for path, category in zip(truth.paths, truth.categories):
        if taken.get(category, 0) < per_category:
            taken[category] = taken.get(category, 0) + 1
            link = folder / category / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return folder


def measure_profile(name: str, settings, audio: Path, truth: Truth, out: Path) -> dict:
    """Run the embedded pipeline on ``audio`` into OUT/name and measure the run against the truth."""
    from auditoryhum import pipeline
    from auditoryhum.evaluate import run_row, truth_row
    from auditoryhum.models import Models

    models = Models(settings)
    from auditoryhum.quality.scenes import scene_row

    summary = pipeline.run(audio, out / name, settings, dataset="eval", models=models).summary
    row = run_row(out / name) | truth_row(out / name, truth, models, summary["k"])
    scenes = {"profile": name, **scene_row(out / name, truth)}
    return {"profile": name, "clips": row["clips"], "categories": row["categories"],
            "unique_labels": row["unique_labels"], "swapped_auc": row["swapped_auc"], "mu_c": row["mu_c"],
            "nmi": row["truth_nmi"], "ari": row["truth_ari"], "k": row["k"], "k_true": row["categories"],
            "seconds": summary["seconds"], "auc_by_category": row["_auc_by_category"], "scenes": scenes}


def real_set_rows(eval_dir: Path, out: Path, paper_models: Path | None, paper_per_category: int) -> list[dict]:
    from auditoryhum.config import Settings

    truth = load_truth(eval_dir / "truth.csv")
    profiles = [("lite", Settings(class_from_folder=True), eval_dir)]
    if paper_models:
        subset = out / "paper-clips"
        shutil.rmtree(subset, ignore_errors=True)
        profiles.append(("paper (tiny)", paper_settings(paper_models), first_clips(truth, paper_per_category, subset)))
    return [measure_profile(name, settings, audio, truth, out) for name, settings, audio in profiles]


SCENE_HEADINGS = {"profile": "profile", "k": "clusters", "scenes": "scenes", "nmi_top": "NMI scenes",
                  "nmi_top_fine": "NMI clusters", "nmi_top_random": "NMI shuffled", "purity_top": "purity scenes",
                  "category_whole": "category in one scene"}

FAMILY_HEADINGS = {"family": "family", "unique_labels": "unique labels", "true_groups": "true k",
                   "k_plateau": "k plateau", "nmi_plateau": "NMI plateau", "k_linear": "k linear (paper)",
                   "nmi_linear": "NMI linear"}


def synthetic_rows(sizes: list[int]) -> list[dict]:
    """Each synthetic family × size with the default criterion (plateau) and the paper's (linear), side by side."""
    from auditoryhum.quality.synthetic import family_rows

    rows = {c: family_rows(sizes, criterion=c) for c in ("plateau", "linear")}
    return [{"family": p["family"], "unique_labels": p["unique_labels"], "true_groups": p["true_groups"],
             "k_plateau": f"{p['k']}{'' if p['within_20pct'] else ' ✗'}", "nmi_plateau": p["nmi"],
             "k_linear": f"{q['k']}{'' if q['within_20pct'] else ' ✗'}", "nmi_linear": q["nmi"]}
            for p, q in zip(rows["plateau"], rows["linear"])]


# Two labelers per clip: YAMNet with a reference labeler proposing the category's description, and YAMNet with
# SoundNet (a second real offline labeler); see auditoryhum.quality.ranking.
RANKING_LABELERS = {"yamnet + reference": "yamnet", "yamnet + soundnet": "yamnet,soundnet"}
RANKING_HEADINGS = {"labelers": "labelers", "rank": "rank", "p@1%": "p@1%", "p@5%": "p@5%", "p@10%": "p@10%",
                    "wrong_kept": "wrong kept", "base_rate": "base rate"}


def review_ranking_rows(eval_dir: Path, repeats: int) -> list[dict]:
    """Each review rank's precision at the top 1/5/10 % when 10 % of the clips get a wrong label on purpose."""
    from auditoryhum.config import Settings
    from auditoryhum.quality.ranking import measure_folder, read_descriptions

    descriptions = read_descriptions(eval_dir / "truth.csv")
    return [{"labelers": name, **row}
            for name, labelers in RANKING_LABELERS.items()
            for row in measure_folder(eval_dir, Settings(labelers=labelers), descriptions=descriptions,
                                      repeats=repeats)]


def print_rows(title: str, rows: list[dict], headings: dict[str, str]) -> None:
    table = Table(title=title)
    for column, heading in headings.items():
        table.add_column(heading, justify="left" if column in ("family", "labelers", "rank") else "right")
    for row in rows:
        table.add_row(*("–" if row[c] is None else f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c])
                        for c in headings))
    console = Console()
    (console if console.is_terminal else Console(width=120)).print(table)


def _cell(column: str, row: dict) -> str:
    value = row[column]
    if column == "k":
        return f"{value} / {row['k_true']}"
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) and column != "seconds" else str(value)


def print_real_set(rows: list[dict]) -> None:
    table = Table(title="AuditoryHuM label quality: the evaluation set (real recordings, known scene categories)")
    for column, heading in REAL_HEADINGS.items():
        table.add_column(heading, justify="left" if column == "profile" else "right")
    for row in rows:
        table.add_row(*(_cell(c, row) for c in REAL_HEADINGS))
    console = Console()
    (console if console.is_terminal else Console(width=120)).print(table)  # a log or pipe: not squeezed to 80


def write(out: Path, report: dict[str, list[dict]]) -> None:
    """eval.json: every section; eval.csv: the real set's table; eval_<section>.csv: each other section's."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for section, rows in report.items():
        if not rows:
            continue
        # A row's nested figures (a profile's AUC per category) stay in the JSON.
        columns = REAL_COLUMNS if section == "real_set" else tuple(k for k, v in rows[0].items()
                                                                   if not isinstance(v, (dict, list)))
        name = "eval.csv" if section == "real_set" else f"eval_{section}.csv"
        with (out / name).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({c: "" if r.get(c) is None else r[c] for c in columns} for r in rows)


def main(
    eval_dir: Path = typer.Argument(Path("data/eval"), help="The evaluation set (scripts/make_eval_set.py)."),
    out: Path = typer.Option(Path("out/eval"), "--out", "-o", help="Runs, eval.json and eval.csv."),
    paper_models: Optional[Path] = typer.Option(None, file_okay=False,
                                                help="Folder with labeler/, scorer/, embedder/ for the paper "
                                                     "profile (scripts/build_tiny_models.py); none: lite only."),
    paper_per_category: int = typer.Option(2, min=1, help="Clips per category the paper profile runs on."),
    repeats: int = typer.Option(20, min=1, help="Repeats of the review-ranking swap experiment."),
    family_sizes: list[int] = typer.Option([10, 100, 1000], "--family-size", min=3,
                                           help="Unique-label counts of the synthetic families (make bench-k: all "
                                                "sizes up to 100 000)."),
) -> None:
    """Measure label quality on the evaluation set: one row per profile."""
    try:
        report = {"real_set": real_set_rows(eval_dir, out, paper_models, paper_per_category)}
    except TruthError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    print_real_set(report["real_set"])
    report["scenes"] = [row.pop("scenes") for row in report["real_set"]]
    print_rows("Broad scenes against the AudioSet top level of the categories (harbour left out; see "
               "auditoryhum.quality.scenes)", report["scenes"], SCENE_HEADINGS)

    report["synthetic_families"] = synthetic_rows(family_sizes)
    print_rows("k selection on synthetic label sets of known group count (±20 %: within a fifth of the truth)",
               report["synthetic_families"], FAMILY_HEADINGS)

    report["review_ranking"] = review_ranking_rows(eval_dir, repeats)
    print_rows("Review ranking: precision at the top of each rank, labels swapped on purpose (10 % of clips)",
               report["review_ranking"], RANKING_HEADINGS)

    write(out, report)
    Console().print(f"wrote {out / 'eval.json'} and {out / 'eval.csv'}")


if __name__ == "__main__":
    typer.run(main)
