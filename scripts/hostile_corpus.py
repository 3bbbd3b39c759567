"""A corpus of hostile and careless audio input, written into a folder (nothing binary is committed).

Each kind is a file (or link, FIFO, folder) that once crashed a run, exhausted memory, reached the model as
garbage or vanished from every output (issue 16). ``write(folder)`` returns what each must become:

- ``labelled``: real audio in an awkward wrapper; it must get a label;
- ``dead``: a dead letter whose reason contains the given words;
- ``skipped``: listed among the skipped files with a reason containing the words.

    python scripts/hostile_corpus.py out/hostile      # then: auditoryhum run out/hostile --out out/hostile-run
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

RECORDINGS = Path("/usr/share/games/lincity-ng/sounds")  # lincity-ng-data: the controls and the wrapped audio
NON_UTF8_NAME = b"caf\xe9-latin1-\xff.wav"  # a Latin-1 file name, as old archives have them


@dataclass(frozen=True)
class Expect:
    outcome: str  # labelled | dead | skipped
    words: str = ""  # what the dead-letter or skip reason must contain


def write(folder: Path, recordings: list[Path] | None = None) -> dict[str, Expect]:
    """Write the corpus into ``folder``; returns each entry's path relative to it (as the OS gives it: a name that
    is not UTF-8 comes back with surrogate escapes, as ``os.listdir`` gives it) → what must become of it."""
    recordings = recordings or sorted(RECORDINGS.glob("Trafic*.wav"))[:3]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(16)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000 * 2) / 16000)).astype(np.float32)
    expect: dict[str, Expect] = {}

    def add(name: str, outcome: str, words: str = "") -> Path:
        expect[name] = Expect(outcome, words)
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # Controls: real recordings, and the same in wrappers that must still be labelled.
    for i, source in enumerate(recordings):
        shutil.copyfile(source, add(f"control-{i}.wav", "labelled"))
    real, real_rate = sf.read(recordings[0], dtype="float32", always_2d=True)
    shutil.copyfile(recordings[1], add(os.fsdecode(NON_UTF8_NAME), "labelled"))
    sf.write(add("nested/deeper/control.flac", "labelled"), real, real_rate)
    _streaming_flac(add("streaming-encoder.flac", "labelled"), real, real_rate)  # total samples 0 = unknown
    _streaming_wav(add("streaming-encoder.wav", "labelled"), real, real_rate)  # RIFF and data sizes 0xFFFFFFFF

    # Decoded size far beyond the file's: 8 channels × 384 kHz × 590 s of silence is 2.1 MB of FLAC, 7.2 GB decoded.
    constant_flac(add("huge-8ch-384khz.flac", "dead", "decoded"), 384000, 8, 590)
    constant_flac(add("huge-unknown-length.flac", "dead", "decoded"), 384000, 8, 590, declare_length=False)

    # Samples that are not audio.
    nan, inf = tone.copy(), tone.copy()
    nan[100:200], inf[5000] = np.nan, np.inf
    sf.write(add("nan.wav", "dead", "NaN"), nan, 16000, subtype="FLOAT")
    sf.write(add("inf.wav", "dead", "NaN"), inf, 16000, subtype="FLOAT")
    sf.write(add("mixes-to-inf.wav", "dead", "out of range"), np.full((16000, 2), 3e38, np.float32), 16000,
             subtype="FLOAT")
    sf.write(add("above-1e19.wav", "dead", "out of range"), tone * np.float32(1e20), 16000, subtype="FLOAT")
    sf.write(add("float64-huge.wav", "dead", "beyond float32"), tone.astype(np.float64) * 1e300, 16000,
             subtype="DOUBLE")
    add("mpeg-sync-garbage.mp3", "dead", "out of range").write_bytes(_mpeg_sync_garbage(rng))

    # No signal a model could hear.
    sf.write(add("dc-only.wav", "dead", "no signal"), np.full(32000, 0.5, np.float32), 16000)
    t = np.arange(48000 * 2) / 48000
    sf.write(add("tone-19khz.wav", "dead", "above"), (0.5 * np.sin(2 * np.pi * 19000 * t)).astype(np.float32),
             48000)
    sf.write(add("silent.flac", "dead", "silent"), np.zeros(16000, np.float32), 16000)
    sf.write(add("one-sample.wav", "dead", "too short"), np.array([0.5], np.float32), 16000)
    sf.write(add("ten-ms.wav", "dead", "too short"), tone[:160], 16000)

    # Damaged or mislabelled files.
    add("empty.wav", "dead", "empty").write_bytes(b"")
    add("text.wav", "dead", "no WAV, FLAC").write_text("this is a text file pretending to be audio\n" * 20)
    sf.write(folder / "cut.wav", tone, 16000)
    add("cut-in-header.wav", "dead", "damaged").write_bytes((folder / "cut.wav").read_bytes()[:30])
    (folder / "cut.wav").unlink()
    add("corrupt.mp3", "dead", "damaged MP3").write_bytes(_corrupt_mp3(folder / "tmp.mp3", tone, rng))
    # Cut short: 5 s of Ogg Vorbis after 40 % of its bytes (2 s still decode, no page says the stream ended), and
    # a FLAC and an MP3 after a third (their headers still declare the whole length).
    noise = rng.normal(0, 0.2, (44100 * 5, 2)).astype(np.float32)
    add("truncated.ogg", "dead", "truncated").write_bytes(_cut(folder / "tmp.ogg", noise, 44100, 0.4))
    add("truncated.flac", "dead", "truncated").write_bytes(_cut(folder / "tmp.flac", real, real_rate, 1 / 3))
    add("truncated.mp3", "dead", "truncated").write_bytes(_cut(folder / "tmp.mp3", real, real_rate, 1 / 3))
    add("fake-flac.flac", "dead", "damaged FLAC").write_bytes(b"fLaC" + bytes(60))
    add("fake-ogg.ogg", "dead", "damaged Ogg").write_bytes(b"OggS" + bytes(60))
    add("zero-channels.au", "dead", "damaged").write_bytes(b".snd" + bytes(20))

    # Entries that are not regular files, or are hidden: each is skipped with its reason, never silently.
    add("dangling.wav", "skipped", "dangling").symlink_to("not-fetched.wav")  # git-annex, DVC
    add("loop.wav", "skipped", "loop").symlink_to("loop.wav")
    add("loop-a.wav", "skipped", "loop").symlink_to("loop-b.wav")
    add("loop-b.wav", "skipped", "loop").symlink_to("loop-a.wav")
    add("device.wav", "skipped", "not a regular file").symlink_to("/dev/zero")
    os.mkfifo(add("fifo.wav", "skipped", "not a regular file"))
    shutil.copyfile(recordings[0], add(".dotfile.wav", "skipped", "hidden"))
    add(".hidden-folder", "skipped", "hidden").mkdir()
    shutil.copyfile(recordings[0], folder / ".hidden-folder" / "clip.wav")
    add("folder-loop", "skipped", "loop").symlink_to(".", target_is_directory=True)
    add("notes.txt", "skipped", "extension").write_text("not audio\n")
    return expect


def constant_flac(path: Path, rate: int, channels: int, seconds: float, *, declare_length: bool = True) -> None:
    """A valid FLAC of digital silence written frame by frame (constant subframes: 3 bytes per channel per 4096
    frames), so hours of many-channel audio cost megabytes on disk and milliseconds to write. Without
    ``declare_length`` STREAMINFO says 0 samples, as a streaming encoder writes it (the FLAC spec's "unknown")."""
    block = 4096
    total = int(rate * seconds)
    frames = -(-total // block)
    info = struct.pack(">HH", block, block) + bytes(6)  # block sizes; frame sizes unknown
    info += ((rate << 44) | ((channels - 1) << 41) | (15 << 36) | (total if declare_length else 0)).to_bytes(8, "big")
    with path.open("wb") as f:
        f.write(b"fLaC" + bytes([0x80, 0, 0, 34]) + info + bytes(16))  # the last (only) metadata block; no MD5
        subframes = bytes(3 * channels)  # each: header 0 (constant, no wasted bits) and the 16-bit value 0
        for n in range(frames):
            size = min(block, total - n * block)
            code, extra = (0xC, b"") if size == block else (0x7, struct.pack(">H", size - 1))
            header = bytes([0xFF, 0xF8, code << 4, (channels - 1) << 4 | 0x8]) + _utf8_number(n) + extra
            header += bytes([_crc8(header)])
            frame = header + subframes
            f.write(frame + struct.pack(">H", _crc16(frame)))


def _utf8_number(n: int) -> bytes:
    """FLAC's frame number: the UTF-8 scheme extended to 31 bits."""
    if n < 0x80:
        return bytes([n])
    length = 2 if n < 0x800 else 3 if n < 0x10000 else 4 if n < 0x200000 else 5 if n < 0x4000000 else 6
    tail = [0x80 | (n >> (6 * i)) & 0x3F for i in range(length - 2, -1, -1)]
    return bytes([(0xFF00 >> length) & 0xFF | n >> (6 * (length - 1))] + tail)


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc << 1) ^ 0x07 if crc & 0x80 else crc << 1
        crc &= 0xFF
    return crc


_CRC16 = []
for _i in range(256):
    _c = _i << 8
    for _ in range(8):
        _c = (_c << 1) ^ 0x8005 if _c & 0x8000 else _c << 1
    _CRC16.append(_c & 0xFFFF)


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ byte]
    return crc


def _streaming_flac(path: Path, data: np.ndarray, rate: int) -> None:
    sf.write(path, data, rate, format="FLAC")
    raw = bytearray(path.read_bytes())
    packed = int.from_bytes(raw[18:26], "big") & ~((1 << 36) - 1)  # STREAMINFO's total samples → 0
    raw[18:26] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(raw))


def _streaming_wav(path: Path, data: np.ndarray, rate: int) -> None:
    sf.write(path, data, rate, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    data_at = raw.index(b"data")
    raw[4:8] = raw[data_at + 4:data_at + 8] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(raw))


def _mpeg_sync_garbage(rng: np.random.Generator) -> bytes:
    """Random bytes behind valid MPEG-1 layer III frame headers (128 kbit/s, 44.1 kHz: 417-byte frames)."""
    return b"".join(b"\xff\xfb\x90\x64" + rng.integers(0, 256, 413, dtype=np.uint8).tobytes() for _ in range(200))


def _corrupt_mp3(scratch: Path, tone: np.ndarray, rng: np.random.Generator) -> bytes:
    """A real MP3's first 200 bytes, then noise: libsndfile says "File does not exist or is not a regular file"."""
    sf.write(scratch, tone, 16000, format="MP3")
    raw = scratch.read_bytes()
    scratch.unlink()
    return raw[:200] + rng.integers(0, 256, len(raw) - 200, dtype=np.uint8).tobytes()


def _cut(scratch: Path, data: np.ndarray, rate: int, keep: float) -> bytes:
    """The first ``keep`` of the bytes of ``data`` encoded as ``scratch``'s format."""
    sf.write(scratch, data, rate)
    raw = scratch.read_bytes()
    scratch.unlink()
    return raw[: int(len(raw) * keep)]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/hostile")
    for name, expected in sorted(write(out).items()):
        print(f"{expected.outcome:9} {expected.words:20} {name!r}")
