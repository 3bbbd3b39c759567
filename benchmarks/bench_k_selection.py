"""k selection on the synthetic label families (auditoryhum.quality.synthetic), old form against new.

For every family (paraphrase groups, mixed sub-types) × clip counts (balanced, Zipf) × size, one row per
criterion: the true group count, the chosen k, whether it is within ±20 %, NMI against the true groups and the
seconds the selection took (embedding the labels not included).

    python benchmarks/bench_k_selection.py [--sizes 10 100 1000 10000 100000] [--criteria plateau linear]

Time on the shared 2-core machine: about 15 minutes up to U = 10 000 (both criteria), and roughly 10 minutes more
per 100 000-label family and criterion (plateau, paraphrase/zipf: 523 s of selection).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from auditoryhum.quality.synthetic import SIZES, family_rows  # noqa: E402
from auditoryhum.taxonomy.selection import CRITERIA  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=CRITERIA)
    args = parser.parse_args()
    console = Console()
    if console.width < 150:  # the table has 3 + 4 columns per criterion; wrap nothing
        console = Console(width=150)
    start = time.perf_counter()
    results = {c: family_rows(args.sizes, criterion=c) for c in args.criteria}
    table = Table(title="k selection on synthetic label families")
    for col in ("family", "U", "true k", *(f"{c} {h}" for c in args.criteria for h in ("k", "±20%", "NMI", "s"))):
        table.add_column(col, justify="left" if col == "family" else "right")
    for rows in zip(*results.values()):
        first = rows[0]
        cells = [first["family"], str(first["unique_labels"]), str(first["true_groups"])]
        for r in rows:
            hit = "yes" if r["within_20pct"] else "[red]no[/]"
            cells += [str(r["k"]), hit, f"{r['nmi']:.3f}", f"{r['seconds']:.1f}"]
        table.add_row(*cells)
    console.print(table)
    for c, rows in results.items():
        hits = sum(r["within_20pct"] for r in rows)
        console.print(f"{c}: {hits}/{len(rows)} within ±20 %, selection {sum(r['seconds'] for r in rows):.0f} s")
    console.print(f"total {time.perf_counter() - start:.0f} s (embedding included)")


if __name__ == "__main__":
    main()
