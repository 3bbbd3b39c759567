"""Listing a folder of audio, and the clip message of one file (with its stable id)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from auditoryhum import audio
from auditoryhum.v1 import pipeline_pb2 as pb


@dataclass
class Scan:
    root: Path
    files: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # not audio by extension; reported, never silently ignored


def scan(root: Path) -> Scan:
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    result = Scan(root)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        (result.files if path.suffix.lower() in audio.AUDIO_EXTENSIONS else result.skipped).append(path)
    return result


def clip_id(dataset: str, relative: str) -> str:
    return hashlib.sha1(f"{dataset}/{relative}".encode("utf-8")).hexdigest()[:16]


def clip(dataset: str, relative: str, uri: str, *, ground_truth: str = "", split: str = "") -> pb.Clip:
    """The clip message of one file: ``relative`` (its path under the dataset root) gives the stable id."""
    message = pb.Clip(clip_id=clip_id(dataset, relative), uri=uri, dataset=dataset, ground_truth=ground_truth,
                      split=split)
    try:  # header facts only; a file that fails here is dead-lettered by the labeler with the reason
        info = audio.probe(uri)
        message.duration_s, message.sample_rate, message.channels = info.duration, info.samplerate, info.channels
    except audio.AudioError:
        pass
    return message
