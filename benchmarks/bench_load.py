"""The gRPC APIs under rising load: AlignerService/Score and ClustererService/Classify at concurrency 1 to 1,024,
from ghz (a Go load generator, `go install github.com/bojand/ghz/cmd/ghz@v0.121.0`), against real service
processes (a Kafka broker, the aligner and the clusterer with their models inside) on this machine.

    python benchmarks/bench_load.py [--levels 1,8,64,128,256,1024] [--requests 2] [--ghz PATH]

Each level sends ``max(100, requests x concurrency)`` calls. While it runs, a probe checks gRPC health every
50 ms on a channel of its own (a balancer's view: does the service look alive?) and the service's RSS is sampled
every 100 ms. Ratios are against this run's own baselines: RPS against concurrency 1, health against the idle
service. Score sends a 2 s recording inline (88 KB), Classify two labels against a taxonomy of 8 labels built at
start-up from final labels put on Kafka. To measure other code (the tables before a change), put its ``src`` first
on PYTHONPATH: the services run whatever ``auditoryhum`` this script imports.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

import auditoryhum
from auditoryhum import topics
from auditoryhum.bus.kafka import KafkaBus, ensure_topics
from auditoryhum.service.client import wait_for_taxonomy
from auditoryhum.service.local import LocalStack
from auditoryhum.v1 import pipeline_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
CLIP = Path("/usr/share/games/lincity-ng/sounds/TraficHigh1.wav")
KAFKA_PORT, GRPC_BASE, METRICS_BASE = 30390, 30392, 30396  # the upper end of this benchmark's and its tests' range
LABELS = ["vehicle", "car engine", "birds singing", "rain", "dog barking", "church bell", "speech", "music"]
DATASET = "load"
CALLS = {  # method → (service, request as ghz's JSON)
    "auditoryhum.v1.AlignerService.Score": ("aligner", {
        "clip": {"clip_id": "load"}, "labels": ["vehicle", "rain", "birds singing"],
        "audio": base64.b64encode(CLIP.read_bytes()).decode()}),
    "auditoryhum.v1.ClustererService.Classify": ("clusterer", {"dataset": DATASET, "labels": ["car", "dog"]}),
}


class Watch:
    """Health-check latency (ms) and failures, and the service's peak RSS (MB), while a block runs."""

    def __init__(self, address: str, pid: int):
        self.address, self.pid = address, pid
        self.health_ms: list[float] = []
        self.failures, self.peak_mb = 0, 0.0
        self._stop = threading.Event()

    def __enter__(self):
        self._threads = [threading.Thread(target=self._probe), threading.Thread(target=self._sample)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join()

    def _probe(self):
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            while not self._stop.wait(0.05):
                started = time.perf_counter()
                try:
                    ok = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    ok = False
                self.health_ms.append((time.perf_counter() - started) * 1000)
                self.failures += not ok

    def _sample(self):
        while not self._stop.wait(0.1):
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def ghz(binary: str, method: str, data: dict, address: str, concurrency: int, total: int) -> dict:
    """ghz's JSON report of ``total`` calls from ``concurrency`` workers (over up to 4 connections)."""
    done = subprocess.run([binary, "--insecure", "--proto", str(ROOT / "protos/auditoryhum/v1/services.proto"),
                           "--import-paths", str(ROOT / "protos"), "--call", method, "--data", json.dumps(data),
                           "-c", str(concurrency), "-n", str(total), "--connections", str(min(4, concurrency)),
                           "--timeout", "60s", "-O", "json", address], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def build_taxonomy(stack: LocalStack) -> None:
    """Final labels on Kafka, five clips a label, then the seal: the clusterer builds the dataset's taxonomy."""
    ensure_topics(stack.bootstrap, topics.ALL, 4)
    bus = KafkaBus(stack.bootstrap, client_id="bench-load")
    clips = [pb.Clip(clip_id=f"c{i}", dataset=DATASET, uri=f"/audio/{i}.wav") for i in range(5 * len(LABELS))]
    for clip, label in zip(clips, LABELS * 5):
        bus.publish(topics.FINAL_LABELS, clip.clip_id, pb.FinalLabel(clip=clip, label=label,
                                                                      source=pb.LABEL_SOURCE_MODEL))
    bus.publish(topics.FINAL_LABELS, DATASET, pb.DatasetSealed(dataset=DATASET, final_labels=len(clips)))
    bus.flush()
    bus.close()
    wait_for_taxonomy(stack.grpc_address("clusterer"), DATASET, wait_s=180)


def idle_health(address: str, pid: int) -> np.ndarray:
    with Watch(address, pid) as watch:
        time.sleep(2)
    return np.asarray(watch.health_ms)


def level_row(report: dict, watch: Watch, concurrency: int, rps_1: float, idle_p99: float, idle_mb: float) -> list:
    details = report.get("details") or []
    ms = np.asarray([d["latency"] / 1e6 for d in details]) if details else np.zeros(1)
    ok_ms = np.asarray([d["latency"] / 1e6 for d in details if d["status"] == "OK"])
    codes = ", ".join(f"{code} {n}" for code, n in sorted(report["statusCodeDistribution"].items()))
    health = np.asarray(watch.health_ms) if watch.health_ms else np.full(1, np.nan)
    ok_rps = len(ok_ms) / (report["total"] / 1e9)
    return [str(concurrency), str(report["count"]), f"{report['rps']:.0f}", f"{ok_rps:.0f}",
            f"{ok_rps / rps_1:.2f}x" if rps_1 else "1.00x", f"{np.percentile(ms, 50):.0f}",
            f"{np.percentile(ms, 99):.0f}", f"{np.percentile(ok_ms, 99):.0f}" if len(ok_ms) else "-", codes,
            f"{np.percentile(health, 50):.1f}", f"{np.percentile(health, 99):.1f}",
            f"{np.percentile(health, 99) / idle_p99:.0f}x", str(watch.failures),
            f"{watch.peak_mb:.0f} (+{watch.peak_mb - idle_mb:.0f})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,8,64,128,256,1024")
    parser.add_argument("--requests", type=int, default=2, help="calls per level: this many per concurrent worker")
    parser.add_argument("--ghz", default=shutil.which("ghz") or str(Path.home() / "go/bin/ghz"))
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    console = Console(width=220)
    console.print(f"code under test: {Path(auditoryhum.__file__).parent}")
    with tempfile.TemporaryDirectory() as home:
        stack = LocalStack(Path(home), kafka_port=KAFKA_PORT, port_base=GRPC_BASE, metrics_base=METRICS_BASE,
                           triton_port=None, ui_port=0)
        try:
            stack.up(("aligner", "clusterer"))
            build_taxonomy(stack)
            for method, (service, data) in CALLS.items():
                address, pid = stack.grpc_address(service), int((stack.home / f"{service}.pid").read_text())
                ghz(args.ghz, method, data, address, 4, 20)  # warm: models, caches, connections
                idle = idle_health(address, pid)
                idle_p99, idle_mb = float(np.percentile(idle, 99)), rss_mb(pid)
                table = Table(title=f"{method.rsplit('.', 1)[1]} ({service}): idle health p50 "
                                    f"{np.percentile(idle, 50):.1f} ms, p99 {idle_p99:.1f} ms, RSS {idle_mb:.0f} MB")
                for column in ("conc.", "calls", "RPS", "OK/s", "OK/s vs c=1", "p50 ms", "p99 ms", "p99 OK ms",
                               "codes", "health p50 ms", "health p99 ms", "vs idle", "health fails", "RSS peak MB"):
                    table.add_column(column, justify="left" if column == "codes" else "right")
                rps_1 = 0.0
                for concurrency in levels:
                    with Watch(address, pid) as watch:
                        report = ghz(args.ghz, method, data, address, concurrency,
                                     max(100, args.requests * concurrency))
                    row = level_row(report, watch, concurrency, rps_1, idle_p99, idle_mb)
                    rps_1 = rps_1 or float(row[3])
                    table.add_row(*row)
                console.print(table)
        finally:
            stack.down()


if __name__ == "__main__":
    main()
