"""The lite models in-process against the same models on Triton (scripts/triton.sh), same machine, same run.

    python benchmarks/bench_triton.py [--requests 200] [--concurrency 16]

Latency: one request at a time — one clip's YAMNet tags (a 5.5 s recording, log-mel included), one new label's
MiniLM embedding; p50 and p99. Throughput: large calls back to back — 32 clips per call, 256 texts per call.
Every text is new to both embedders, whose caches would otherwise answer.

Dynamic batching: ``--concurrency`` threads each send one-row requests (one patch, one text) through the Triton
client, against the same server and model reloaded without ``dynamic_batching`` (Triton's default scheduler then
runs each request alone). Only the scheduler differs; "rows/run" is the mean batch the model executed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
LINCITY = Path("/usr/share/games/lincity-ng/sounds")
PORT = 28100  # HTTP; gRPC and metrics follow


def latencies(call: Callable[[int], object], n: int) -> np.ndarray:
    for _ in range(5):  # warm-up
        call(-1)
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        out[i] = time.perf_counter() - t0
    return out * 1000


def rate(call: Callable[[int], int], seconds: float = 3.0) -> float:
    """Items per second of back-to-back calls, each returning how many items it did."""
    call(-1)
    done, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += call(i)
        i += 1
    return done / (time.perf_counter() - t0)


def concurrent(send: Callable[[int], object], threads: int, per_thread: int) -> tuple[float, np.ndarray]:
    """Requests per second and per-request latencies (ms) of ``threads`` senders, one request in flight each."""
    lat = np.empty((threads, per_thread))

    def worker(t: int) -> None:
        for i in range(per_thread):
            t0 = time.perf_counter()
            send(t * per_thread + i)
            lat[t, i] = time.perf_counter() - t0

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return threads * per_thread / (time.perf_counter() - t0), lat.reshape(-1) * 1000


def unique_texts(n: int, tag: str) -> list[str]:
    words = ["car", "horn", "rain", "street", "dog", "bark", "bird", "song", "engine", "bell", "crowd", "wind"]
    return [f"{words[i % 12]} {words[i // 12 % 12]} {tag} {i}" for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per latency row")
    parser.add_argument("--concurrency", type=int, default=16, help="threads in the dynamic-batching rows")
    parser.add_argument("--per-thread", type=int, default=50, help="requests per thread in those rows")
    args = parser.parse_args()

    from auditoryhum import audio
    from auditoryhum.backends import features, triton
    from auditoryhum.backends.text import SentenceEmbedder
    from auditoryhum.backends.yamnet import YamnetTagger

    console = Console(width=160)
    home = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    env = {**os.environ, "TRITON_HOME_DIR": str(home), "TRITON_HTTP_PORT": str(PORT),
           "TRITON_GRPC_PORT": str(PORT + 1), "TRITON_METRICS_PORT": str(PORT + 2)}
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / "scripts/triton.sh"), "start"], env=env, check=True)
    startup = time.perf_counter() - t0
    try:
        # The control key scripts/triton.sh generated: this benchmark reloads models with and without batching.
        client = triton.TritonClient(f"127.0.0.1:{PORT + 1}", control_key=(home / "control.key").read_text())
        local_tagger, remote_tagger = YamnetTagger(), triton.TritonTagger(client)
        local_text, remote_text = SentenceEmbedder(), triton.TritonTextEmbedder(client)
        clips = [audio.load(p, 16_000) for p in sorted(LINCITY.glob("*.wav"))]
        longest = max(clips, key=lambda c: c.duration_s)
        batch = clips[:32]
        patches = np.concatenate([features.patches(c.samples) for c in clips])[:, 0]

        table = Table(title=f"Lite models in-process vs Triton (gRPC, 127.0.0.1), {os.cpu_count()} CPU cores; "
                            f"Triton start-up with both models loaded: {startup:.1f} s")
        for column in ("model", "path", "p50 ms", "p99 ms", "throughput"):
            table.add_column(column, justify="left" if column in ("model", "path") else "right")

        for name, tagger in (("in-process", local_tagger), ("Triton", remote_tagger)):
            ms = latencies(lambda i: tagger.tag([longest]), args.requests)
            per_s = rate(lambda i: len(tagger.tag(batch)))
            table.add_row(f"YAMNet, one {longest.duration_s:.1f} s clip / 32 clips", name,
                          f"{np.percentile(ms, 50):.2f}", f"{np.percentile(ms, 99):.2f}", f"{per_s:.0f} clips/s")
        for name, embedder in (("in-process", local_text), ("Triton", remote_text)):
            single, many = unique_texts(args.requests + 1, name), unique_texts(256 * 400, name + " batch")
            ms = latencies(lambda i: embedder.embed([single[i]]), args.requests)
            per_s = rate(lambda i: len(embedder.embed(many[(i + 1) * 256 : (i + 2) * 256])))
            table.add_row("MiniLM, one new text / 256 texts", name, f"{np.percentile(ms, 50):.2f}",
                          f"{np.percentile(ms, 99):.2f}", f"{per_s:.0f} texts/s")

        # Dynamic batching: the same one-row requests from many threads, with and without the batcher.
        texts = unique_texts(args.concurrency * args.per_thread + 1, "concurrent")
        senders = {
            "yamnet_patches": lambda i: client.infer("yamnet_patches", {"PATCHES": patches[i % len(patches)][None]},
                                                     ["LOGITS"]),
            "text_embedder": lambda i: client.infer("text_embedder", {"TEXT": np.array([[texts[i].encode()]],
                                                                                       dtype=np.object_)},
                                                    ["EMBEDDING"]),
        }
        for model, send in senders.items():
            for batching in (True, False):
                config = triton.repository_config(model)
                if not batching:
                    config.ClearField("dynamic_batching")
                client.load(model, config=config)
                client.wait_ready([model])
                if model == "text_embedder":  # a fresh load has an empty cache; new texts keep it missing
                    texts = unique_texts(len(texts), f"concurrent {batching}")
                send(len(texts) - 1)
                rows0, runs0 = client.statistics(model)
                per_s, ms = concurrent(send, args.concurrency, args.per_thread)
                rows, runs = client.statistics(model)
                table.add_row(f"{model}, {args.concurrency} threads of one-row requests",
                              f"Triton, {'dynamic batching' if batching else 'no batcher'}",
                              f"{np.percentile(ms, 50):.2f}", f"{np.percentile(ms, 99):.2f}",
                              f"{per_s:.0f} req/s, {(rows - rows0) / max(runs - runs0, 1):.1f} rows/run")
        console.print(table)
    finally:
        subprocess.run([str(ROOT / "scripts/triton.sh"), "stop"], env=env, check=False)


if __name__ == "__main__":
    main()
