"""The recognisers a service answers with: a MODEL_DIR's models by name, run in this process or on Triton.

A service holds one :class:`SceneRecognisers`. The default model is loaded at start (a service that cannot answer
must not report SERVING); another model of the same MODEL_DIR is loaded on its first request. Whatever runs it, an
answer names the exact ONNX file (:func:`model_id`) and the taxonomy its classes come from.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from auditoryhum.audio import Audio
from auditoryhum.backends import features
from auditoryhum.edge.recogniser import MANIFEST, MODELS, Recogniser, RecogniserError, read_manifest

__all__ = ["MODELS", "Loaded", "SceneRecognisers", "manifest", "model_file", "model_id"]


class SceneModel(Protocol):
    """What a service needs of a recogniser: :class:`~auditoryhum.edge.recogniser.Recogniser` in-process,
    :class:`~auditoryhum.edge.triton.TritonRecogniser` on Triton."""

    classes: list[dict]

    def classify(self, clips: Sequence[Audio]) -> np.ndarray: ...


@dataclass(frozen=True)
class Loaded:
    recogniser: SceneModel
    model: str
    precision: str
    model_id: str
    taxonomy_version: int
    patch_hop: int  # spectrogram frames between patches (recogniser.json's patch_hop_frames)

    def patches(self, samples: int) -> int:
        """How many patches a clip of ``samples`` 16 kHz samples gives (:func:`~auditoryhum.backends.features.
        patches`, counted without computing them)."""
        frames = 1 + (max(samples, features.N_FFT) - features.N_FFT) // features.HOP_LENGTH
        return 1 + (max(frames, features.PATCH_FRAMES) - features.PATCH_FRAMES) // self.patch_hop


def manifest(model_dir: str | Path) -> dict:
    """``recogniser.json`` of a MODEL_DIR; :class:`RecogniserError` naming what is missing."""
    if not Path(model_dir).is_dir():
        raise RecogniserError(f"{model_dir}: no such folder (AUDITORYHUM_RECOGNISER_DIR); train a model with "
                              "`auditoryhum train RUN_OUT --out MODEL_DIR`")
    return read_manifest(model_dir)


def model_file(model_dir: str | Path, model: str, precision: str) -> Path:
    """The ONNX file of ``model`` at ``precision``; :class:`RecogniserError` if the MODEL_DIR has none."""
    entry = manifest(model_dir).get("models", {}).get(model)
    if not entry or not entry.get(precision):
        raise RecogniserError(f"{Path(model_dir) / MANIFEST} has no {model!r} model at {precision!r} precision")
    path = Path(model_dir) / entry[precision]
    if not path.is_file():
        raise RecogniserError(f"{path} is missing ({model}, {precision})")
    return path


def model_id(model_dir: str | Path, model: str, precision: str) -> str:
    """``<model>-<precision>@<first 12 hex digits of the ONNX file's sha256>``: names the exact weights."""
    digest = hashlib.sha256(model_file(model_dir, model, precision).read_bytes()).hexdigest()[:12]
    return f"{model}-{precision}@{digest}"


class SceneRecognisers:
    """A MODEL_DIR's models by name, each loaded once (thread-safe). ``triton``: a
    :class:`~auditoryhum.edge.triton.TritonRecogniser` that runs the one model its Triton server loaded; the local
    MODEL_DIR then gives the classes and the file the model id names (mount the same folder on both)."""

    def __init__(self, model_dir: str | Path, default: str = "cnn", precision: str = "int8", threads: int = 1,
                 triton: SceneModel | None = None):
        self.model_dir, self.default, self.precision, self.threads = Path(model_dir), default, precision, threads
        self.triton = triton
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()

    def get(self, model: str = "") -> Loaded:
        """The model named (empty: the default); :class:`RecogniserError` when the MODEL_DIR cannot give it."""
        model = model or self.default
        with self._lock:
            if model not in self._loaded:
                self._loaded[model] = self._load(model)
            return self._loaded[model]

    def _load(self, model: str) -> Loaded:
        if self.triton is not None and model != self.triton.model:
            raise RecogniserError(f"this service runs the {self.triton.model!r} model on Triton "
                                  f"({self.triton.triton_model}); another model needs its own Triton model")
        precision = self.triton.precision if self.triton is not None else self.precision
        about = manifest(self.model_dir)
        recogniser = self.triton or Recogniser(str(self.model_dir), model=model, precision=precision,
                                               threads=self.threads)
        return Loaded(recogniser, model, precision, model_id(self.model_dir, model, precision),
                      int(about.get("taxonomy", {}).get("version") or 0),
                      int(about.get("patch_hop_frames") or features.PATCH_HOP))
