"""Distributed mode (Kafka + Triton + the four services) against the embedded mode, same clips, same run.

    python benchmarks/bench_distributed.py --clips 1200

Both rows are wall-clock from the first clip handed over to the taxonomy built, models already loaded: the
embedded run in this process with in-process models; the distributed run from `auditoryhum ingest` to the
clusterer's taxonomy, with Kafka, Triton (serving YAMNet and MiniLM) and the four service processes (started
beforehand, not timed) sharing this machine's cores.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_pipeline import bench_args  # this folder is on sys.path when a benchmark runs as a script
from rich.console import Console
from rich.table import Table


def main() -> None:
    args = bench_args(__doc__)

    from auditoryhum import pipeline
    from auditoryhum.config import Settings
    from auditoryhum.models import Models
    from auditoryhum.service.client import wait_for_taxonomy
    from auditoryhum.service.local import LocalStack

    n = len(list(args.data.glob("*.wav")))
    settings = Settings()
    models = Models(settings)
    models.scorer, models.labeler  # loaded before the clock starts, as the services load theirs
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        embedded = pipeline.run(args.data, Path(tmp) / "out", settings, dataset="bench-embedded", models=models)
        embedded_s = time.perf_counter() - t0
    assert embedded.summary["labelled"] == n, embedded.summary
    del models

    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(Path(tmp), kafka_port=28092, port_base=28151, metrics_base=28161,
                           triton_port=28100)
        t0 = time.perf_counter()
        stack.up()
        startup_s = time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "auditoryhum", "ingest", str(args.data), "--bootstrap",
                            stack.bootstrap, "--dataset", "bench-distributed"], check=True, stdout=subprocess.DEVNULL)
            ingest_s = time.perf_counter() - t0
            taxonomy = wait_for_taxonomy(stack.grpc_address("clusterer"), "bench-distributed", wait_s=3600)
            distributed_s = time.perf_counter() - t0
        finally:
            stack.down()
    assert taxonomy.clips == n, f"{taxonomy.clips} of {n} clips reached the taxonomy"

    table = Table(title=f"Distributed vs embedded, {n} clips of 10 s (44.1 kHz WAV), same machine, same run")
    for col in ("mode", "seconds", "clips/s", "× embedded"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    table.add_row("embedded: auditoryhum run (one process)", f"{embedded_s:.2f}", f"{n / embedded_s:.1f}", "1.00")
    table.add_row("distributed: Kafka + Triton + 4 services, ingest → taxonomy", f"{distributed_s:.2f}",
                  f"{n / distributed_s:.1f}", f"{embedded_s / distributed_s:.2f}")
    table.add_row("  of which: auditoryhum ingest (publish every clip)", f"{ingest_s:.2f}", f"{n / ingest_s:.0f}", "")
    table.add_row("  not timed: Kafka + Triton + services start-up", f"{startup_s:.1f}", "", "")
    Console().print(table)


if __name__ == "__main__":
    main()
