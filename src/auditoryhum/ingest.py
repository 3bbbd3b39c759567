"""Listing a folder of audio, and the clip message of one file (with its stable id).

Nothing in the folder vanishes: every entry that is not read as a clip (no audio extension, hidden, a dangling
link as git-annex and DVC leave for content not fetched, a link loop, a FIFO or device) is listed as skipped with
its reason. Names are taken as the OS gives them: one that is not UTF-8 keeps its bytes in the clip id and travels
as a ``file://`` URL (:func:`auditoryhum.audio.path_uri`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from auditoryhum import audio
from auditoryhum.errors import TransientError
from auditoryhum.v1 import pipeline_pb2 as pb


@dataclass(frozen=True)
class Skipped:
    path: str  # printable: the path, or its file:// URL where the name is not UTF-8
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


@dataclass
class Scan:
    root: Path
    files: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # reported with the reason, never silently ignored


def scan(root: Path) -> Scan:
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    result = Scan(root)
    st = root.stat()
    _walk(root, result, {(st.st_dev, st.st_ino)})
    result.files.sort()
    result.skipped.sort(key=lambda s: s.path)
    return result


def _walk(folder: Path, result: Scan, above: set[tuple[int, int]]) -> None:
    """``above``: the folders on the way down (device, inode), so a link back to one is a loop, not a descent."""
    def skip(path: Path, reason: str) -> None:
        result.skipped.append(Skipped(audio.path_uri(path), reason))

    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        return skip(folder, f"cannot list the folder: {exc.strerror}")
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith("."):
            hidden = "hidden folder, not searched" if entry.is_dir() else "hidden file"
            skip(path, f"{hidden} (its name starts with '.'); rename it to include it")
            continue
        try:
            st = path.stat()  # through links
        except OSError as exc:
            skip(path, _broken_link(path, exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in above:
                skip(path, "symlink loop: links back to a folder above it")
            else:
                _walk(path, result, above | {(st.st_dev, st.st_ino)})
        elif not stat.S_ISREG(st.st_mode):
            skip(path, f"not a regular file ({audio.file_kind(st.st_mode)}): only regular files are read as audio")
        elif path.suffix.lower() in audio.AUDIO_EXTENSIONS:
            result.files.append(path)
        else:
            skip(path, f"no audio extension ({', '.join(sorted(audio.AUDIO_EXTENSIONS))})")


def _broken_link(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop: the link leads back to itself"
    if exc.errno == errno.ENOENT and path.is_symlink():
        return (f"dangling symlink: its target {audio.path_uri(os.readlink(path))} does not exist (git-annex, DVC: "
                "fetch the content first)")
    return f"cannot read: {exc.strerror or exc}"


def clip_id(dataset: str, relative: str) -> str:
    # os.fsencode: a name the OS gave as bytes that are not UTF-8 hashes as those bytes (UTF-8 ones as before).
    return hashlib.sha1(os.fsencode(f"{dataset}/{relative}")).hexdigest()[:16]


def clip(dataset: str, relative: str, uri: str, *, ground_truth: str = "", split: str = "") -> pb.Clip:
    """The clip message of one file: ``relative`` (its path under the dataset root) gives the stable id."""
    message = pb.Clip(clip_id=clip_id(dataset, relative), uri=uri, dataset=dataset, ground_truth=ground_truth,
                      split=split)
    try:  # header facts only; a file that fails here is dead-lettered by the labeler with the reason
        info = audio.probe(uri)
        message.sample_rate, message.channels = info.samplerate, info.channels
        if info.frames < audio.UNKNOWN_LENGTH:  # a streaming encoder's file: the length is known once decoded
            message.duration_s = info.duration
    except (audio.AudioError, TransientError):  # a store away for now: the labeler waits for it, not ingest
        pass
    return message
