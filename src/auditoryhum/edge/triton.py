"""The scene recogniser on a Triton server (deploy/triton/models/scene_recogniser), with the in-process
Recogniser's interface.

Triton runs only the per-patch half: the log-mel patches are computed here with the same front end, sent in requests
of up to the model's ``max_batch_size`` (all at once, so its dynamic batcher merges them with other callers'), and
each clip's probabilities are the mean of its patches' softmax with the in-process Recogniser's own functions. Errors are
those of :class:`~auditoryhum.backends.triton.TritonClient`: a server away or busy is a TransientError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from auditoryhum.audio import Audio
from auditoryhum.backends import features
from auditoryhum.backends.triton import TritonClient
from auditoryhum.edge.recogniser import RecogniserError, pool, softmax
from auditoryhum.edge.serving import manifest


class TritonRecogniser:
    """``classes`` come from the local MODEL_DIR's recogniser.json; the server's model must be loaded from the same
    folder (its parameter ``model_dir``). ``model`` and ``precision`` are the server's (its parameters)."""

    sample_rate = features.SAMPLE_RATE

    def __init__(self, client: TritonClient, model_dir: str | Path, triton_model: str = "scene_recogniser"):
        self.client, self.triton_model = client, triton_model
        config = client.config(triton_model)
        params = client.parameters(triton_model)
        self.model, self.precision = params.get("model") or "cnn", params.get("precision") or "int8"
        about = manifest(model_dir)
        self.classes: list[dict] = about["classes"]
        self.patch_hop = int(about.get("patch_hop_frames") or features.PATCH_HOP)
        self._max_batch = int(config.get("max_batch_size", 0)) or 512

    def patch_logits(self, patches: np.ndarray) -> np.ndarray:
        """``[n, C]`` logits for log-mel patches ``[n, 1, 96, 64]``."""
        rows = patches.reshape(len(patches), *patches.shape[-2:])
        chunks = [{"PATCHES": rows[i : i + self._max_batch]} for i in range(0, len(rows), self._max_batch)]
        logits = np.concatenate([a["LOGITS"] for a in self.client.infer_many(self.triton_model, chunks, ["LOGITS"])])
        if logits.shape[1] != len(self.classes):
            raise RecogniserError(f"triton {self.triton_model} answers {logits.shape[1]} classes, the local "
                                  f"recogniser.json has {len(self.classes)}: load it from the same MODEL_DIR")
        return logits

    def classify(self, clips: Sequence[Audio]) -> np.ndarray:
        """``[len(clips), C]`` probabilities of 16 kHz clips."""
        for clip in clips:
            if clip.sample_rate != self.sample_rate:
                raise RecogniserError(f"the recogniser needs {self.sample_rate} Hz audio, got {clip.sample_rate}")
        if not clips:
            return np.zeros((0, len(self.classes)), np.float32)
        per_clip = [features.patches(clip.samples, self.patch_hop) for clip in clips]
        return pool(softmax(self.patch_logits(np.concatenate(per_clip))), [len(p) for p in per_clip])
