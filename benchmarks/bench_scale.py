"""The scale benchmark: N short clips through the distributed stack, then M more joining the living taxonomy.

    python benchmarks/bench_scale.py --clips 100000 --more 10000 --out out/bench-scale

Clips: 1-s cuts of the evaluation set's real recordings, 17 known categories (benchmarks/scale_clips.py, cached
in data/scale/). The stack is the distributed default of `make up`: a Kafka broker, Triton serving the models, the
four services (started beforehand, not timed), review auto-accepting. Phase 1: `auditoryhum ingest` of the N
clips as dataset "scale" until its taxonomy is on the taxonomy topic: clips/s end to end, each consumer group's
lag and each process's memory sampled every few seconds (PNG plots), the taxonomy's build time and its agreement
with the true categories. Baseline, same run and clips: the embedded pipeline (`auditoryhum run`'s) on a subset.
Phase 2: M more clips as dataset "scale-more" of taxonomy "scale" (`ingest --taxonomy scale`), each assigned at
once to the built taxonomy (`ClipAssignment` on the assignments topic): latency from its final label and from its
ingest, by Kafka record timestamps, and the share flagged novel.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import scale_clips  # this folder is on sys.path when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]
PORT_BASE = 31600  # Kafka 31600-1, Triton 31620-2, gRPC 31651-4, metrics 31661-4, review UI 31671
DATASET, MORE = "scale", "scale-more"
GROUPS = ("labeler", "aligner", "review", "clusterer")


def proc_memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB: resident now, and its peak so far."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """:func:`proc_memory_mb` summed over a process and its children: Triton's models live in its backend stubs."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    rss = hwm = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            r, h = proc_memory_mb(p)
        except (OSError, KeyError):  # gone, or a kernel thread
            continue
        rss, hwm = rss + r, hwm + h
        todo.extend(children.get(p, ()))
    return rss, hwm


def percentile_row(values_ms: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values_ms, dtype=np.float64)
    return tuple(float(np.percentile(a, q)) for q in (50, 95, 99))


def at_fraction(samples: list["Sample"], start: float, end: float, fraction: float) -> "Sample":
    """The sample nearest to ``fraction`` of the way from ``start`` to ``end``."""
    target = start + fraction * (end - start)
    return min(samples, key=lambda s: abs(s.t - target))


@dataclass
class Sample:
    t: float  # seconds since the first ingest started
    lag: dict[str, int]
    rss: dict[str, float]
    hwm: dict[str, float]


class Sampler(threading.Thread):
    """Every ``every_s``: each consumer group's lag (Kafka's admin API) and each process's VmRSS/VmHWM."""

    def __init__(self, bootstrap: str, pids: dict[str, int], t0: float, every_s: float = 2.0):
        super().__init__(daemon=True)
        self.bootstrap, self.pids, self.t0, self.every_s = bootstrap, pids, t0, every_s
        self.samples: list[Sample] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        from auditoryhum import topics
        from auditoryhum.bus import BusError
        from auditoryhum.bus.kafka import group_lag

        groups = {f"auditoryhum-{name}": topics.CONSUMES[name] for name in GROUPS}
        while not self.stopped.is_set():
            t = time.monotonic() - self.t0
            try:
                lag = {g.removeprefix("auditoryhum-"): n for g, n in group_lag(self.bootstrap, groups).items()}
            except BusError:
                lag = {}
            rss, hwm = {}, {}
            for name, pid in self.pids.items():
                try:
                    rss[name], hwm[name] = (tree_memory_mb if name == "triton" else proc_memory_mb)(pid)
                except (OSError, KeyError):
                    pass
            self.samples.append(Sample(t, lag, rss, hwm))
            self.stopped.wait(self.every_s)


def topic_records(bootstrap: str, topic: str, timeout_s: float = 600.0):
    """(timestamp ms, key, message) of every committed record now on ``topic``, outside any consumer group: the
    Kafka timestamps are the producers' (CreateTime), the moment each stage published."""
    from auditoryhum.bus.kafka import read_topics

    for record in read_topics(bootstrap, [topic], timeout_s=timeout_s):
        yield record.timestamp_ms, record.key, record.message()


def ingest(stack, manifest: Path, dataset: str, shards: int, extra: list[str] = ()) -> float:
    """`auditoryhum ingest` of ``manifest`` in ``shards`` processes at once (shard 0 announces); its seconds."""
    base = [sys.executable, "-m", "auditoryhum", "ingest", str(manifest), "--bootstrap", stack.bootstrap,
            "--dataset", dataset, "--shard-count", str(shards), *extra]
    t0 = time.monotonic()
    runs = [subprocess.Popen(base + ["--shard-index", str(i)] + ([] if i == 0 else ["--no-announce"]),
                             stdout=subprocess.DEVNULL) for i in range(shards)]
    if any(run.wait() != 0 for run in runs):
        raise RuntimeError(f"auditoryhum ingest {manifest} failed")
    return time.monotonic() - t0


def embedded_baseline(manifest: Path) -> tuple[int, float]:
    """The embedded pipeline (what `auditoryhum run` runs) on ``manifest``, models loaded before the clock."""
    from auditoryhum import pipeline
    from auditoryhum.config import Settings
    from auditoryhum.models import Models

    settings = Settings()
    models = Models(settings)
    models.scorer, models.labeler
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = pipeline.run(manifest, Path(tmp) / "out", settings, dataset="scale-embedded", models=models)
        seconds = time.perf_counter() - t0
    return result.summary["labelled"], seconds


def plot(samples: list[Sample], marks: dict[str, float], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    t = [s.t for s in samples]
    for what, ylabel, series in (("lag", "records waiting (consumer lag)", lambda s: s.lag),
                                 ("rss", "resident memory (MiB)", lambda s: s.rss)):
        fig, ax = plt.subplots(figsize=(10, 4.5))
        names = sorted({name for s in samples for name in series(s)})
        for name in names:
            ax.plot(t, [series(s).get(name, np.nan) for s in samples], label=name, linewidth=1.2)
        for label, x in marks.items():
            ax.axvline(x, color="grey", linestyle=":", linewidth=0.8)
            ax.text(x, ax.get_ylim()[1], label, rotation=90, va="top", ha="right", fontsize=7, color="grey")
        ax.set_xlabel("seconds since ingest started")
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"{what}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def phase1(stack, manifest: Path, n: int, shards: int, t0: float) -> dict:
    """Ingest → taxonomy of ``n`` clips; the figures, from the topics' record timestamps."""
    from auditoryhum import topics
    from auditoryhum.taxonomy.metrics import agreement
    from auditoryhum.v1 import pipeline_pb2 as pb

    started_ms = time.time() * 1000
    ingest_s = ingest(stack, manifest, DATASET, shards)
    # Built = on the taxonomy topic (polled there, not over gRPC: a busy clusterer may answer late).
    taxonomy_ms = taxonomy = None
    while taxonomy is None:
        time.sleep(1.0)
        if stopped := [name for name, alive in stack.status().items() if not alive]:
            raise RuntimeError(f"{', '.join(stopped)} stopped; see {stack.home}")
        taxonomy_ms, taxonomy = next(((ts, m) for ts, _, m in topic_records(stack.bootstrap, topics.TAXONOMY)
                                      if isinstance(m, pb.Taxonomy) and m.dataset == DATASET), (None, None))
    # A clip's cluster: its label's (the labels representation), or its own (class-vector).
    by_label = {lc.label: c.cluster_id for c in taxonomy.clusters for lc in c.labels}
    by_clip = {cc.clip_id: cc.cluster_id for cc in taxonomy.clip_clusters}
    finals, clusters, truth, sealed_ms, last_final_ms = 0, [], [], 0, 0
    for ts, _, m in topic_records(stack.bootstrap, topics.FINAL_LABELS):
        if isinstance(m, pb.FinalLabel) and m.clip.dataset == DATASET:
            finals += 1
            last_final_ms = max(last_final_ms, ts)
            clusters.append(by_clip[m.clip.clip_id] if by_clip else by_label.get(m.label, -1))
            truth.append(m.clip.ground_truth)
        elif isinstance(m, pb.DatasetSealed) and m.dataset == DATASET:
            sealed_ms = ts
    build_started_ms = taxonomy.created_at.ToMilliseconds()  # the builder stamps it as the build begins
    scores = agreement(clusters, truth) or {}
    end_to_end_s = (taxonomy_ms - started_ms) / 1000
    return {
        "clips": n, "final_labels": finals, "taxonomy_clips": taxonomy.clips, "ingest_s": ingest_s, "ingest_shards": shards,
        "end_to_end_s": end_to_end_s, "clips_per_s": n / end_to_end_s,
        "final_labels_out_s": (last_final_ms - started_ms) / 1000,
        "sealed_to_taxonomy_s": (taxonomy_ms - max(sealed_ms, last_final_ms)) / 1000,
        "build_s": (taxonomy_ms - build_started_ms) / 1000,
        "k": taxonomy.k, "true_k": len(set(truth)), "unique_labels": taxonomy.unique_labels,
        "nmi": scores.get("nmi"), "ari": scores.get("ari"), "purity": scores.get("purity"),
        "marks_s": {"ingest done": ingest_s, "last final label": (last_final_ms - started_ms) / 1000,
                    "taxonomy": end_to_end_s},
    }


def phase2(stack, manifest: Path, m: int, shards: int, t0: float, wait_s: float) -> dict:
    """``m`` more clips joining taxonomy "scale": each clip's assignment latency (ingest → final label →
    ClipAssignment), or why the phase could not run."""
    from auditoryhum import topics
    from auditoryhum.v1 import pipeline_pb2 as pb

    help_text = subprocess.run([sys.executable, "-m", "auditoryhum", "ingest", "--help"], capture_output=True,
                               text=True).stdout
    if "--taxonomy" not in help_text:
        return {"skipped": "`auditoryhum ingest` has no --taxonomy option in this build (helper B's change)"}
    started = time.monotonic() - t0
    ingest_s = ingest(stack, manifest, MORE, shards, ["--taxonomy", DATASET])
    # Assignments arrive as the final labels do; stop once every clip has one, or nothing new came for wait_s.
    seen, last_change = 0, time.monotonic()
    while seen < m and time.monotonic() - last_change < wait_s:
        time.sleep(2)
        now = sum(1 for _, _, a in topic_records(stack.bootstrap, topics.ASSIGNMENTS)
                  if isinstance(a, pb.ClipAssignment) and a.clip.dataset == MORE)
        if now != seen:
            seen, last_change = now, time.monotonic()
    ingested = {msg.clip_id: ts for ts, _, msg in topic_records(stack.bootstrap, topics.CLIPS)
                if isinstance(msg, pb.Clip) and msg.dataset == MORE}
    finals = {msg.clip.clip_id: ts for ts, _, msg in topic_records(stack.bootstrap, topics.FINAL_LABELS)
              if isinstance(msg, pb.FinalLabel) and msg.clip.dataset == MORE}
    assignments = [(ts, a) for ts, _, a in topic_records(stack.bootstrap, topics.ASSIGNMENTS)
                   if isinstance(a, pb.ClipAssignment) and a.clip.dataset == MORE]
    # The first build, and any rebuild the novel clips' policy triggered meanwhile.
    builds = sum(1 for _, _, t in topic_records(stack.bootstrap, topics.TAXONOMY)
                 if isinstance(t, pb.Taxonomy) and t.dataset == DATASET)
    result = {"clips": m, "ingest_s": ingest_s, "final_labels": len(finals), "taxonomy_records": builds,
              "marks_s": {"more ingested": started + ingest_s}, **assignment_figures(assignments, finals, ingested)}
    assigned = result["assigned"]
    if not assigned:
        result["skipped"] = (f"no ClipAssignment on {topics.ASSIGNMENTS} within {wait_s:g} s of the last change "
                             f"({len(finals)} final labels out): streaming assignment is not in this build")
    return result


def assignment_figures(assignments: list[tuple[int, object]], finals: dict[str, int],
                       ingested: dict[str, int]) -> dict:
    """Latency of each clip's first ClipAssignment (Kafka timestamps, ms) from its final label and from its ingest,
    the novel share and the assigned clusters' agreement with the true categories."""
    from auditoryhum.taxonomy.metrics import agreement

    first: dict[str, tuple[int, object]] = {}
    for ts, a in sorted(assignments, key=lambda pair: pair[0]):
        first.setdefault(a.clip.clip_id, (ts, a))  # a replayed final label is assigned again: count it once
    from_final = [ts - finals[cid] for cid, (ts, _) in first.items() if cid in finals]
    from_ingest = [ts - ingested[cid] for cid, (ts, _) in first.items() if cid in ingested]
    novel = sum(a.novel for _, a in first.values())
    figures = {"assigned": len(first), "novel": novel, "novel_share": novel / len(first) if first else None,
               "agreement": agreement([a.cluster_id for _, a in first.values()],
                                      [a.clip.ground_truth for _, a in first.values()])}
    if from_final:
        figures["final_to_assignment_ms"] = percentile_row(from_final)
    if from_ingest:
        figures["ingest_to_assignment_ms"] = percentile_row(from_ingest)
    return figures


def memory_rows(samples: list[Sample], start: float, end: float) -> list[tuple]:
    early, late = at_fraction(samples, start, end, 0.10), at_fraction(samples, start, end, 1.0)
    rows = []
    for name in sorted(late.rss, key=lambda n: (n not in GROUPS, GROUPS.index(n) if n in GROUPS else n)):
        peak = max(s.hwm.get(name, 0) for s in samples)
        rows.append((name, early.rss.get(name, np.nan), late.rss.get(name, np.nan), peak))
    return rows


def report(baseline: tuple[int, float] | None, p1: dict, p2: dict, memory: list[tuple], lag_peaks: dict,
           startup_s: float, backend: str, console: Console) -> None:
    n = p1["clips"]
    table = Table(title=f"Scale: {n:,} clips of 1 s (16 kHz WAV, 17 categories), distributed ({backend}), 2 cores")
    for col in ("what", "seconds", "clips/s", "× embedded"):
        table.add_column(col, justify="left" if col == "what" else "right")
    embedded_rate = None
    if baseline:
        b_n, b_s = baseline
        embedded_rate = b_n / b_s
        table.add_row(f"baseline: embedded pipeline (`auditoryhum run`), first {b_n:,} clips", f"{b_s:.1f}",
                      f"{embedded_rate:.1f}", "1.00")
    ratio = f"{p1['clips_per_s'] / embedded_rate:.2f}" if embedded_rate else ""
    table.add_row("distributed: ingest → taxonomy on its topic", f"{p1['end_to_end_s']:.1f}",
                  f"{p1['clips_per_s']:.1f}", ratio)
    table.add_row(f"  auditoryhum ingest ({p1['ingest_shards']} shard(s)): every clip published",
                  f"{p1['ingest_s']:.1f}", f"{n / p1['ingest_s']:.0f}", "")
    table.add_row("  ingest → last final label on its topic", f"{p1['final_labels_out_s']:.1f}",
                  f"{n / p1['final_labels_out_s']:.1f}", "")
    table.add_row("  last final label (dataset sealed) → taxonomy on its topic", f"{p1['sealed_to_taxonomy_s']:.1f}",
                  "", "")
    table.add_row("    of which the build (k selection, naming), from the taxonomy's created_at",
                  f"{p1['build_s']:.1f}", "", "")
    table.add_row("  not timed: Kafka + models + services start-up", f"{startup_s:.1f}", "", "")
    console.print(table)

    quality = Table(title="The taxonomy against the recordings' categories")
    for col in ("clips", "unique labels", "k", "true k", "NMI", "ARI", "purity"):
        quality.add_column(col, justify="right")
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    quality.add_row(f"{n:,}", f"{p1['unique_labels']:,}", str(p1["k"]), str(p1["true_k"]), fmt(p1["nmi"]),
                    fmt(p1["ari"]), fmt(p1["purity"]))
    console.print(quality)

    mem = Table(title="Memory per process (MiB): resident at 10 % and 100 % of phase 1, peak (VmHWM) of the run; "
                      "Triton: the server and its backend stubs")
    for col in ("process", "RSS at 10 %", "RSS at 100 %", "change", "peak", "peak consumer lag"):
        mem.add_column(col, justify="left" if col == "process" else "right")
    for name, early, late, peak in memory:
        mem.add_row(name, f"{early:.0f}", f"{late:.0f}", f"{late - early:+.0f}", f"{peak:.0f}",
                    f"{lag_peaks[name]:,}" if name in lag_peaks else "")
    console.print(mem)

    more = Table(title=f"Living taxonomy: {p2.get('clips', 0):,} more clips joining taxonomy {DATASET!r}")
    for col in ("what", "p50 ms", "p95 ms", "p99 ms"):
        more.add_column(col, justify="left" if col == "what" else "right")
    if p2.get("assigned"):
        for key, what in (("final_to_assignment_ms", "final label → ClipAssignment"),
                          ("ingest_to_assignment_ms", "ingest → ClipAssignment")):
            if key in p2:
                more.add_row(what, *(f"{v:.0f}" for v in p2[key]))
        console.print(more)
        console.print(f"assigned {p2['assigned']:,} of {p2['clips']:,} ({p2['final_labels']:,} final labels); novel "
                      f"{p2['novel']:,} ({100 * p2['novel_share']:.1f} %); taxonomy records of {DATASET!r}: "
                      f"{p2['taxonomy_records']} (1 = no rebuild); assigned clusters against the categories: "
                      + (", ".join(f"{k} {p2['agreement'][k]:.3f}" for k in ("nmi", "ari", "purity"))
                         if p2["agreement"] else "–"))
    else:
        console.print(f"living taxonomy: not measured: {p2.get('skipped')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100_000, help="phase 1: clips through the stack")
    parser.add_argument("--more", type=int, default=10_000, help="phase 2: clips joining the built taxonomy")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-scale", help="tables, PNGs, JSON")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "scale", help="the clips' cache")
    parser.add_argument("--baseline", type=int, default=5_000, help="clips of the embedded baseline (0: none)")
    parser.add_argument("--shards", type=int, default=1, help="ingest processes at once")
    parser.add_argument("--sample-s", type=float, default=2.0, help="seconds between lag and memory samples")
    parser.add_argument("--no-triton", action="store_true", help="models inside each service instead of Triton")
    parser.add_argument("--assignment-wait-s", type=float, default=120.0,
                        help="phase 2 ends once no new assignment came for this long")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("KAFKA_START_TIMEOUT", "300")  # a busy machine starts the JVM slowly

    t0 = time.monotonic()
    main_csv = scale_clips.ensure(args.data, "main", args.clips)
    more_csv = scale_clips.ensure(args.data, "more", args.more) if args.more else None
    baseline_csv = scale_clips.manifest(args.data, "main", min(args.baseline, args.clips)) if args.baseline else None
    console = Console(record=True, width=132)
    console.print(f"clips ready in {time.monotonic() - t0:.1f} s: {main_csv}" + (f", {more_csv}" if more_csv else ""))

    baseline = embedded_baseline(baseline_csv) if baseline_csv else None  # alone on the machine, before the stack
    if baseline:
        console.print(f"baseline: {baseline[0]:,} clips embedded in {baseline[1]:.1f} s")

    from auditoryhum.service.local import LocalStack

    backend = "models in each service" if args.no_triton else "Triton serving the models"
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        stack = LocalStack(Path(tmp), kafka_port=PORT_BASE, port_base=PORT_BASE + 51, metrics_base=PORT_BASE + 61,
                           triton_port=None if args.no_triton else PORT_BASE + 20, ui_port=PORT_BASE + 71,
                           allowed_uris=f"{args.data.resolve()}/")
        t_up = time.monotonic()
        try:
            stack.up()
            startup_s = time.monotonic() - t_up
            console.print(f"stack up in {startup_s:.1f} s ({backend}); phase 1: {args.clips:,} clips")
            pids = {name: int((stack.home / f"{name}.pid").read_text()) for name in GROUPS}
            pids["kafka"] = int((stack.home / "kafka" / "kafka.pid").read_text())
            if not args.no_triton:
                pids["triton"] = int((stack.home / "triton" / "tritonserver.pid").read_text())
            t0 = time.monotonic()
            sampler = Sampler(stack.bootstrap, pids, t0, args.sample_s)
            sampler.start()
            p1 = phase1(stack, main_csv, args.clips, args.shards, t0)
            p1_end = p1["end_to_end_s"]
            console.print(f"phase 1: taxonomy after {p1_end:.1f} s; phase 2: {args.more:,} more clips")
            p2 = phase2(stack, more_csv, args.more, args.shards, t0, args.assignment_wait_s) if more_csv \
                else {"skipped": "--more 0"}
            sampler.stopped.set()
            sampler.join()
        finally:
            stack.down()

    samples = sampler.samples
    phase1_samples = [s for s in samples if s.t <= p1_end + args.sample_s]
    memory = memory_rows(phase1_samples, 0.0, p1_end)
    lag_peaks = {g: max(s.lag.get(g, 0) for s in samples) for g in GROUPS}
    report(baseline, p1, p2, memory, lag_peaks, startup_s, backend, console)
    pngs = plot(samples, {**p1["marks_s"], **p2.get("marks_s", {})}, args.out)
    (args.out / "bench-scale.json").write_text(json.dumps({
        "clips": args.clips, "more": args.more, "backend": backend, "startup_s": startup_s,
        "baseline": {"clips": baseline[0], "seconds": baseline[1]} if baseline else None,
        "phase1": p1, "phase2": p2,
        "memory_mb": [dict(zip(("process", "rss_10pct", "rss_100pct", "peak_hwm"), row)) for row in memory],
        "samples": [vars(s) for s in samples]}, indent=1, default=float))
    console.save_text(str(args.out / "bench-scale.txt"))
    console.print(f"written: {args.out / 'bench-scale.txt'}, {args.out / 'bench-scale.json'}, "
                  + ", ".join(map(str, pngs)))


if __name__ == "__main__":
    main()
