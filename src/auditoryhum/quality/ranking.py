"""Which review ranking puts wrong labels first: a label-swap experiment on clips of known categories.

Each clip has a proposal of two or more labelers (the real ones; with one real labeler, a ``reference`` labeler that
proposes the clip's category description is added, so that there is something to disagree with). In each repeat a
``swap`` fraction of the clips gets one labeler's answer (chosen at random) replaced by another category's
description. The real aligner scores every proposal and keeps the best-aligned label; a kept label is *wrong* when it
is a swapped-in one. Each review rank (:mod:`auditoryhum.review.rank`) orders the clips, and its precision at the
top 1 %, 5 % and 10 % is the share of wrong kept labels there, averaged over the repeats.

    python -m auditoryhum.quality.ranking AUDIO_DIR   # clips in one folder per category
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from auditoryhum import datasets
from auditoryhum.config import Settings
from auditoryhum.models import Models
from auditoryhum.pipeline import audio_loader
from auditoryhum.quality.measures import precision_at
from auditoryhum.review.rank import RANKS, suspect_order
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.stages.labeler import LabelerStage, proposal_of
from auditoryhum.v1 import pipeline_pb2 as pb

FRACTIONS = (0.01, 0.05, 0.10)
REFERENCE = "reference"  # model_id of the labeler that proposes the category's description


def with_reference(proposal: pb.LabelProposal, description: str) -> pb.LabelProposal:
    """The proposal with a ``reference`` labeler that proposes ``description`` added after its own labeler(s)."""
    answers = list(proposal.labelers) or [pb.LabelerOutput(model_id=proposal.model_id, prompt_id=proposal.prompt_id,
                                                            raw_text=proposal.raw_text, labels=proposal.labels,
                                                            tags=proposal.tags)]
    return proposal_of(proposal.clip, [*answers, pb.LabelerOutput(model_id=REFERENCE, raw_text=description,
                                                           labels=[description])])


def swap_experiment(proposals: Sequence[pb.LabelProposal], categories: Sequence[str], descriptions: Mapping[str, str],
                    aligner: AlignerStage, *, swap: float = 0.1, repeats: int = 20, seed: int = 0,
                    fractions: Sequence[float] = FRACTIONS) -> list[dict]:
    """One row per review rank: its mean precision at each fraction, and the mean count of wrong kept labels.

    ``proposals``: one per clip, of two or more labelers; ``categories``: each clip's; ``descriptions``: the label
    text swapped in for each category (at least two categories)."""
    if len(proposals) != len(categories) or not proposals:
        raise ValueError("one category per proposal, and at least one proposal")
    if any(len(p.labelers) < 2 for p in proposals):
        raise ValueError("every proposal needs two or more labelers (add the reference labeler: with_reference)")
    if len(set(categories)) < 2 or not set(categories) <= set(descriptions):
        raise ValueError("at least two categories, each with a description")
    rng = random.Random(seed)
    n_swapped = max(1, round(swap * len(proposals)))
    precision = {rank: {f: [] for f in fractions} for rank in RANKS}
    wrong_counts = []
    for _ in range(repeats):
        chosen = set(rng.sample(range(len(proposals)), n_swapped))
        swapped, injected = [], {}
        for i, (p, category) in enumerate(zip(proposals, categories)):
            if i in chosen:
                other = descriptions[rng.choice(sorted(c for c in descriptions if c != category))]
                j = rng.randrange(len(p.labelers))
                answers = list(p.labelers)
                answers[j] = pb.LabelerOutput(model_id=answers[j].model_id, raw_text=other, labels=[other],
                                              tags=answers[j].tags)
                p = proposal_of(p.clip, answers)
                injected[i] = other
            swapped.append(p)
        alignments = [out.message for outs in aligner.handle_batch(swapped) for out in outs]
        if len(alignments) != len(swapped) or not all(isinstance(a, pb.Alignment) for a in alignments):
            raise ValueError("the aligner could not score every proposal")
        wrong = [injected.get(i) == a.best_label for i, a in enumerate(alignments)]
        wrong_counts.append(sum(wrong))
        scores, spread = [a.best_score for a in alignments], [a.disagreement for a in alignments]
        for rank in RANKS:
            for f, value in precision_at(suspect_order(scores, spread, rank), wrong, fractions).items():
                precision[rank][f].append(value)
    base = float(np.mean(wrong_counts)) / len(proposals)
    return [{"rank": rank, **{f"p@{f:.0%}": float(np.mean(precision[rank][f])) for f in fractions},
             "wrong_kept": float(np.mean(wrong_counts)), "swapped": n_swapped, "clips": len(proposals),
             "base_rate": base}
            for rank in RANKS]


def measure_folder(audio_dir: Path, settings: Settings, models: Models | None = None, *,
                   descriptions: Mapping[str, str] | None = None, **experiment) -> list[dict]:
    """:func:`swap_experiment` on a folder of clips with one sub-folder per category, labelled by the settings'
    labelers (plus the reference labeler when there is one). ``descriptions``: category → label text swapped in
    (default: the folder names)."""
    models = models or Models(settings)
    found = datasets.load(str(audio_dir), settings.layout, class_from_folder=True)
    load = audio_loader(settings)
    stage = LabelerStage(models.labelers, load, max_words=settings.max_words)
    clips = list(found.clips(found.name))
    proposals = [out.message for i in range(0, len(clips), settings.batch_size)
                 for outs in stage.handle_batch(clips[i : i + settings.batch_size]) for out in outs
                 if isinstance(out.message, pb.LabelProposal) and out.message.clip.ground_truth]
    categories = [p.clip.ground_truth for p in proposals]
    descriptions = descriptions or {c: c.replace("_", " ") for c in categories}
    if len(models.labelers) == 1:
        proposals = [with_reference(p, descriptions[c]) for p, c in zip(proposals, categories)]
    aligner = AlignerStage(models.scorer, load, models.scorer_rate, embedder=lambda: models.embedder)
    return swap_experiment(proposals, categories, descriptions, aligner, **experiment)


def read_descriptions(truth: Path) -> dict[str, str]:
    """category → description from a CSV with those two columns (the evaluation set's truth.csv)."""
    with truth.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"category", "description"} <= set(rows[0]):
        raise ValueError(f"{truth}: needs 'category' and 'description' columns")
    return {r["category"]: r["description"] for r in rows}


def main(audio_dir: Path = typer.Argument(..., exists=True, file_okay=False,
                                          help="Clips in one sub-folder per category."),
         truth: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                              help="CSV with category and description columns (default: the "
                                                   "folder names are the descriptions)."),
         swap: float = typer.Option(0.1, min=0.0, max=1.0, help="Fraction of clips with one answer swapped."),
         repeats: int = typer.Option(20, min=1), seed: int = typer.Option(0)) -> None:
    """Precision of each review rank at the top 1 %, 5 % and 10 % (labelers: the AUDITORYHUM_* settings)."""
    try:
        descriptions = read_descriptions(truth) if truth else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--truth") from None
    rows = measure_folder(audio_dir, Settings(), descriptions=descriptions, swap=swap, repeats=repeats, seed=seed)
    table = Table(title=f"{rows[0]['clips']} clips, {rows[0]['swapped']} swapped per repeat, {repeats} repeats; "
                        f"wrong kept labels {rows[0]['wrong_kept']:.1f} (base rate {rows[0]['base_rate']:.3f})")
    columns = [k for k in rows[0] if k.startswith("p@")]
    for name in ("rank", *columns):
        table.add_column(name)
    for row in rows:
        table.add_row(row["rank"], *(f"{row[c]:.3f}" for c in columns))
    Console().print(table)


if __name__ == "__main__":
    typer.run(main)
