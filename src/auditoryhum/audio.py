"""Reading audio for the models: any file libsndfile decodes → mono float32 at the model's rate.

Every way a file can be unusable raises :class:`AudioError` with a reason a person can act on; the stages
turn it into a dead letter instead of stopping the run. An object store that cannot be reached now (refused, reset,
timed out, overloaded) is not the file's fault: that raises :class:`~auditoryhum.errors.TransientError` of class
storage, and the record is retried.

Hostile input is bounded before it costs memory: the decoded size (channels × frames × 4 bytes) is checked from
the header before any sample is decoded, and decoding goes block by block, counting, so a header that lies or
does not know the length (a streaming encoder's FLAC or WAV) stops at the limit instead of at the end of memory.
Only what a model can use leaves here: finite samples within range after the channel mix and after resampling,
long enough, with a signal the model's rate still carries. A file cut short (fewer frames decode than its header
declares, or an Ogg stream without its end page) is dead-lettered rather than labelled from a part of it.

A local file whose name is not UTF-8 travels as a ``file://`` URL with its bytes percent-encoded (RFC 8089), since
protobuf strings must be UTF-8; :func:`load` reads such a URL itself.
"""

from __future__ import annotations

import io
import os
import re
import stat
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import fsspec
import numpy as np
import soundfile as sf
import soxr

from auditoryhum import objectstore
from auditoryhum.errors import STORAGE, TransientError, transient_kind

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64"})
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's frame count when the header does not say (FLAC total samples 0)
_BLOCK_FRAMES = 1 << 16
_MB = 1024 * 1024
# A file of known length that decodes to less than this share of it was cut short. An MP3's length is libmpg123's
# estimate where no Xing/Info frame gives it (VBR files), so only half missing counts there.
_DECODED_AT_LEAST = {"MP3": 0.5}
# The first bytes of the formats libsndfile reads, to say which kind of file is damaged.
_MAGIC = ((b"RIFF", "WAV"), (b"RIFX", "WAV"), (b"RF64", "WAV"), (b"riff", "W64"), (b"fLaC", "FLAC"),
          (b"OggS", "Ogg"), (b"ID3", "MP3"), (b"FORM", "AIFF"), (b".snd", "AU"), (b"caff", "CAF"))
# libsndfile messages that mislead about a damaged file ("possibly a pipe?" for a corrupt MP3): left out of reasons.
_MISLEADING = ("does not exist", "Garbled error", "System error", "SF_INFO struct", "unimplemented format")


class AudioError(ValueError):
    """A clip that cannot be used, with the reason."""


@dataclass(frozen=True)
class AudioLimits:
    max_duration_s: float = 600.0
    max_file_bytes: int = 512 * _MB
    # channels × frames × 4 bytes: 600 s of 48 kHz stereo fits; 8 channels at 384 kHz for 590 s (7.2 GB) does not.
    max_decoded_bytes: int = 256 * _MB
    min_duration_s: float = 0.05  # a click of UI sound is 60 ms; a single sample or 10 ms is too little
    # Peak amplitude below this (≈ -90 dBFS) is digital silence: nothing for a model to describe.
    silence_peak: float = 3e-5
    # Audio is within ±1 (a float master may overshoot a little); beyond +60 dBFS it is damaged or mis-scaled data,
    # and its power overflows the model's log-mel features.
    max_peak: float = 1000.0
    # All the inline audio of one gRPC call together (a :class:`DecodeBudget` per call).
    max_request_decoded_bytes: int = 512 * _MB
    # Remote reads (http): a store that does not connect, or stops sending, is cut off (a transient storage error).
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0


class DecodeBudget:
    """The decoded bytes one request may spend across all its clips (a gRPC call's inline audio); thread-safe."""

    def __init__(self, limit_bytes: int):
        self.limit, self.left = limit_bytes, limit_bytes
        self._lock = threading.Lock()

    def spend(self, n: int) -> None:
        with self._lock:
            if n > self.left:
                raise AudioError(f"the request's decoded-audio budget is spent: its clips decode to more than "
                                 f"{self.limit / _MB:g} MB (max_request_decoded_mb); send fewer or shorter clips "
                                 "per call")
            self.left -= n


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


def local_path(uri: str | Path) -> str | None:
    """The local path that ``uri`` names (a path, or a ``file://`` URL on this host, percent-decoded to the name's
    bytes: read as :mod:`auditoryhum.uris` reads it), or None for a URL of anything else."""
    if not is_url(uri):
        return os.fspath(uri)
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() != "file" or parts.netloc.lower() not in ("", "localhost"):
        return None
    return os.fsdecode(urllib.parse.unquote_to_bytes(parts.path))


def file_url(path: str | Path) -> str:
    """``path`` as a ``file://`` URL with every byte of its name that is not a plain URL character percent-encoded:
    a string protobuf can carry even when the name is not UTF-8."""
    return "file://" + urllib.parse.quote(os.fsencode(os.path.abspath(path)), safe="/")


def path_uri(path: str | Path) -> str:
    """How a local file travels in a clip: its path as it is, or its :func:`file_url` where the name is not UTF-8."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: the OS gave bytes that are not UTF-8
        return file_url(text)
    return text


def probe(path: str | Path) -> sf._SoundFileInfo:
    """Header facts (rate, channels, frames) without decoding the samples; a URL's object is read only as far as
    its header."""
    local = local_path(path)
    if local is not None:
        _check_regular(local)
        return _info(local)
    try:
        fs, key = fsspec.core.url_to_fs(path, **_network_options(str(path), AudioLimits()))
        f = fs.open(key, "rb")
    except Exception as exc:  # as _read_url: a store away for now is a TransientError
        raise _url_error("cannot open", str(path), exc) from exc
    with f:
        return _info(f)


def _info(source: str | BinaryIO) -> sf._SoundFileInfo:
    try:
        return sf.info(os.fsencode(source) if isinstance(source, str) else source)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(_unreadable(source, exc)) from exc


def load(path: str | Path, rate: int, limits: AudioLimits = AudioLimits(),
         budget: DecodeBudget | None = None) -> Audio:
    """Decode ``path`` (a file, or any fsspec URL) to mono float32 at ``rate`` Hz, checking size, length and
    content first."""
    local = local_path(path)
    if local is None:
        return load_bytes(_read_url(path, limits), rate, limits, budget)
    return _decode(local, _check_regular(local), rate, limits, budget)


def load_bytes(data: bytes, rate: int, limits: AudioLimits = AudioLimits(),
               budget: DecodeBudget | None = None) -> Audio:
    """Decode an encoded audio file held in memory (a clip sent to the API) with the same checks as :func:`load`."""
    return _decode(io.BytesIO(data), len(data), rate, limits, budget)


def _check_regular(path: str) -> int:
    """The size of the regular file at ``path``; a device, FIFO or folder is refused before it is opened (opening
    a FIFO blocks, /dev/zero never ends)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise AudioError(f"cannot open: {exc.strerror or _short(exc)}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(f"not a regular file ({file_kind(st.st_mode)}): only regular files are read as audio")
    return st.st_size


def file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _read_url(url: str, limits: AudioLimits) -> bytes:
    """The bytes of the object at ``url``, its size checked before anything is downloaded."""
    try:
        fs, key = fsspec.core.url_to_fs(url, **_network_options(url, limits))
        size = fs.size(key)
    except Exception as exc:  # missing object, unknown protocol, driver not installed; or the store is away
        raise _url_error("cannot open", url, exc) from exc
    if size is not None:
        _check_size(size, limits)
    try:
        with fs.open(key, "rb") as f:
            return f.read(limits.max_file_bytes + 1)  # a store that gives no size still cannot overrun the limit
    except Exception as exc:
        raise _url_error("cannot read", url, exc) from exc


def _network_options(url: str, limits: AudioLimits) -> dict:
    """The timeouts, for the drivers installed that take them: fsspec's http(s) runs on aiohttp; object stores
    also get bounded retries (:mod:`auditoryhum.objectstore`)."""
    if url.split("://", 1)[0].lower() not in ("http", "https"):
        return objectstore.options(url, connect_timeout_s=limits.connect_timeout_s,
                                   read_timeout_s=limits.read_timeout_s)
    import aiohttp

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_timeout_s,
                                                               sock_read=limits.read_timeout_s)}}


def _url_error(what: str, url: str, exc: Exception) -> Exception:
    """A store that is away for now is transient (the clip is retried later); anything else is this clip's fault,
    and its reason names the URI. Drivers raise their own errors (aiohttp's, botocore's) besides OSError, so every
    error is sorted here."""
    if transient_kind(exc):
        cause = exc
        while cause.__cause__ is not None:  # the network's own words, not the wrapper's "file not found"
            cause = cause.__cause__
        return TransientError(f"storage: {what} {url}: {_remote_reason(cause)}", kind=STORAGE)
    return AudioError(f"{what} {url}: {objectstore.reason(url, exc) or _remote_reason(exc)}")


def _remote_reason(exc: BaseException) -> str:
    """An HTTP error by its status alone: its reason phrase is the server's text, which a client must not read."""
    status = getattr(exc, "status", None)
    return f"HTTP {status}" if isinstance(status, int) else _short(exc)


def _check_size(size: int, limits: AudioLimits) -> None:
    if size == 0:
        raise AudioError("empty file (0 bytes)")
    if size > limits.max_file_bytes:
        raise AudioError(f"file too large: {size} bytes > limit {limits.max_file_bytes}")


def _decode(source: str | BinaryIO, size: int, rate: int, limits: AudioLimits, budget: DecodeBudget | None) -> Audio:
    _check_size(size, limits)
    try:
        # One open serves the header checks and the decode, so an in-memory source is never rewound. A path goes
        # as bytes: soundfile encodes a str name strictly, and a name that is not UTF-8 would fail.
        f = sf.SoundFile(os.fsencode(source) if isinstance(source, str) else source)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(_unreadable(source, exc)) from exc
    with f:
        if f.frames <= 0 or f.samplerate <= 0 or f.channels <= 0:
            raise AudioError("no audio frames")
        declared = f.frames if f.frames < UNKNOWN_LENGTH else None
        if declared is not None:  # from the header, before any sample is decoded
            _check_length(declared, f.samplerate, f.channels, limits, budget, known=True)
        mono = _read_mono(f, declared, limits, budget)
        if f.format == "OGG" and not _ogg_ended(source):
            raise AudioError(f"truncated: the Ogg stream stops after {len(mono) / f.samplerate:.1f} s without its "
                             "end page (the file was cut short); copy or download it again")
        return to_model_input(mono[:, None], f.samplerate, rate, limits, channels=f.channels)


def _check_length(frames: int, source_rate: int, channels: int, limits: AudioLimits, budget: DecodeBudget | None,
                  *, known: bool) -> None:
    """Duration and decoded size of ``frames``: all of them from the header (``known``), or those decoded so far of
    a file whose header does not say how long it is."""
    more = "" if known else "more than "
    duration = frames / source_rate
    if duration > limits.max_duration_s:
        raise AudioError(f"too long: {more}{duration:.1f} s > limit {limits.max_duration_s:g} s (max_duration_s)")
    decoded = frames * channels * 4
    if decoded > limits.max_decoded_bytes:
        raise AudioError(f"decoded size too large: {more}{decoded / _MB:.0f} MB ({channels} channels × "
                         f"{source_rate} Hz × {duration:.1f} s) > limit {limits.max_decoded_bytes / _MB:g} MB "
                         "(max_decoded_mb); downmix or resample it first")
    if budget is not None and known:
        budget.spend(decoded)


def _read_mono(f: sf.SoundFile, declared: int | None, limits: AudioLimits, budget: DecodeBudget | None) -> np.ndarray:
    """Decode and mix to mono (:func:`_mix`). A file whose header gives its length (already checked against the
    limits) is read in one go; one that does not is read block by block, counting, so it stops at the limits and
    memory holds one block of all channels besides the mono signal."""
    as_int16 = f.subtype == "PCM_16"  # libsndfile's int→float conversion costs 4x a numpy scale
    scale = 1 / 32768 if as_int16 else 1.0
    block = np.empty((declared or _BLOCK_FRAMES, f.channels), np.int16 if as_int16 else np.float32)
    blocks, frames = [], 0
    while n := _read_block(f, block, frames, declared):
        frames += n
        if declared is None:
            _check_length(frames, f.samplerate, f.channels, limits, None, known=False)
            if budget is not None:
                budget.spend(n * f.channels * 4)
        blocks.append(_mix(block[:n], scale))
    if declared is not None and frames < _DECODED_AT_LEAST.get(f.format, 0.9) * declared:
        raise AudioError(f"truncated: {frames / f.samplerate:.1f} s of the {declared / f.samplerate:.1f} s its "
                         "header declares decode (the file was cut short); copy or download it again")
    if len(blocks) == 1:
        return blocks[0]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _mix(frames: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Mono float32 of ``[frames, channels]`` times ``scale``. Each channel is weighted by 1/channels before the sum,
    so ±3e38 in every channel cannot add up past float32's range (a float32 mean can); a channel at a time, because
    numpy's reduction along a short axis is several times slower."""
    weight = np.float32(scale / frames.shape[1])
    mono = np.multiply(frames[:, 0], weight, dtype=np.float32)
    for channel in range(1, frames.shape[1]):
        mono += np.multiply(frames[:, channel], weight, dtype=np.float32)
    return mono


def _read_block(f: sf.SoundFile, out: np.ndarray, done: int, declared: int | None) -> int:
    """Frames decoded into ``out`` by libsndfile's own sf_readf_*: soundfile's read seeks around every call, which
    fails on a FLAC of unknown length, and it drops the frames a damaged file still gave before its error. An error
    after some frames of a file of known length ends the decode (the truncation check reports it)."""
    ctype = "short" if out.dtype == np.int16 else "float"
    n = getattr(sf._snd, f"sf_readf_{ctype}")(f._file, sf._ffi.cast(ctype + "*", out.ctypes.data), len(out))
    if n <= 0 and (code := sf._snd.sf_error(f._file)) and not (declared and done):
        detail = sf._ffi.string(sf._snd.sf_error_number(code)).decode("utf-8", "replace")
        raise AudioError(f"damaged {f.format} file: decoding fails after {done / f.samplerate:.1f} s ({detail}); "
                         "check that it plays, then copy or re-encode it again")
    return max(n, 0)


def _ogg_ended(source: str | BinaryIO) -> bool:
    """Whether the last Ogg page in ``source`` carries the end-of-stream flag: a cut file's last page does not."""
    if isinstance(source, str):
        with open(source, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
            tail = f.read()
    else:
        tail = source.getvalue()[-65536:]
    at = tail.rfind(b"OggS")
    return at >= 0 and len(tail) > at + 5 and bool(tail[at + 5] & 0x04)


def to_model_input(data: np.ndarray, source_rate: int, rate: int, limits: AudioLimits = AudioLimits(), *,
                   channels: int | None = None) -> Audio:
    """Validate decoded samples ``[frames, channels]`` and convert them to mono at ``rate`` Hz. The checks run on
    what the model gets: after the channel mix and after resampling."""
    if data.ndim == 1:
        data = data[:, None]
    if data.shape[0] == 0:
        raise AudioError("no audio frames")
    mono = _mix(data) if data.shape[1] > 1 else data[:, 0]
    _check_samples(mono, limits, "after the channel mix")
    duration = len(mono) / source_rate
    if duration < limits.min_duration_s:
        raise AudioError(f"too short: {duration * 1000:.1f} ms < {limits.min_duration_s * 1000:g} ms "
                         "(min_duration_s): too little for a model to describe")
    model = soxr.resample(mono, source_rate, rate, quality="HQ") if source_rate != rate else mono
    # soxr's high-quality polyphase resampler; a plain FFT or linear resample would alias into the tagger's bands.
    _check_samples(model, limits, "after resampling")
    _check_signal(mono, model, rate, limits)
    return Audio(np.ascontiguousarray(model, dtype=np.float32), rate, int(source_rate),
                 int(channels or data.shape[1]))


def _check_samples(x: np.ndarray, limits: AudioLimits, where: str) -> None:
    # NaN and inf propagate into max and min, so these two passes check all; no |x| copy is made.
    peak = max(float(x.max()), -float(x.min())) if x.size else 0.0
    if not np.isfinite(peak):
        raise AudioError(f"samples contain NaN or infinity (or values beyond float32) {where}: the file is damaged "
                         "or not audio")
    if peak > limits.max_peak:
        raise AudioError(f"samples out of range {where}: peak {peak:.3g} (audio lies within ±1; this is damaged "
                         "or mis-scaled data, not sound)")


def _check_signal(source: np.ndarray, model: np.ndarray, rate: int, limits: AudioLimits) -> None:
    """Refuse what holds nothing a model at ``rate`` can hear, with which kind of nothing it is. The resampler rings
    for a few ms where a sound starts or stops at the file's edges: those 10 ms are not counted as signal."""
    edge = rate // 100 if len(model) > 4 * (rate // 100) and len(source) != len(model) else 0
    if _peak_ac(model[edge:len(model) - edge]) >= limits.silence_peak:
        return
    if float(np.max(np.abs(source))) < limits.silence_peak:
        raise AudioError("silent: peak amplitude below -90 dBFS")
    if _peak_ac(source) < limits.silence_peak:
        raise AudioError("no signal: a constant (DC) level only, no sound")
    raise AudioError(f"no signal below {rate // 2} Hz: the sound lies above what the model hears at {rate} Hz "
                     "(an ultrasonic recording or a pilot tone)")


def _peak_ac(x: np.ndarray) -> float:
    """The largest distance from the mean level (the peak of what is not DC), without a copy of ``x``."""
    if not x.size:
        return 0.0
    mean = float(x.mean(dtype=np.float64))
    return max(float(x.max()) - mean, mean - float(x.min()))


def _unreadable(source: str | BinaryIO, exc: BaseException) -> str:
    """Why libsndfile cannot open ``source``, in words a person can act on: which kind of file it claims to be."""
    try:
        if isinstance(source, str):
            with open(source, "rb") as f:
                head = f.read(12)
        else:
            head = source.getvalue()[:12]
    except OSError:
        head = b""
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if kind is None and len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        kind = "MP3"  # an MPEG audio frame sync
    detail = re.sub(r"^Error opening .*?: ", "", _short(exc))
    detail = "" if any(words in detail for words in _MISLEADING) else f" ({detail.rstrip('.')})"
    if kind is None:
        return ("not readable as audio: no WAV, FLAC, Ogg, MP3, AIFF or AU header at its start (another format "
                f"with an audio extension?); convert it to WAV or FLAC{detail}")
    return (f"not readable as audio: damaged {kind} file, its header or first frames cannot be decoded{detail}; "
            "check that it plays, then copy or re-encode it again")


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
