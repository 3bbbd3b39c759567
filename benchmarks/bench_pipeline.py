"""Embedded-pipeline throughput on 10-s clips, against baselines measured in the same run.

    python benchmarks/bench_pipeline.py --clips 1200

Baselines: decoding alone (read + resample to 16 kHz) and the tagger alone on pre-computed features — the
model's own cost, the ceiling no pipeline around it can beat. The pipeline row is everything included:
ingest, decode, features, YAMNet, text embeddings, scoring, review, clustering and writing every output.
Memory is the process RSS sampled at each quarter of the run: flat means the numbers stay level.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


def bench_args(doc: str) -> argparse.Namespace:
    """--clips N and --data DIR; the N clips of 10 s are made from the real recordings if DIR lacks them."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1200)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "bench")
    args = parser.parse_args()
    if len(list(args.data.glob("*.wav"))) != args.clips:
        subprocess.run([sys.executable, str(ROOT / "scripts/make_demo_set.py"), str(args.data), "--bench",
                        str(args.clips)], check=True)
    return args


def main() -> None:
    args = bench_args(__doc__)

    from auditoryhum import audio, pipeline
    from auditoryhum.backends import features
    from auditoryhum.config import Settings
    from auditoryhum.models import Models

    t0 = time.perf_counter()
    settings = Settings()
    models = Models(settings)
    models.scorer, models.labeler  # load every model now: startup is reported on its own row
    startup = time.perf_counter() - t0
    paths = sorted(args.data.glob("*.wav"))
    n = len(paths)

    samples: list[float] = []
    done = [0]
    scored_at = [0.0]

    def on_clip_done() -> None:
        done[0] += 1
        if done[0] % max(1, n // 4) == 0:
            samples.append(rss_mb())
        if done[0] == n:
            scored_at[0] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = pipeline.run(args.data, Path(out), settings, models=models, on_clip_done=on_clip_done)
        run_s = time.perf_counter() - t0
        stream_s = scored_at[0] - t0
    assert result.summary["labelled"] == n, result.summary

    # Baselines after the run, so the run's memory samples are its own.
    with ThreadPoolExecutor(settings.workers) as pool:  # the baselines get the pipeline's parallelism
        t0 = time.perf_counter()
        decoded = list(pool.map(lambda p: audio.load(p, 16_000), paths))
        decode_s = time.perf_counter() - t0
        patches = [features.patches(a.samples, models.tagger.patch_hop) for a in decoded]
        chunks = [np.concatenate(patches[i : i + settings.batch_size // settings.workers])
                  for i in range(0, n, settings.batch_size // settings.workers)]
        t0 = time.perf_counter()
        list(pool.map(models.tagger.patch_logits, chunks))
        model_s = time.perf_counter() - t0
    del decoded, patches, chunks

    ceiling = n / model_s
    table = Table(title=f"Embedded pipeline, {n} clips of 10 s (44.1 kHz WAV), {settings.batch_size}/batch, "
                        f"YAMNet patch hop {settings.patch_hop_s:g} s")
    for col in ("what", "seconds", "clips/s", "× model ceiling"):
        table.add_column(col, justify="right" if col != "what" else "left")
    table.add_row("model load (once)", f"{startup:.1f}", "", "")
    table.add_row(f"baseline: decode + resample only ({settings.workers} threads)", f"{decode_s:.2f}",
                  f"{n / decode_s:.0f}", "")
    table.add_row(f"baseline: YAMNet only ({settings.workers} threads) = ceiling", f"{model_s:.2f}", f"{ceiling:.0f}",
                  "1.00")
    table.add_row("auditoryhum run: every clip labelled and scored", f"{stream_s:.2f}", f"{n / stream_s:.1f}",
                  f"{n / stream_s / ceiling:.2f}")
    table.add_row("auditoryhum run (everything: + review, taxonomy, report)", f"{run_s:.2f}", f"{n / run_s:.1f}",
                  f"{n / run_s / ceiling:.2f}")
    table.add_row("… with model load", f"{run_s + startup:.2f}", f"{n / (run_s + startup):.1f}",
                  f"{n / (run_s + startup) / ceiling:.2f}")
    console = Console()
    console.print(table)
    console.print("RSS at each quarter of the run (MB): " + ", ".join(f"{s:.0f}" for s in samples)
                  + f"; peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


if __name__ == "__main__":
    main()
