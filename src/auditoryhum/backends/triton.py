"""The model backends on a Triton Inference Server (deploy/triton/models), over gRPC.

Each class has the interface of its in-process counterpart, and the server runs the same auditoryhum code, so a
stage cannot tell them apart. Every backend of a process shares one gRPC client per server (gRPC clients are
thread-safe; Triton's HTTP client is not). Work is split into requests that are sent together (``async_infer``),
so the server's dynamic batcher merges them with other callers' into one model call.

Errors: a server that is away, busy or failing inside (INTERNAL), a model that is not loaded and a timeout raise
:class:`TransientError` of class model-server (the runner retries the record later, never dead-letters it); a
request the server rejects as bad raises ``ValueError``.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf import json_format, text_format
from tritonclient.grpc.model_config_pb2 import ModelConfig
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from auditoryhum.audio import Audio
from auditoryhum.backends import Description, ScoreItem, Scores
from auditoryhum.backends import features, yamnet
from auditoryhum.backends.clap import CLAP_RATE, resample_for_clap
from auditoryhum.backends.mllm import PROMPT_ID
from auditoryhum.backends.text import embedder_id
from auditoryhum.errors import MODEL_SERVER, TransientError

# The model repository of a source checkout: the configurations that load() overrides.
REPOSITORY = Path(__file__).resolve().parents[3] / "deploy" / "triton" / "models"

# Codes meaning "not now": the server is down or restarting, the model is not loaded (yet), a timeout.
UNREACHABLE = {"StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND", "StatusCode.DEADLINE_EXCEEDED",
               "StatusCode.CANCELLED"}
# An inference may also fail for now inside the server: out of memory or queue room (RESOURCE_EXHAUSTED), a
# backend's or the GPU's failure (INTERNAL; the models here answer a bad input with INVALID_ARGUMENT). A model that
# fails to load with INTERNAL stays a configuration error.
TRANSIENT = UNREACHABLE | {"StatusCode.INTERNAL", "StatusCode.RESOURCE_EXHAUSTED"}
# Codes meaning "never": this input is wrong and retrying it cannot help.
BAD_INPUT = {"StatusCode.INVALID_ARGUMENT", "StatusCode.OUT_OF_RANGE"}
# Model control (load, unload, the repository index) answers only calls carrying the server's control key
# (scripts/triton.sh and the chart start Triton with --grpc-restricted-protocol): gRPC prefixes the header's name.
CONTROL_HEADER = "triton-grpc-protocol-triton-control-key"
RESTRICTED = "This protocol is restricted"

_MAX_MESSAGE = 2**31 - 1
# tritonclient's defaults plus a short reconnect backoff: gRPC's own grows to 2 minutes, so a client would stay
# away that long after a server restart.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def repository_config(model: str, repository: Path = REPOSITORY) -> ModelConfig:
    """A model's config.pbtxt in a model repository (by default this checkout's)."""
    return text_format.Parse((repository / model / "config.pbtxt").read_text(), ModelConfig())


def _error(model: str, exc: InferenceServerException) -> Exception:
    status, message = exc.status() or "", exc.message() or str(exc)
    text = f"triton {model}: {message}"
    if RESTRICTED in message:  # Triton answers a missing control key with UNAVAILABLE: no retry makes it right
        return PermissionError(f"{text} (model control needs the server's control key)")
    if status in TRANSIENT:
        return TransientError(text, kind=MODEL_SERVER)
    if status in BAD_INPUT:
        return ValueError(text)
    return RuntimeError(text)


def _input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    dtype = "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype)
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def _texts(values: Sequence[str]) -> np.ndarray:
    """A ``[n, 1]`` BYTES batch, one text per row."""
    return np.array([[t.encode("utf-8")] for t in values], dtype=np.object_).reshape(len(values), 1)


def _text(array: np.ndarray) -> str:
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonClient:
    """A Triton server's gRPC client, shared by all backends and threads; get one with :func:`connect`."""

    def __init__(self, url: str, timeout_s: float = 120.0, control_key: str | None = None):
        """``control_key``: the server's model-control key, needed only by :meth:`load` and :meth:`unload`."""
        self.url, self.timeout_s = url, timeout_s
        self._control = {CONTROL_HEADER: control_key} if control_key else None
        self._client = grpcclient.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)

    def infer_many(self, model: str, requests: Sequence[Mapping[str, np.ndarray]],
                   outputs: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """Send all requests at once and wait for every answer, in order."""
        futures: list[Future] = []
        wanted = [grpcclient.InferRequestedOutput(name) for name in outputs]
        for inputs in requests:
            future: Future = Future()
            futures.append(future)
            try:
                self._client.async_infer(model, [_input(k, v) for k, v in inputs.items()],
                                         callback=lambda result, error, f=future: f.set_result((result, error)),
                                         outputs=wanted, client_timeout=self.timeout_s)
            except InferenceServerException as exc:
                future.set_result((None, exc))
        answers = []
        for future in futures:
            result, error = future.result()
            if error is not None:
                raise _error(model, error)
            answers.append({name: result.as_numpy(name) for name in outputs})
        return answers

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return self.infer_many(model, [inputs], outputs)[0]

    def config(self, model: str) -> dict:
        """The model's configuration as the server loaded it (JSON form)."""
        try:
            return self._client.get_model_config(model, as_json=True, client_timeout=self.timeout_s)["config"]
        except InferenceServerException as exc:
            raise _error(model, exc) from exc

    def parameters(self, model: str) -> dict[str, str]:
        return {k: v.get("string_value", "") for k, v in self.config(model).get("parameters", {}).items()}

    def model_id(self, model: str) -> str:
        """The id a model's outputs are recorded under: as the in-process backend names it (its id, else its
        path)."""
        params = self.parameters(model)
        return params.get("model_id") or params.get("model_path") or model

    def statistics(self, model: str) -> tuple[int, int]:
        """``(inference_count, execution_count)``: batch rows served and model executions since load; fewer
        executions than rows means requests were batched."""
        try:
            stats = self._client.get_inference_statistics(model, as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _error(model, exc) from exc
        entry = stats["model_stats"][0]
        return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))

    def load(self, model: str, parameters: Mapping[str, str] | None = None, *, config: ModelConfig | None = None,
             timeout_s: float = 900.0) -> None:
        """Load (or reload) a model on a server in explicit model-control mode. ``parameters`` override entries
        of its config.pbtxt (:func:`repository_config`) for this load only, through Triton's config override: how
        a model is pointed at a local checkpoint folder without editing or copying the repository. ``config``
        replaces the whole configuration."""
        if parameters:
            config = config or repository_config(model)
            for key, value in parameters.items():
                config.parameters[key].string_value = value
        override = json_format.MessageToJson(config, preserving_proto_field_name=True) if config else None
        try:
            self._client.load_model(model, config=override, headers=self._control, client_timeout=timeout_s)
        except InferenceServerException as exc:
            if RESTRICTED in (exc.message() or ""):
                raise _error(model, exc) from exc
            if exc.status() in UNREACHABLE:
                raise TransientError(f"triton at {self.url}: {exc.message()}", kind=MODEL_SERVER) from exc
            raise RuntimeError(f"triton: loading {model} failed: {exc.message()}") from exc

    def unload(self, model: str) -> None:
        try:
            self._client.unload_model(model, headers=self._control, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise _error(model, exc) from exc

    def close(self) -> None:
        self._client.close()

    def wait_ready(self, models: Sequence[str], timeout: float = 120.0) -> None:
        """Block until every model is ready; TransientError naming those that are not after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        pending = list(models)
        while True:
            pending = [m for m in pending if not self._ready(m)]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise TransientError(f"triton at {self.url}: not ready after {timeout:g}s: {', '.join(pending)}",
                                     kind=MODEL_SERVER)
            time.sleep(0.2)

    def _ready(self, model: str) -> bool:
        try:
            return bool(self._client.is_model_ready(model, client_timeout=5))
        except InferenceServerException:
            return False


_clients: dict[str, TritonClient] = {}
_clients_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    # Closed before interpreter teardown: a channel closed during it logs an error from half-unloaded modules.
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


def connect(url: str) -> TritonClient:
    """The process's one client for ``url`` (``host:port`` of Triton's gRPC endpoint)."""
    with _clients_lock:
        if url not in _clients:
            _clients[url] = TritonClient(url)
        return _clients[url]


class TritonTagger:
    """YAMNet on Triton (``yamnet_patches``), for :class:`~auditoryhum.backends.yamnet.TaggerLabeler`.

    The log-mel patches are computed here, so only 24 KiB per patch travels; each call's patches go in requests
    of up to the model's ``max_batch_size``, all at once.
    """

    sample_rate = features.SAMPLE_RATE

    def __init__(self, client: TritonClient, model: str = "yamnet_patches", patch_hop_s: float = 0.48):
        self.client, self.model = client, model
        config = client.config(model)
        self.model_id = client.model_id(model)
        self.class_names = yamnet.class_names()
        self.patch_hop = yamnet.patch_hop_frames(patch_hop_s)
        self._max_batch = int(config.get("max_batch_size", 0)) or 512

    def patch_logits(self, patches: np.ndarray) -> np.ndarray:
        """``[n, 521]`` logits for log-mel patches ``[n, 1, 96, 64]``."""
        rows = patches.reshape(len(patches), *patches.shape[-2:])
        chunks = [{"PATCHES": rows[i : i + self._max_batch]} for i in range(0, len(rows), self._max_batch)]
        return np.concatenate([a["LOGITS"] for a in self.client.infer_many(self.model, chunks, ["LOGITS"])])

    def tag(self, clips: Sequence[Audio]) -> np.ndarray:
        return yamnet.clip_probabilities(clips, self.patch_hop, self.patch_logits)


class TritonTextEmbedder:
    """Text embeddings on Triton (``text_embedder``), with the same LRU cache as the in-process embedder.

    Missing texts go in requests of ``batch_size`` rows, all at once; the lock guards only the cache, so
    concurrent callers' requests reach the server together and are batched there.
    """

    def __init__(self, client: TritonClient, model: str = "text_embedder", cache_size: int = 200_000,
                 batch_size: int = 64):
        self.client, self.model = client, model
        params = client.parameters(model)
        self.model_id = params.get("model_id") or embedder_id(params.get("model_path") or None)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size, self._batch_size = cache_size, batch_size
        self._lock = threading.Lock()
        self.dimension = self._request(["dimension probe"]).shape[1]

    def _request(self, texts: Sequence[str]) -> np.ndarray:
        chunks = [{"TEXT": _texts(texts[i : i + self._batch_size])} for i in range(0, len(texts), self._batch_size)]
        return np.concatenate([a["EMBEDDING"] for a in self.client.infer_many(self.model, chunks, ["EMBEDDING"])])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        found = dict(zip(missing, self._request(missing))) if missing else {}
        with self._lock:
            self._cache.update(found)
            rows = []
            for t in texts:
                # A text another thread evicted meanwhile is still in `found` (or was cached before).
                row = self._cache.get(t)
                row = found[t] if row is None else row
                self._cache[t] = row
                self._cache.move_to_end(t)
                rows.append(row)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return np.stack(rows).astype(np.float32, copy=False)


class TritonScorer:
    """Human-CLAP on Triton (``clap_scorer``): a Scorer, one request per clip, all at once.

    Audio is resampled here to the model's WAVEFORM rate with the in-process scorer's own function, so the server
    sees exactly the samples the in-process scorer would.
    """

    def __init__(self, client: TritonClient, model: str = "clap_scorer"):
        self.client, self.model = client, model
        params = client.parameters(model)
        self.model_id = client.model_id(model)
        self.sample_rate = int(params.get("sample_rate") or CLAP_RATE)
        via_16k = params.get("resample_via_16k", "").lower() == "true"
        # Named as ClapScorer names itself: alignments say which scorer made them, wherever it ran.
        self.scorer_id = f"clap({self.model_id}{', via 16 kHz' if via_16k else ''})"

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Scores]:
        if any(item.audio is None for item in items):
            raise ValueError("CLAP scores labels against the clip's audio, and an item came without it")
        requests = []
        for item in items:
            wave = resample_for_clap(item.audio(), self.sample_rate, via_16k=False)
            requests.append({"WAVEFORM": wave[None], "LABELS": _texts(list(item.labels)).reshape(1, -1)})
        answers = self.client.infer_many(self.model, requests, ["SCORES", "AUDIO_EMBEDDING"])
        return [Scores(a["SCORES"][0], a["AUDIO_EMBEDDING"][0]) for a in answers]


class TritonLabeler:
    """The paper's MLLM labeler on Triton (``mllm_labeler``): a Labeler, one request per clip, all at once."""

    prompt_id = PROMPT_ID

    def __init__(self, client: TritonClient, model: str = "mllm_labeler"):
        self.client, self.model = client, model
        self.model_id = client.model_id(model)
        self.sample_rate = int(client.parameters(model).get("sample_rate") or 16_000)

    def describe(self, clips: Sequence[Audio], hints: Sequence[str] | None = None) -> list[Description]:
        hints = list(hints) if hints else [""] * len(clips)
        requests = []
        for clip, hint in zip(clips, hints):
            if clip.sample_rate != self.sample_rate:
                raise ValueError(f"{self.model} needs {self.sample_rate} Hz audio, got {clip.sample_rate}")
            request = {"WAVEFORM": clip.samples.astype(np.float32, copy=False)[None]}
            if hint:
                request["HINT"] = _texts([hint])
            requests.append(request)
        return [Description(_text(a["TEXT"])) for a in self.client.infer_many(self.model, requests, ["TEXT"])]


class TritonGenerator:
    """The composite-label LLM on Triton (``namer``): a :class:`~auditoryhum.taxonomy.naming.TextGenerator`."""

    def __init__(self, client: TritonClient, model: str = "namer"):
        self.client, self.model = client, model
        self.model_id = client.model_id(model)

    def generate(self, prompts: Sequence[str]) -> list[str]:
        answers = self.client.infer_many(self.model, [{"PROMPT": _texts([p])} for p in prompts], ["TEXT"])
        return [_text(a["TEXT"]) for a in answers]
