"""The training set's inputs: every clip's log-mel patches; for the head and the baseline YAMNet's embedding
and logits of each patch (one pass of the tagger); for the cnn the pooled output of YAMNet's first layers.

Patches are cut every ``hop`` frames (16: three times YAMNet's density, more views of few clips for training);
grading uses every third of them, the patches a device cuts every 48 frames (:meth:`Features.rows` ``graded``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auditoryhum.audio import AudioError, load
from auditoryhum.backends import features
from auditoryhum.edge import front
from auditoryhum.edge.dataset import TrainingSet
from auditoryhum.edge.errors import EdgeError


@dataclass
class Features:
    patches: np.ndarray  # [P, 1, 96, 64] log-mel patches of every clip, clip after clip
    clip_of: np.ndarray  # [P] the clip (index into TrainingSet.clips) of each patch
    embeddings: np.ndarray | None = None  # [P, 1024] YAMNet pooled features
    tagger_logits: np.ndarray | None = None  # [P, 521]
    front: np.ndarray | None = None  # [P, C] pooled output of YAMNet's first layers (auditoryhum.edge.front)
    hop: int = features.PATCH_HOP

    def rows(self, clip_indexes: list[int], graded: bool = False) -> np.ndarray:
        """The patch rows of these clips, in clip order; ``graded``: only those at YAMNet's 48-frame hop."""
        chosen = np.isin(self.clip_of, clip_indexes)
        if graded:
            starts = np.r_[0, np.flatnonzero(np.diff(self.clip_of)) + 1]
            position = np.arange(len(self.clip_of)) - np.repeat(starts, np.diff(np.r_[starts, len(self.clip_of)]))
            chosen &= position % max(1, features.PATCH_HOP // self.hop) == 0
        return np.flatnonzero(chosen)


TRAIN_HOP = 16


def compute(data: TrainingSet, tagger=None, hop: int = TRAIN_HOP, front_model=None) -> Features:
    """Patches of every clip of ``data`` (16 kHz, YAMNet's framing); with a ``tagger``, its outputs too; with a
    ``front_model`` (:func:`auditoryhum.edge.front.model`), its pooled features."""
    per_clip = []
    for clip in data.clips:
        try:
            audio = load(clip.path, features.SAMPLE_RATE)
        except AudioError as exc:
            raise EdgeError(f"{clip.path}: {exc}") from None
        per_clip.append(features.patches(audio.samples, hop))
    out = Features(np.concatenate(per_clip), np.repeat(np.arange(len(per_clip)), [len(p) for p in per_clip]),
                   hop=hop)
    if tagger is not None:
        out.tagger_logits, out.embeddings = tagger.patch_outputs(out.patches)
    if front_model is not None:
        out.front = front.pooled(front_model, out.patches)
    return out
