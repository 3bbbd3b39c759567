"""The offline scorer against the former one, same clips, same run: swapped-label AUC and scoring throughput.

    python benchmarks/bench_scorer.py [--eval data/eval] [--items 4000]

Former: the cosine between a label's embedding and the probability-weighted mean of the embeddings of the clip's
ten strongest class names (the tags its proposals carried). Now: backends/tagbridge.py (the label's class
distribution against the clip's lift over AudioSet's base rates, from all 521 probabilities).

AUC: every clip of the evaluation set (scripts/make_eval_set.py) scored against every category's description;
the clip's own against the others. Throughput: ``--items`` items of three labels (a clip's top classes, as the
labeler proposes them) in batches of 32 with warm caches, as the aligner calls the scorer; tagging is not counted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from auditoryhum.audio import load
from auditoryhum.backends import ScoreItem, Scores
from auditoryhum.backends.yamnet import short_name
from auditoryhum.config import Settings
from auditoryhum.models import Models
from auditoryhum.quality.measures import swapped_label_auc
from auditoryhum.quality.truth import load_truth


class FormerBridge:
    """The former tag-bridge scorer, kept here as the baseline."""

    def __init__(self, embedder, class_names):
        self.embedder, self.scorer_id = embedder, "former-tag-bridge"
        embedder.embed(list(dict.fromkeys(short_name(n).lower() for n in class_names)))

    def score_batch(self, items):
        texts = list(dict.fromkeys(t for item in items for t in [*item.labels,
                                                                 *(short_name(n).lower() for n, _ in item.tags)]))
        row = {t: i for i, t in enumerate(texts)}
        vectors = self.embedder.embed(texts)
        out = []
        for item in items:
            weights = np.array([max(s, 0.0) for _, s in item.tags], dtype=np.float32)
            clip = weights @ vectors[[row[short_name(n).lower()] for n, _ in item.tags]]
            clip /= max(float(np.linalg.norm(clip)), 1e-12)
            out.append(Scores(vectors[[row[t] for t in item.labels]] @ clip, clip))
        return out


def items_of(probs: np.ndarray, names: list[str], labels: list[str] | None = None) -> list[ScoreItem]:
    """What a YAMNet proposal carries: its ten strongest classes as tags, every class's probability."""
    out = []
    for p in probs:
        top = np.argsort(-p)
        own = labels or [short_name(names[i]).lower() for i in top[:3]]
        out.append(ScoreItem(own, [(names[i], float(p[i])) for i in top[:10]], p))
    return out


def throughput(scorer, items: list[ScoreItem]) -> float:
    scorer.score_batch(items[:64])  # warm the caches
    start = time.perf_counter()
    for i in range(0, len(items), 32):
        scorer.score_batch(items[i : i + 32])
    return len(items) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=Path, default=Path("data/eval"))
    parser.add_argument("--items", type=int, default=4000)
    args = parser.parse_args()
    truth = load_truth(args.eval / "truth.csv")
    models = Models(Settings())
    names = models.tagger.class_names
    probs = np.concatenate([models.tagger.tag([load(path, 16_000)]) for path in truth.paths])
    categories = truth.names
    descriptions = [truth.descriptions[c] for c in categories]
    own = [categories.index(c) for c in truth.categories]
    scorers = {"former bridge": FormerBridge(models.embedder, names), "tag bridge (lift)": models.scorer}
    many = items_of(np.resize(probs, (args.items, probs.shape[1])), names)
    rows = {}
    for name, scorer in scorers.items():
        scores = np.stack([s.scores for s in scorer.score_batch(items_of(probs, names, descriptions))])
        rows[name] = (swapped_label_auc(scores, own), throughput(scorer, many))
    base = rows["former bridge"][1]
    table = Table(title=f"Offline scorers: {len(truth.paths)} clips, {len(categories)} categories; "
                        f"{args.items} items of 3 labels")
    for column in ("scorer", "swapped AUC", "items/s", "× former"):
        table.add_column(column, justify="left" if column == "scorer" else "right")
    for name, (auc, rate) in rows.items():
        table.add_row(name, f"{auc:.3f}", f"{rate:,.0f}", f"{rate / base:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
