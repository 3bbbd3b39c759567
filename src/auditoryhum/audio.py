"""Reading audio for the models: any file libsndfile decodes → mono float32 at the model's rate.

Every way a file can be unusable raises :class:`AudioError` with a reason a person can act on; the stages
turn it into a dead letter instead of stopping the run. An object store that cannot be reached now (refused, reset,
timed out, overloaded) is not the file's fault: that raises :class:`~auditoryhum.errors.TransientError` of class
storage, and the record is retried.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import fsspec
import numpy as np
import soundfile as sf
import soxr

from auditoryhum.errors import STORAGE, TransientError, transient_kind

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64"})
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class AudioError(ValueError):
    """A clip that cannot be used, with the reason."""


@dataclass(frozen=True)
class AudioLimits:
    max_duration_s: float = 600.0
    max_file_bytes: int = 512 * 1024 * 1024
    # Peak amplitude below this (≈ -90 dBFS) is digital silence: nothing for a model to describe.
    silence_peak: float = 3e-5
    # Remote reads (http): a store that does not connect, or stops sending, is cut off (a transient storage error).
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # mono float32
    sample_rate: int
    source_rate: int
    channels: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


def is_url(uri: str | Path) -> bool:
    """Whether ``uri`` names an object for fsspec (``s3://…``, ``gs://…``, ``file://…``) rather than a path."""
    return isinstance(uri, str) and bool(_URL.match(uri))


def probe(path: str | Path) -> sf._SoundFileInfo:
    """Header facts (rate, channels, frames) without decoding the samples; a URL's object is read only as far as
    its header."""
    if not is_url(path):
        return _info(str(path))
    try:
        fs, key = fsspec.core.url_to_fs(path)
        f = fs.open(key, "rb")
    except (OSError, ValueError, ImportError) as exc:
        raise AudioError(f"cannot open: {_short(exc)}") from exc
    with f:
        return _info(f)


def _info(source: str | BinaryIO) -> sf._SoundFileInfo:
    try:
        return sf.info(source)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"not readable as audio: {_short(exc)}") from exc


def load(path: str | Path, rate: int, limits: AudioLimits = AudioLimits()) -> Audio:
    """Decode ``path`` (a file, or any fsspec URL) to mono float32 at ``rate`` Hz, checking size, length and
    content first."""
    if is_url(path):
        return load_bytes(_read_url(path, limits), rate, limits)
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioError(f"cannot open: {_short(exc)}") from exc
    return _decode(str(path), size, rate, limits)


def load_bytes(data: bytes, rate: int, limits: AudioLimits = AudioLimits()) -> Audio:
    """Decode an encoded audio file held in memory (a clip sent to the API) with the same checks as :func:`load`."""
    return _decode(io.BytesIO(data), len(data), rate, limits)


def _read_url(url: str, limits: AudioLimits) -> bytes:
    """The bytes of the object at ``url``, its size checked before anything is downloaded."""
    try:
        fs, key = fsspec.core.url_to_fs(url, **_network_options(url, limits))
        size = fs.size(key)
    except Exception as exc:  # missing object, unknown protocol, driver not installed; or the store is away
        raise _url_error("cannot open", exc) from exc
    if size is not None:
        _check_size(size, limits)
    try:
        with fs.open(key, "rb") as f:
            return f.read(limits.max_file_bytes + 1)  # a store that gives no size still cannot overrun the limit
    except Exception as exc:
        raise _url_error("cannot read", exc) from exc


def _network_options(url: str, limits: AudioLimits) -> dict:
    """The timeouts, for the drivers installed that take them: fsspec's http(s) runs on aiohttp."""
    if url.split("://", 1)[0].lower() not in ("http", "https"):
        return {}
    import aiohttp

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_timeout_s,
                                                               sock_read=limits.read_timeout_s)}}


def _url_error(what: str, exc: Exception) -> Exception:
    """A store that is away for now is transient (the clip is retried later); anything else is this clip's fault.
    Drivers raise their own errors (aiohttp's, botocore's) besides OSError, so every error is sorted here."""
    if transient_kind(exc):
        cause = exc
        while cause.__cause__ is not None:  # the network's own words, not the wrapper's "file not found"
            cause = cause.__cause__
        return TransientError(f"storage: {what}: {_remote_reason(cause)}", kind=STORAGE)
    return AudioError(f"{what}: {_remote_reason(exc)}")


def _remote_reason(exc: BaseException) -> str:
    """An HTTP error by its status alone: its reason phrase is the server's text, which a client must not read."""
    status = getattr(exc, "status", None)
    return f"HTTP {status}" if isinstance(status, int) else _short(exc)


def _check_size(size: int, limits: AudioLimits) -> None:
    if size == 0:
        raise AudioError("empty file (0 bytes)")
    if size > limits.max_file_bytes:
        raise AudioError(f"file too large: {size} bytes > limit {limits.max_file_bytes}")


def _decode(source: str | BinaryIO, size: int, rate: int, limits: AudioLimits) -> Audio:
    _check_size(size, limits)
    try:
        # One open serves the header checks and the decode, so an in-memory source is never rewound.
        f = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"not readable as audio: {_short(exc)}") from exc
    with f:
        if f.frames <= 0 or f.samplerate <= 0:
            raise AudioError("no audio frames")
        duration = f.frames / f.samplerate
        if duration > limits.max_duration_s:
            raise AudioError(f"too long: {duration:.1f} s > limit {limits.max_duration_s:g} s")
        try:
            if f.subtype == "PCM_16":  # libsndfile's int→float conversion costs 4x a numpy scale
                data = f.read(dtype="int16", always_2d=True).astype(np.float32) * np.float32(1 / 32768)
            else:
                data = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise AudioError(f"decoding failed: {_short(exc)}") from exc
        return to_model_input(data, f.samplerate, rate, limits)


def to_model_input(data: np.ndarray, source_rate: int, rate: int, limits: AudioLimits = AudioLimits()) -> Audio:
    """Validate decoded samples ``[frames, channels]`` and convert them to mono at ``rate`` Hz."""
    if data.ndim == 1:
        data = data[:, None]
    if data.shape[0] == 0:
        raise AudioError("no audio frames")
    peak = float(np.max(np.abs(data)))  # NaN and inf propagate into the peak: one pass checks both
    if not math.isfinite(peak):
        raise AudioError("samples contain NaN or infinity")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if peak < limits.silence_peak:
        raise AudioError("silent: peak amplitude below -90 dBFS")
    if source_rate != rate:
        # soxr's high-quality polyphase resampler; a plain FFT or linear resample would alias into the tagger's bands.
        mono = soxr.resample(mono, source_rate, rate, quality="HQ")
    return Audio(np.ascontiguousarray(mono, dtype=np.float32), rate, int(source_rate), int(data.shape[1]))


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
