"""Model backends behind small interfaces, so a stage never knows whether a model runs in-process or on Triton.

- :class:`Labeler` describes clips in short comma-separated labels (the paper's MLLMs; offline: the YAMNet tagger).
- :class:`Scorer` scores label texts against a clip (the paper's Human-CLAP; offline: the tag-bridge scorer).
- :class:`TextEmbedder` embeds label texts (all-MiniLM-L6-v2 shipped in a wheel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from auditoryhum.audio import Audio

# Models load from local folders (or a hub cache) only: nothing may reach a model hub at run time unless the
# environment says otherwise. Set here, before any backend imports transformers or huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class BackendUnavailable(RuntimeError):
    """A model backend that cannot run on this machine (a missing package, no GPU, no hub), with the reason."""


@dataclass(frozen=True)
class Description:
    """A labeler's answer for one clip: its raw text and, when it has them, the tagger classes behind it (the
    strongest as named tags; every class's probability, in the tagger's order)."""

    raw_text: str
    tags: list[tuple[str, float]] = field(default_factory=list)
    probabilities: tuple[float, ...] = ()


class Labeler(Protocol):
    model_id: str
    prompt_id: str
    sample_rate: int

    def describe(self, clips: Sequence[Audio], hints: Sequence[str] | None = None) -> list[Description]: ...


@dataclass(frozen=True)
class ScoreItem:
    """Labels to score against one clip. ``audio`` loads the waveform, for scorers that need it; ``tags`` and
    ``class_probabilities`` are the tagger's evidence, when the proposal carries it."""

    labels: Sequence[str]
    tags: Sequence[tuple[str, float]] = ()
    class_probabilities: Sequence[float] = ()
    audio: Callable[[], Audio] | None = None


@dataclass(frozen=True)
class Scores:
    """One score per label; and the clip's audio embedding when the scorer has one (CLAP, the tag bridge)."""

    scores: np.ndarray
    audio_embedding: np.ndarray | None = None


class Scorer(Protocol):
    scorer_id: str

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Scores]: ...


class TextEmbedder(Protocol):
    model_id: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 rows, one per text."""
        ...
