"""The paper's aligner: Human-CLAP, an audio–text model whose cosine says how well a label describes a clip.

:class:`ClapScorer` runs a transformers ``ClapModel`` checkpoint from a local folder or, where a hub is
reachable, by id. The paper's is the authors' Human-CLAP, :data:`HUMAN_CLAP_ID`, with the processor of
:data:`CLAP_PROCESSOR_ID` (48 kHz). :class:`LaionClapScorer` runs an original ``laion_clap`` checkpoint file
(``SCORER_MODEL`` naming a ``.pt`` file selects it).

A label's score is the cosine between the clip's audio embedding and the label's text embedding, in [-1, 1].

``resample_via_16k`` (the paper profile's default): the authors converted every file to 16 kHz, 16-bit, mono
(ffmpeg) and loaded it at CLAP's 48 kHz, so the model saw nothing above 8 kHz. Set it to score as they did (scores
comparable with the paper's); leave it off to give the model the full band. Either way resampling is soxr's
high-quality one, not ffmpeg's and librosa's.

Features are extracted one clip at a time, as the authors did, and only the model runs batched: for a batch with no
clip longer than the window, the Hugging Face feature extractor of a fused checkpoint marks ``is_longer`` on one
randomly chosen clip, so batched extraction would score a clip differently from one-by-one, and differently from
run to run. A clip longer than the window is cropped at random by that extractor (the authors' runs too); here
the crops come from a generator seeded the same for every clip, so a clip always gets the same score.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soxr

from auditoryhum.audio import Audio
from auditoryhum.backends import BackendUnavailable, ScoreItem, Scores

HUMAN_CLAP_ID = "sarulab-speech/human-clap-wsce-mse-mae"
CLAP_PROCESSOR_ID = "laion/clap-htsat-fused"
AUTHORS_RATE = 16_000
CLAP_RATE = 48_000  # laion_clap's; a transformers checkpoint's comes from its feature extractor


def resample_for_clap(clip: Audio, model_rate: int, via_16k: bool) -> np.ndarray:
    """The clip's samples at the model's rate; with ``via_16k`` first as the authors' 16 kHz, 16-bit files held it
    (see the module doc)."""
    samples, rate = clip.samples, clip.sample_rate
    if via_16k:
        if rate != AUTHORS_RATE:
            samples, rate = soxr.resample(samples, rate, AUTHORS_RATE, quality="HQ"), AUTHORS_RATE
        samples = np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768) / 32768  # signed 16-bit, as read back
    if rate != model_rate:
        samples = soxr.resample(samples, rate, model_rate, quality="HQ")
    return np.ascontiguousarray(samples, dtype=np.float32)


def cosine_scores(items: Sequence[ScoreItem], embed_audio: Callable[[list[Audio]], np.ndarray],
                  embed_text: Callable[[list[str]], np.ndarray]) -> list[Scores]:
    """One audio batch for the items' clips and one text batch for their unique labels, then cosines."""
    if any(item.audio is None for item in items):
        raise ValueError("CLAP scores labels against the clip's audio, and an item came without it")
    if not items:
        return []
    audio = _unit(embed_audio([item.audio() for item in items]))
    texts = list(dict.fromkeys(label for item in items for label in item.labels))
    text = _unit(embed_text(texts)) if texts else np.zeros((0, audio.shape[1]), np.float32)
    row = {t: i for i, t in enumerate(texts)}
    return [Scores(np.clip(text[[row[label] for label in item.labels]] @ clip, -1.0, 1.0), clip)
            for item, clip in zip(items, audio)]


def _scorer_id(kind: str, model_id: str, via_16k: bool) -> str:
    return f"{kind}({model_id}{', via 16 kHz' if via_16k else ''})"


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class ClapScorer:
    """A Scorer over a transformers ``ClapModel``. ``sample_rate`` is the rate to load audio at (16 kHz with
    ``resample_via_16k``, else the model's); audio at any other rate is resampled here."""

    def __init__(self, path: str, *, processor_path: str | None = None, model_id: str | None = None,
                 resample_via_16k: bool = False, device: str | None = None):
        import torch
        from transformers import ClapModel, ClapProcessor

        self.model_id = model_id or path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # A checkpoint folder with its own processor uses it; the fallback is for checkpoints without one (Human-CLAP).
        own = any(Path(path, name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))
        self.processor = ClapProcessor.from_pretrained(path if own or not processor_path else processor_path)
        self.model = ClapModel.from_pretrained(path).to(self.device)
        self.model_rate = int(self.processor.feature_extractor.sampling_rate)
        self.resample_via_16k = resample_via_16k
        self.sample_rate = AUTHORS_RATE if resample_via_16k else self.model_rate
        self.scorer_id = _scorer_id("clap", self.model_id, resample_via_16k)
        # A fast tokenizer raises "Already borrowed" when two threads call it at once (a threaded gRPC server).
        self._tokenizer_lock = threading.Lock()

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Scores]:
        return cosine_scores(items, self.embed_audio, self.embed_text)

    def embed_audio(self, clips: Sequence[Audio]) -> np.ndarray:
        import torch

        # One clip at a time (see the module doc), then one model call for the batch.
        features = [self._features(resample_for_clap(clip, self.model_rate, self.resample_via_16k)) for clip in clips]
        batch = {key: torch.cat([f[key] for f in features]) for key in features[0]}
        mels = batch["input_features"].to(self.device, self.model.dtype)
        with torch.inference_mode():
            out = self.model.get_audio_features(input_features=mels, is_longer=batch["is_longer"].to(self.device))
        return out.pooler_output.float().cpu().numpy()

    def _features(self, wave: np.ndarray):
        with _seeded_numpy():  # the extractor crops long clips with numpy's global generator
            return self.processor.feature_extractor(wave, sampling_rate=self.model_rate, return_tensors="pt")

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with self._tokenizer_lock:
            tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_text_features(**tokens.to(self.device))
        return out.pooler_output.float().cpu().numpy()


class LaionClapScorer:
    """A Scorer over an original ``laion_clap`` checkpoint file (``CLAP_Module.load_ckpt``), such as
    ``630k-audioset-best.pt`` (``enable_fusion=False``) or ``630k-audioset-fusion-best.pt`` (``True``).

    ``laion_clap`` loads three hub tokenizers and a text model by name (``roberta-base``, ``bert-base-uncased``,
    ``facebook/bart-base``) when it is imported and when it builds the model. The checkpoint holds every weight,
    so only their files are needed: give ``text_dir``, a folder with those three folders (as the hub names them,
    ``facebook/bart-base`` included), and they are read from it, never from a hub. Without it they come from the
    Hugging Face cache, or a hub where one is reachable. ``enable_fusion`` and ``amodel`` must match the
    checkpoint. ``sample_rate`` is as :class:`ClapScorer`'s.
    """

    def __init__(self, checkpoint_file: str | Path, *, enable_fusion: bool = False, amodel: str = "HTSAT-tiny",
                 text_dir: str | Path | None = None, model_id: str | None = None, resample_via_16k: bool = False,
                 device: str | None = None):
        checkpoint = Path(checkpoint_file).resolve()
        if not checkpoint.is_file():
            raise FileNotFoundError(f"no laion_clap checkpoint file at {checkpoint}")
        if text_dir is not None:
            missing = [name for name in LAION_TEXT_MODELS if not Path(text_dir, name).is_dir()]
            if missing:
                raise FileNotFoundError(f"{text_dir}: no {', '.join(missing)} folder (laion_clap's text models)")
        with _names_resolve_in(text_dir):
            try:
                import laion_clap
            except ImportError as exc:
                raise BackendUnavailable("LaionClapScorer needs the `laion_clap` package (pip install "
                                         "laion-clap)") from exc
            except (OSError, ValueError) as exc:  # its import-time tokenizer download failed (offline, no cache)
                raise BackendUnavailable(f"importing laion_clap fetches its tokenizers from the Hugging Face hub, "
                                         f"which failed (offline? give text_dir): {exc}") from exc
            self.model = laion_clap.CLAP_Module(enable_fusion=enable_fusion, amodel=amodel, device=device)
        self.model.load_ckpt(str(checkpoint), verbose=False)
        self.model.eval()
        self.model_id = model_id or checkpoint.name
        self.resample_via_16k = resample_via_16k
        self.sample_rate = AUTHORS_RATE if resample_via_16k else CLAP_RATE
        self.scorer_id = _scorer_id("laion-clap", self.model_id, resample_via_16k)

    def score_batch(self, items: Sequence[ScoreItem]) -> list[Scores]:
        return cosine_scores(items, self.embed_audio, self.embed_text)

    def embed_audio(self, clips: Sequence[Audio]) -> np.ndarray:
        import torch

        rows = []
        for clip in clips:  # one call a clip: the module takes a [N, T] array, and clips differ in length
            wave = resample_for_clap(clip, CLAP_RATE, self.resample_via_16k)
            # laion_clap's own usage quantises to 16-bit first, as its training audio was.
            wave = (np.clip(wave, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32767
            with _seeded_numpy(), torch.inference_mode():  # it crops long clips at random, as the HF extractor
                rows.append(self.model.get_audio_embedding_from_data(x=wave[None, :], use_tensor=False)[0])
        return np.stack(rows)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        # laion_clap's released tokenizer wrapper squeezes a batch of one into a bad shape (LAION-AI/CLAP#85):
        # a lone text goes in twice.
        batch = list(texts) * 2 if len(texts) == 1 else list(texts)
        with torch.inference_mode():
            return np.asarray(self.model.get_text_embedding(batch, use_tensor=False))[: len(texts)]


LAION_TEXT_MODELS = ("roberta-base", "bert-base-uncased", "facebook/bart-base")
_process_state = threading.Lock()  # the working directory and numpy's global generator are process-wide


@contextmanager
def _names_resolve_in(folder: str | Path | None):
    """transformers reads a name that is a local folder (relative to the working directory) before any hub: run
    laion_clap's by-name loading from ``folder``. Only at construction, under a lock."""
    if folder is None:
        yield
        return
    with _process_state:
        previous = os.getcwd()
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(previous)


@contextmanager
def _seeded_numpy():
    """numpy's global generator seeded the same for every clip (and put back after): feature extractors that crop
    long clips at random with it then crop a clip the same way every time."""
    with _process_state:
        state = np.random.get_state()
        np.random.seed(0)
        try:
            yield
        finally:
            np.random.set_state(state)
