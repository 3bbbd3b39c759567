"""CPU latency per second of audio on one core, the way a device runs a recogniser: the log-mel front end, then
the model on each new 0.96 s patch every 0.48 s (and, for the head and the baseline, YAMNet on each patch first).
Medians of repeated runs over the patches of ``SECONDS`` of real audio."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from auditoryhum.backends import features
from auditoryhum.edge.recogniser import session

SECONDS = 10.0
REPEATS = 15


def _median_ms(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    fn()  # warm-up: first-run allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def signal(samples: np.ndarray) -> np.ndarray:
    """``SECONDS`` of audio: the given clip looped (a device hears sound, not silence)."""
    n = int(SECONDS * features.SAMPLE_RATE)
    return np.resize(samples, n).astype(np.float32)


def measure(samples: np.ndarray, models: dict[str, Path], tagger=None) -> dict[str, float]:
    """ms per second of audio of: ``frontend``, ``yamnet`` (with a single-thread ``tagger``), and each model in
    ``models`` (name → ONNX path; its input is patches for ``cnn*``, embeddings otherwise)."""
    audio = signal(samples)
    patches = features.patches(audio)
    out = {"frontend": _median_ms(lambda: features.patches(audio)) / SECONDS}
    embeddings = None
    if tagger is not None:
        out["yamnet"] = _median_ms(lambda: tagger.patch_outputs(patches)) / SECONDS
        embeddings = tagger.patch_embeddings(patches)
    for name, path in models.items():
        s = session(path, threads=1)
        x = patches if name.startswith("cnn") else embeddings
        if x is None:
            continue
        feed = {s.get_inputs()[0].name: x}
        out[name] = _median_ms(lambda: s.run(None, feed)) / SECONDS
    return out
