"""Triton Inference Server: a real tritonserver (scripts/triton.sh, the binary bundled in nvidia-pytriton) serving
deploy/triton/models on test ports, against the same models in-process."""

from __future__ import annotations

import os
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from auditoryhum import audio
from auditoryhum.backends import ScoreItem, triton
from auditoryhum.backends.clap import ClapScorer
from auditoryhum.backends.mllm import MllmLabeler
from auditoryhum.backends.text import SentenceEmbedder, embedder_id
from auditoryhum.backends.yamnet import TaggerLabeler
from auditoryhum.errors import TransientError
from auditoryhum.taxonomy.naming import TransformersGenerator, cluster_prompt
from tests.conftest import LINCITY

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "triton.sh"
LITE = "yamnet_patches,text_embedder"
TEXTS = ["car horn", "rain on a roof", "dog barking", "speech", "engine idling", "birdsong", "car horn", "siren"]


class Server:
    """scripts/triton.sh on its own home and ports (below 32768, clear of the ephemeral range)."""

    def __init__(self, home: Path, http_port: int, models: str):
        self.env = {**os.environ, "TRITON_HOME_DIR": str(home), "TRITON_MODELS": models,
                    "TRITON_HTTP_PORT": str(http_port), "TRITON_GRPC_PORT": str(http_port + 1),
                    "TRITON_METRICS_PORT": str(http_port + 2)}
        self.url = f"127.0.0.1:{http_port + 1}"
        self.http = f"http://127.0.0.1:{http_port}"
        self.home = home

    @property
    def control_key(self) -> str:
        """The model-control key scripts/triton.sh generated for this home."""
        return (self.home / "control.key").read_text()

    def run(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), command], env=self.env, capture_output=True, text=True, timeout=300)

    def start(self) -> None:
        result = self.run("start")
        assert result.returncode == 0, result.stdout + result.stderr

    def stop(self) -> None:
        self.run("stop")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("triton"), 28000, LITE)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server) -> Iterator[triton.TritonClient]:
    """A client holding the control key: the tests below load and unload models."""
    client = triton.TritonClient(server.url, control_key=server.control_key)
    yield client
    client.close()


@pytest.fixture(scope="module")
def clips() -> list[audio.Audio]:
    # 21 real recordings of 0.13 s to 5.1 s: one shorter than a patch, most of many patches.
    files = sorted(LINCITY.glob("*.wav"))[::7]
    assert len(files) >= 12, "lincity-ng-data is not installed (make setup)"
    return [audio.load(f, 16_000) for f in files]


def test_yamnet_through_triton_tags_as_in_process(client, models, clips):
    tagger = triton.TritonTagger(client)
    assert tagger.model_id == models.tagger.model_id and tagger.class_names == models.tagger.class_names
    np.testing.assert_allclose(tagger.tag(clips), models.tagger.tag(clips), rtol=0, atol=1e-6)
    assert TaggerLabeler(tagger).describe(clips) == models.labeler.describe(clips)


def test_minilm_through_triton_embeds_as_in_process(client, models):
    embedder = triton.TritonTextEmbedder(client)
    assert embedder.model_id == models.embedder.model_id and embedder.dimension == models.embedder.dimension
    np.testing.assert_allclose(embedder.embed(TEXTS), models.embedder.embed(TEXTS), rtol=0, atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.dimension)
    before = client.statistics("text_embedder")
    embedder.embed(TEXTS[::-1])  # all cached: no request
    assert client.statistics("text_embedder") == before


def test_concurrent_requests_are_batched_by_the_server(client):
    patches = np.random.default_rng(0).normal(size=(96, 96, 64)).astype(np.float32)
    rows_before, runs_before = client.statistics("yamnet_patches")
    # Four threads, each sending 24 one-patch requests at once: 96 requests for the dynamic batcher.
    threads = [threading.Thread(target=client.infer_many,
                                args=("yamnet_patches", [{"PATCHES": patches[i : i + 1]} for i in range(t, 96, 4)],
                                      ["LOGITS"])) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows, runs = client.statistics("yamnet_patches")
    assert rows - rows_before == 96
    assert runs - runs_before < 96 / 4, f"{runs - runs_before} model executions for 96 requests"


def test_a_model_that_is_not_loaded_is_transient(client):
    with pytest.raises(TransientError, match="clap_scorer"):
        triton.TritonScorer(client)
    with pytest.raises(TransientError):
        client.infer("mllm_labeler", {"WAVEFORM": np.zeros((1, 16_000), np.float32)}, ["TEXT"])
    with pytest.raises(TransientError, match="not ready after"):
        client.wait_ready(["yamnet_patches", "namer"], timeout=0.5)


def test_a_model_without_its_checkpoint_fails_to_load_clearly(client):
    with pytest.raises(RuntimeError, match="parameter 'model_path' is empty"):
        client.load("namer")


def test_model_control_needs_the_control_key_and_inference_does_not(server, client):
    stranger = triton.connect(server.url)  # what any pod (or local user) that reaches the port has: no key
    with pytest.raises(PermissionError, match="restricted"):
        stranger.unload("text_embedder")
    with pytest.raises(PermissionError, match="restricted"):
        stranger.load("namer")
    raw = grpcclient.InferenceServerClient(server.url)
    for call in (raw.get_model_repository_index, raw.get_system_shared_memory_status):
        with pytest.raises(InferenceServerException, match="restricted"):
            call(headers={triton.CONTROL_HEADER: "a guess"})
    for path in ("/v2/repository/index", "/v2/repository/models/text_embedder/unload"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(server.http + path, data=b"{}", method="POST"))
        assert refused.value.code == 403, path
    # Inference, model config and statistics stay open; the key holder lists the repository.
    assert triton.TritonTextEmbedder(stranger).embed(TEXTS[:2]).shape[0] == 2
    assert stranger.statistics("text_embedder")[0] >= 2
    index = raw.get_model_repository_index(headers={triton.CONTROL_HEADER: server.control_key})
    assert {m.name for m in index.models if m.state == "READY"} == set(LITE.split(","))
    raw.close()


def test_bad_input_is_a_value_error(client):
    with pytest.raises(ValueError, match="unexpected shape"):
        client.infer("yamnet_patches", {"PATCHES": np.zeros((2, 95, 64), np.float32)}, ["LOGITS"])
    with pytest.raises(ValueError, match="batch-size"):  # more rows than max_batch_size
        client.infer("yamnet_patches", {"PATCHES": np.zeros((513, 96, 64), np.float32)}, ["LOGITS"])


def test_script_refuses_a_model_without_its_checkpoint(tmp_path):
    result = Server(tmp_path, 28020, "namer").run("start")
    assert result.returncode != 0
    assert "parameter 'model_path' is empty" in result.stderr


def test_server_stopped_mid_run_is_transient_and_recovers_after_restart(tmp_path, models, clips):
    server = Server(tmp_path, 28010, "yamnet_patches")
    server.start()
    try:
        tagger = triton.TritonTagger(triton.connect(server.url))
        expected = models.tagger.tag(clips)
        errors: list[Exception] = []
        done = threading.Event()

        def run() -> None:  # a labeler that keeps tagging, as a service would
            while not errors and not done.is_set():
                try:
                    tagger.tag(clips)
                except Exception as exc:  # noqa: BLE001 - every failure is collected and checked below
                    errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        server.stop()
        worker.join(timeout=30)
        done.set()
        assert errors and all(isinstance(e, TransientError) for e in errors), errors
        with pytest.raises(TransientError):
            tagger.tag(clips)
        server.start()
        # The channel reconnects within its 1 s backoff; wait_ready is how a service waits for that.
        tagger.client.wait_ready(["yamnet_patches"], timeout=10)
        np.testing.assert_allclose(tagger.tag(clips), expected, rtol=0, atol=1e-6)
    finally:
        server.stop()



# The paper's models, as tiny random-weight checkpoints built locally (tests/tiny_models.py), each loaded onto the
# running server with its model_path filled in by a config override; after the test a lite model gets its shipped
# configuration back and the others are unloaded.

@pytest.fixture()
def loaded(client):
    names = []

    def load(model: str, **parameters: str) -> None:
        client.load(model, parameters)
        names.append(model)

    yield load
    for model in names:
        if model in LITE.split(","):
            client.load(model)
        else:
            client.unload(model)


def test_a_model_pointed_at_a_local_folder_by_a_config_override(client, loaded, tiny_sentence_model):
    loaded("text_embedder", model_path=str(tiny_sentence_model))
    local = SentenceEmbedder(str(tiny_sentence_model), model_id=embedder_id(str(tiny_sentence_model)))
    remote = triton.TritonTextEmbedder(client)
    assert remote.model_id == local.model_id == tiny_sentence_model.name
    np.testing.assert_allclose(remote.embed(TEXTS), local.embed(TEXTS), rtol=0, atol=1e-5)


def _items(clips: list[audio.Audio]) -> list[ScoreItem]:
    labels = [["car horn", "rain"], ["busy street"], ["dog barking", "birds singing", "church bells"]]
    return [ScoreItem(labels[i % 3], audio=lambda c=clip: c) for i, clip in enumerate(clips)]


def test_clap_through_triton_scores_as_in_process(client, loaded, tiny_clap, clips):
    loaded("clap_scorer", model_path=str(tiny_clap))
    local, remote = ClapScorer(str(tiny_clap), device="cpu"), triton.TritonScorer(client)
    assert remote.scorer_id == local.scorer_id
    items = _items(clips[:6])
    for mine, theirs in zip(remote.score_batch(items), local.score_batch(items)):
        np.testing.assert_allclose(mine.scores, theirs.scores, rtol=0, atol=1e-5)
        np.testing.assert_allclose(mine.audio_embedding, theirs.audio_embedding, rtol=0, atol=1e-5)
    # A bad clip is refused alone, as INVALID_ARGUMENT: the client's ValueError, which the aligner dead-letters.
    with pytest.raises(ValueError, match="NaN"):
        remote.score_batch([ScoreItem(["rain"], audio=lambda: audio.Audio(np.full(4800, np.nan, np.float32),
                                                                          48_000, 48_000, 1))])


def test_clap_via_16k_through_triton_scores_as_in_process(client, loaded, tiny_clap, clips):
    loaded("clap_scorer", model_path=str(tiny_clap), resample_via_16k="true", sample_rate="16000")
    local = ClapScorer(str(tiny_clap), device="cpu", resample_via_16k=True)
    remote = triton.TritonScorer(client)
    assert remote.scorer_id == local.scorer_id and remote.sample_rate == local.sample_rate == 16_000
    items = _items(clips[:3])
    for mine, theirs in zip(remote.score_batch(items), local.score_batch(items)):
        np.testing.assert_allclose(mine.scores, theirs.scores, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_audio", "qwen2_5_omni", "qwen3_omni", "gemma3n"])
def test_mllm_through_triton_describes_as_in_process(client, loaded, clips, family, request):
    checkpoint = request.getfixturevalue(f"tiny_{family}")
    loaded("mllm_labeler", model_path=str(checkpoint), max_new_tokens="8")
    local = MllmLabeler(str(checkpoint), device="cpu", max_new_tokens=8)
    remote = triton.TritonLabeler(client)
    assert (remote.model_id, remote.prompt_id, remote.sample_rate) == (local.model_id, local.prompt_id,
                                                                       local.sample_rate)
    hints = ["", "heavy traffic", "", ""]
    # One clip a call: a batch's padding may flip a random-weight model's near-tied tokens, wherever it runs.
    for clip, hint in zip(clips[:4], hints):
        assert remote.describe([clip], [hint]) == local.describe([clip], [hint])
    assert len(remote.describe(clips[:4], hints)) == 4  # concurrent requests, merged by the batcher


def test_namer_through_triton_names_as_in_process(client, loaded, tmp_path):
    folder = _tiny_causal_lm(tmp_path / "tiny-lm")
    loaded("namer", model_path=str(folder), max_new_tokens="6")
    local, remote = TransformersGenerator(str(folder), max_new_tokens=6), triton.TritonGenerator(client)
    prompts = [cluster_prompt({"car horn": 3, "busy street": 1}), cluster_prompt({"rain falling": 2})]
    assert remote.model_id == local.model_id
    assert remote.generate(prompts) == local.generate(prompts)


def _tiny_causal_lm(folder: Path) -> Path:
    """A Qwen2 causal LM with random weights and the tiny tokenizer: the namer's code path, no hub."""
    import torch
    import transformers as tf

    from tests.tiny_models import QWEN_SPECIAL, TINY_TEXT, byte_bpe

    tok = byte_bpe(QWEN_SPECIAL)
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = tf.Qwen2ForCausalLM(tf.Qwen2Config(vocab_size=tok.get_vocab_size(), **TINY_TEXT,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
