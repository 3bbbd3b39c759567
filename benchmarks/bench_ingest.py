"""A million-row CSV manifest listed, sharded 8 ways (8 processes) and announced and published to a real Kafka
broker (scripts/kafka.sh on a port of its own): rows/s and each process's peak RSS, streaming `auditoryhum ingest`
against the list-everything code it replaced, measured in the same run on the same CSV.

    python benchmarks/bench_ingest.py [--rows 1000000] [--shards 8]

The baseline is ``src/auditoryhum/manifest.py`` as it was at commit :data:`BASELINE` (read with ``git show`` and
loaded as a module): it reads the whole CSV into a list of entries with a dict of every key, slices its shard and
publishes it with the plain idempotent producer. Both sides publish the same Clip messages (no header probing:
the rows name objects, as in a bucket), so the difference is the listing, the repeat check and the transactions.
Peak RSS is each process's VmHWM, polled every 50 ms while it runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "5dda2eb"  # main before manifests streamed
KAFKA_PORT = 31180  # the top of the ingest tests' port range (31100-31199)


def baseline_worker(csv_path: str, dataset: str, index: int, shards: int, bootstrap: str) -> None:
    """One shard the way ingest did it before: every entry in a list, then the shard sliced out of it."""
    from auditoryhum import ingest, topics
    from auditoryhum.bus.kafka import KafkaBus
    from auditoryhum.v1 import pipeline_pb2 as pb

    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE}:src/auditoryhum/manifest.py"],
                            capture_output=True, text=True, check=True).stdout
    old = sys.modules["baseline_manifest"] = types.ModuleType("baseline_manifest")  # dataclasses look it up
    exec(compile(source, "baseline_manifest.py", "exec"), old.__dict__)
    found = old.load(csv_path)
    bus = KafkaBus(bootstrap, client_id="bench-baseline")
    if index == 0:
        bus.publish(topics.DATASETS, dataset, pb.DatasetAnnouncement(dataset=dataset,
                                                                     expected_clips=len(found.entries)))
    for entry in found.shard(index, shards):
        bus.publish(topics.CLIPS, ingest.clip_id(dataset, entry.key),
                    pb.Clip(clip_id=ingest.clip_id(dataset, entry.key), uri=entry.uri, dataset=dataset,
                            ground_truth=entry.ground_truth))
    bus.flush()
    bus.close()


def peak_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def run_shards(commands: list[list[str]]) -> tuple[float, list[int]]:
    """Start every command at once; wall seconds until the last ends, and each one's peak RSS (kB)."""
    started = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    peaks = [0] * len(procs)
    while any(p.poll() is None for p in procs):
        for n, p in enumerate(procs):
            peaks[n] = max(peaks[n], peak_kb(p.pid) or 0)
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    for p in procs:
        if p.returncode != 0:
            raise SystemExit(f"a shard failed ({p.returncode}): {p.stderr.read()[-6000:]}")
    return seconds, peaks


def write_csv(path: Path, rows: int) -> None:
    with path.open("w") as f:
        f.write("uri,class\n")
        for start in range(0, rows, 100_000):
            f.writelines(f"clips/class{n % 50:02d}/{n:09d}.wav,class{n % 50:02d}\n"
                         for n in range(start, min(rows, start + 100_000)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--baseline-worker", nargs=5, metavar=("CSV", "DATASET", "INDEX", "SHARDS", "BOOTSTRAP"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        csv_path, dataset, index, shards, bootstrap = args.baseline_worker
        return baseline_worker(csv_path, dataset, int(index), int(shards), bootstrap)

    from auditoryhum import topics
    from auditoryhum.bus.kafka import ensure_topics

    console = Console()
    home = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    env = {**os.environ, "KAFKA_PORT": str(KAFKA_PORT), "KAFKA_CONTROLLER_PORT": str(KAFKA_PORT + 1),
           "KAFKA_HOME_DIR": str(home / "kafka"), "KAFKA_PYTHON": sys.executable,
           "KAFKA_START_TIMEOUT": os.environ.get("KAFKA_START_TIMEOUT", "180")}
    bootstrap = f"127.0.0.1:{KAFKA_PORT}"
    csv_path = home / "manifest.csv"
    write_csv(csv_path, args.rows)
    console.print(f"{args.rows:,}-row manifest: {csv_path.stat().st_size / 1e6:.0f} MB; starting Kafka on {bootstrap}")
    subprocess.run([str(ROOT / "scripts/kafka.sh"), "start"], env=env, check=True)
    try:
        ensure_topics(bootstrap, topics.ALL, 8)
        exe = str(Path(sys.executable).with_name("auditoryhum"))
        run_id = uuid.uuid4().hex[:6]
        results = {}
        for side in ("baseline", "streaming"):
            dataset = f"bench-{side}-{run_id}"
            if side == "baseline":
                commands = [[sys.executable, __file__, "--baseline-worker", str(csv_path), dataset, str(i),
                             str(args.shards), bootstrap] for i in range(args.shards)]
            else:
                commands = [[exe, "ingest", str(csv_path), "--dataset", dataset, "--bootstrap", bootstrap,
                             "--no-probe", "--shard-count", str(args.shards), "--shard-index", str(i)]
                            + ([] if i == 0 else ["--no-announce"]) for i in range(args.shards)]
            console.print(f"{side}: {args.shards} processes…")
            results[side] = run_shards(commands)
    finally:
        subprocess.run([str(ROOT / "scripts/kafka.sh"), "stop"], env=env)

    table = Table(title=f"{args.rows:,}-row CSV manifest, {args.shards} shards in {args.shards} processes, "
                        "listed + announced + published to Kafka (no probing)")
    for col in ("code path", "wall s", "rows/s", "peak RSS per process, max MB", "mean MB", "RSS vs baseline",
                "rows/s vs baseline"):
        table.add_column(col, justify="right" if col != "code path" else "left")
    base_s, base_peaks = results["baseline"]
    for side, label in (("baseline", f"list everything ({BASELINE})"), ("streaming", "streaming (this tree)")):
        seconds, peaks = results[side]
        table.add_row(label, f"{seconds:.1f}", f"{args.rows / seconds:,.0f}", f"{max(peaks) / 1024:.0f}",
                      f"{sum(peaks) / len(peaks) / 1024:.0f}", f"{max(peaks) / max(base_peaks):.2f}x",
                      f"{base_s / seconds:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
