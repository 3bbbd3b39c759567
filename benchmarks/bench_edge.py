"""Edge recognisers on the demo set and the evaluation set: size, latency and accuracy of the cnn (YAMNet's
first layers + an MLP), the head on YAMNet's embeddings and the tagger-as-classifier baseline.

    python benchmarks/bench_edge.py [--demo data/demo] [--eval data/eval] [--out out/bench-edge] [--seed 0]

Each set: the embedded run (`auditoryhum run`, the evaluation set with --class-from-folder; kept and reused
if OUT/<set>-run/taxonomy.json exists), then `auditoryhum train` into OUT/<set>-model. Accuracy and macro-F1 are
on the test split (clips of recordings no model trained on; the truth is each clip's cluster); latency is ms per
second of audio on one core, int8, including the front end (and YAMNet for the head and the baseline). Targets
(issue 18): CNN ≤ 250 KB int8, ≤ 5 ms per second of audio, accuracy within 5 points of the head.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from auditoryhum.edge.build import build
from auditoryhum.edge.card import TARGETS, table


def ensure_run(source: Path, run: Path, class_from_folder: bool) -> None:
    if (run / "taxonomy.json").is_file():
        return
    cmd = [sys.executable, "-m", "auditoryhum", "run", str(source), "--out", str(run)]
    subprocess.run(cmd + (["--class-from-folder"] if class_from_folder else []), check=True,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("data/demo"))
    parser.add_argument("--eval", type=Path, default=Path("data/eval"))
    parser.add_argument("--out", type=Path, default=Path("out/bench-edge"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    console = Console(width=120)  # the table, unwrapped, in logs too
    rows, results = [], {}
    for name, source, by_folder in (("demo", args.demo, False), ("eval", args.eval, True)):
        run = args.out / f"{name}-run"
        ensure_run(source, run, by_folder)
        metrics = build(run, args.out / f"{name}-model", seed=args.seed, epochs=args.epochs,
                        log=lambda line, n=name: console.print(f"[{n}] {line}", highlight=False))
        results[name] = {"classes": len(metrics["classes"]), "split": metrics["split"], "table": table(metrics)}
        rows += [(name, len(metrics["classes"]), metrics["split"]["test"], r) for r in table(metrics)]
    out = Table(title="edge recognisers (test split; int8; one core)")
    for column in ("set", "classes", "test clips", "model", "int8 KB", "float KB", "ms / s audio", "accuracy",
                   "macro-F1"):
        out.add_column(column)
    lines = ["| set | classes | test clips | model | int8 KB | float KB | ms / s audio | accuracy | macro-F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, n_classes, n_test, r in rows:
        kb = "-" if r["int8_kb"] is None else f"{r['int8_kb']:.1f}"
        fkb = "-" if r["float_kb"] is None else f"{r['float_kb']:.1f}"
        cells = [name, str(n_classes), str(n_test), r["model"], kb, fkb, f"{r['ms_per_s']:.2f}",
                 f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}"]
        out.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(out)
    for name, res in results.items():
        by = {r["model"]: r for r in res["table"]}
        if "cnn" in by and "head" in by:
            gap = 100 * (by["head"]["accuracy"] - by["cnn"]["accuracy"])
            verdict = (f"{name}: CNN {by['cnn']['int8_kb']:.0f} KB (target ≤ {TARGETS['cnn_int8_kb']}), "
                       f"{by['cnn']['ms_per_s']:.2f} ms/s (≤ {TARGETS['cnn_ms_per_s']}), accuracy {gap:+.1f} points "
                       f"behind the head (≤ {TARGETS['cnn_accuracy_gap_points']})")
            console.print(verdict, highlight=False)
            lines.append(f"\n{verdict}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
