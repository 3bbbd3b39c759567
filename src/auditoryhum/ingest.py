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
from typing import Iterator

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
    result = Scan(root)
    for found in walk(root):
        (result.skipped if isinstance(found, Skipped) else result.files).append(found)
    result.skipped.sort(key=lambda s: s.path)
    return result


def walk(root: Path) -> Iterator[Path | Skipped]:
    """The audio files below ``root`` and the entries skipped, streamed: each folder's names sorted, so the files
    come in sorted path order (part by part) while only the folders on the way down are held in memory."""
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    st = root.stat()
    yield from _walk(root, {(st.st_dev, st.st_ino)})


def _walk(folder: Path, above: set[tuple[int, int]]) -> Iterator[Path | Skipped]:
    """``above``: the folders on the way down (device, inode), so a link back to one is a loop, not a descent."""
    def skip(path: Path, reason: str) -> Skipped:
        return Skipped(audio.path_uri(path), reason)

    try:
        entries = sorted((e.name for e in os.scandir(folder)))
    except OSError as exc:
        yield skip(folder, f"cannot list the folder: {exc.strerror}")
        return
    for name in entries:
        path = folder / name
        if name.startswith("."):
            hidden = "hidden folder, not searched" if path.is_dir() else "hidden file"
            yield skip(path, f"{hidden} (its name starts with '.'); rename it to include it")
            continue
        try:
            st = path.stat()  # through links
        except OSError as exc:
            yield skip(path, _broken_link(path, exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in above:
                yield skip(path, "symlink loop: links back to a folder above it")
            else:
                yield from _walk(path, above | {(st.st_dev, st.st_ino)})
        elif not stat.S_ISREG(st.st_mode):
            yield skip(path, f"not a regular file ({audio.file_kind(st.st_mode)}): only regular files are read as "
                             "audio")
        elif path.suffix.lower() in audio.AUDIO_EXTENSIONS:
            yield path
        else:
            yield skip(path, f"no audio extension ({', '.join(sorted(audio.AUDIO_EXTENSIONS))})")


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


def clip(dataset: str, relative: str, uri: str, *, ground_truth: str = "", split: str = "", taxonomy: str = "",
         probe: bool = True) -> pb.Clip:
    """The clip message of one file: ``relative`` (its path under the dataset root) gives the stable id.
    ``probe``: read the file's header for its rate, channels and duration (one read per file; without it the
    labeler learns them when it decodes the clip)."""
    message = pb.Clip(clip_id=clip_id(dataset, relative), uri=uri, dataset=dataset, ground_truth=ground_truth,
                      split=split, taxonomy=taxonomy)
    if not probe:
        return message
    try:  # header facts only; a file that fails here is dead-lettered by the labeler with the reason
        info = audio.probe(uri)
        message.sample_rate, message.channels = info.samplerate, info.channels
        if info.frames < audio.UNKNOWN_LENGTH:  # a streaming encoder's file: the length is known once decoded
            message.duration_s = info.duration
    except (audio.AudioError, TransientError):  # a store away for now: the labeler waits for it, not ingest
        pass
    return message
