"""Inference from a MODEL_DIR that ``auditoryhum train`` wrote: onnxruntime only (no torch), as a device runs it.

MODEL_DIR holds ``recogniser.json`` (format ``auditoryhum.recogniser/1``: the classes, the front end, the models'
files and tensor names) and each model as float and int8 ONNX. Each model maps one input per 0.96 s patch to
``logits [N, C]``; a clip's probabilities are the mean over its patches of softmax(logits). The ``cnn`` takes
YAMNet's log-mel patches (its file holds YAMNet's first layers and a trained MLP: no tagger); the ``head`` takes
YAMNet's 1024-d embedding of each patch, so it runs the tagger too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from auditoryhum.audio import Audio
from auditoryhum.backends import features
from auditoryhum.edge.errors import EdgeError

FORMAT = "auditoryhum.recogniser/1"
MANIFEST = "recogniser.json"
MODELS = ("cnn", "head")
PRECISIONS = ("float", "int8")


class RecogniserError(EdgeError):
    """A model folder, model or clip the recogniser cannot use; the message names the file or setting."""


def read_manifest(model_dir: str | Path) -> dict:
    """``recogniser.json`` of ``model_dir``, checked for its format."""
    path = Path(model_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecogniserError(f"{path}: not found; MODEL_DIR must be a folder `auditoryhum train` wrote") from None
    except (OSError, ValueError) as exc:
        raise RecogniserError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise RecogniserError(f"{path}: format {found!r}, expected {FORMAT!r}")
    return manifest


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session; ``threads=1`` is a device's single core (0: onnxruntime's default, every core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise RecogniserError(f"{path}: not a usable ONNX model ({str(exc).splitlines()[0]})") from None


class Recogniser:
    """Scene probabilities of clips from a trained MODEL_DIR.

    ``model``: ``cnn`` (YAMNet's first layers + MLP on log-mel patches, no tagger) or ``head`` (on YAMNet
    embeddings); ``precision``: ``int8`` or ``float``; ``threads``: onnxruntime intra-op threads (1 = one core,
    as on a device).
    """

    def __init__(self, model_dir: str | Path, model: str = "cnn", precision: str = "int8", threads: int = 1,
                 tagger=None):
        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(self.model_dir)
        if model not in MODELS:
            raise RecogniserError(f"model {model!r}: choose one of {', '.join(MODELS)}")
        if precision not in PRECISIONS:
            raise RecogniserError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        spec = self.manifest.get("models", {}).get(model)
        if not spec:
            raise RecogniserError(f"{self.model_dir / MANIFEST}: no {model!r} model in this folder "
                                  f"(trained: {', '.join(self.manifest.get('models', {})) or 'none'})")
        path = self.model_dir / spec[precision]
        if not path.is_file():
            raise RecogniserError(f"{path}: missing; {MANIFEST} names it as the {precision} {model} model")
        self.model, self.precision = model, precision
        self.classes: list[dict] = self.manifest["classes"]
        self.patch_hop = int(self.manifest.get("patch_hop_frames", features.PATCH_HOP))
        self._session = session(path, threads)
        self._input, self._output = spec["input"], spec["output"]
        self._tagger = None
        if model == "head":
            if tagger is None:
                from auditoryhum.backends.yamnet import YamnetTagger

                tagger = YamnetTagger(threads=threads)
            self._tagger = tagger

    @property
    def labels(self) -> list[str]:
        return [c["composite_label"] for c in self.classes]

    def patch_inputs(self, patches: np.ndarray) -> np.ndarray:
        """What the model takes for log-mel patches ``[n, 1, 96, 64]``: the patches, or their YAMNet embeddings."""
        return self._tagger.patch_embeddings(patches) if self._tagger is not None else patches

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """``[n, C]`` logits of model inputs (see :meth:`patch_inputs`)."""
        if not len(inputs):
            return np.zeros((0, len(self.classes)), np.float32)
        return self._session.run([self._output], {self._input: np.ascontiguousarray(inputs, np.float32)})[0]

    def classify(self, clips: Sequence[Audio]) -> np.ndarray:
        """``[len(clips), C]`` probabilities (rows sum to 1), columns in :attr:`classes` order; clips at 16 kHz."""
        for i, clip in enumerate(clips):
            if clip.sample_rate != features.SAMPLE_RATE:
                raise RecogniserError(f"clip {i}: the recogniser needs {features.SAMPLE_RATE} Hz audio, "
                                      f"got {clip.sample_rate} Hz")
        if not clips:
            return np.zeros((0, len(self.classes)), np.float32)
        per_clip = [features.patches(clip.samples, self.patch_hop) for clip in clips]
        probs = softmax(self.logits(self.patch_inputs(np.concatenate(per_clip))))
        return pool(probs, [len(p) for p in per_clip])


def pool(patch_probs: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Clip probabilities: the mean of each clip's consecutive patch rows (``counts`` patches per clip)."""
    bounds = np.cumsum([0, *counts])
    return np.stack([patch_probs[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])]).astype(np.float32)
