"""Which labelers a run uses: the ``labelers`` setting, parsed.

``labelers`` is a comma-separated list of entries ``[name=]model``: ``model`` is ``yamnet`` (the YAMNet tagger
labeler), ``soundnet`` (SoundNet's Places scenes, :mod:`auditoryhum.backends.soundnet`) or an MLLM folder or hub id,
as ``labeler_model`` takes; ``name``, when given, is the labeler's model_id in the outputs (default: the model's
own id, or the folder / hub id; a model whose path holds "=" needs one). Unset: the one labeler the profile picks.

    AUDITORYHUM_LABELERS="yamnet,soundnet,qwen2-audio=/models/Qwen2-Audio-7B-Instruct"

The proposal's tags and class probabilities (the tag-bridge scorer's evidence) are the first labeler's that has
any; the scorer tags the audio itself when none has.
"""

from __future__ import annotations

from dataclasses import dataclass

YAMNET, SOUNDNET = "yamnet", "soundnet"


@dataclass(frozen=True)
class LabelerSpec:
    model: str  # "yamnet", "soundnet", or an MLLM folder or hub id
    name: str | None = None  # the model_id in the outputs; None: the model's own


def parse_labelers(text: str) -> list[LabelerSpec]:
    """``"yamnet, qwen=/models/qwen"`` → the specs, in order. Raises ValueError on an empty entry or a repeat."""
    specs = []
    for entry in text.split(","):
        name, sep, model = entry.strip().partition("=")
        if not sep:
            name, model = "", name
        name, model = name.strip(), model.strip()
        if not model or (sep and not name):
            raise ValueError(f"labelers: {entry.strip()!r} is not [name=]model (yamnet, soundnet, or an MLLM "
                             "folder or hub id)")
        specs.append(LabelerSpec(model, name or None))
    keys = [s.name or s.model for s in specs]
    if repeated := sorted({k for k in keys if keys.count(k) > 1}):
        raise ValueError(f"labelers: {', '.join(repeated)} given twice; name each one (name=model) to run it twice")
    return specs


def labeler_specs(labelers: str | None, labeler_model: str | None) -> list[LabelerSpec]:
    """The run's labelers: those listed, else the profile's one (its MLLM, or YAMNet)."""
    return parse_labelers(labelers) if labelers else [LabelerSpec(labeler_model or YAMNET)]
