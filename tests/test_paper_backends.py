"""The paper's models as backends (MLLM labelers, CLAP scorers, an MPNet sentence embedder), run on tiny
random-weight models of the same classes (tests/tiny_models.py) and real recordings: real processors, chat
templates, batched generation and scoring, no model hub. Random weights write gibberish, so the labels are checked
through the labeler stage: parsed into labels, or dead-lettered with the reason."""

from __future__ import annotations

import sys
from functools import partial

import numpy as np
import pytest
import torch

from auditoryhum import topics
from auditoryhum.audio import Audio, load
from auditoryhum.backends import BackendUnavailable, ScoreItem
from auditoryhum.backends.clap import ClapScorer, LaionClapScorer, resample_for_clap
from auditoryhum.backends.mllm import (HINT_PREFIX, PROMPT_ID, QWEN_OMNI_SYSTEM_PROMPT, SYSTEM_PROMPT, USER_PROMPT,
                                      MllmLabeler, _quantization, quantization_config)
from auditoryhum.config import Settings
from auditoryhum.models import FOUR_BIT
from auditoryhum.backends.text import SentenceEmbedder
from auditoryhum.labels import parse_labels
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.stages.labeler import HINT_KEY, LabelerStage
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.conftest import LINCITY

# Different lengths and source rates, so prompts differ in audio tokens and batches need padding.
CLIPS = [LINCITY / name for name in ("Build1.wav", "CoalMine2.wav", "Blacksmith1.wav")]
HINTS = ["", "a hammer striking an anvil", ""]
FAMILIES = {"tiny_qwen2_audio": "qwen2_audio", "tiny_qwen2_5_omni": "qwen2_5_omni", "tiny_qwen3_omni": "qwen3_omni",
            "tiny_gemma3n": "gemma3n"}
# The authors' system turn per family: the Qwen Omni models need the Qwen team's own.
SYSTEM_ROLES = {"qwen2_audio": SYSTEM_PROMPT, "qwen2_5_omni": QWEN_OMNI_SYSTEM_PROMPT,
                "qwen3_omni": QWEN_OMNI_SYSTEM_PROMPT, "gemma3n": SYSTEM_PROMPT}


def load_clip(clip: pb.Clip, rate: int) -> Audio:
    return load(clip.uri, rate)


def clip_messages() -> list[pb.Clip]:
    return [pb.Clip(clip_id=p.stem, uri=str(p), dataset="lincity", metadata={HINT_KEY: h} if h else {})
            for p, h in zip(CLIPS, HINTS)]


@pytest.fixture(scope="module", params=list(FAMILIES))
def labeler(request) -> MllmLabeler:
    # batch_size 2 with three clips: describe() splits a call into model batches
    return MllmLabeler(str(request.getfixturevalue(request.param)), batch_size=2)


@pytest.fixture(scope="module")
def audio(labeler) -> list[Audio]:
    return [load(p, labeler.sample_rate) for p in CLIPS]


def test_family_comes_from_the_checkpoint_config(labeler, request):
    assert labeler.family == FAMILIES[request.node.callspec.params["labeler"]]
    assert labeler.sample_rate == 16_000  # from the processor's feature extractor
    assert labeler.prompt_id == PROMPT_ID and PROMPT_ID.startswith("word-pairs-")


def test_hint_is_appended_to_the_prompt_and_prompts_are_left_padded(labeler, audio):
    batch = labeler.inputs(audio, HINTS)
    prompts = labeler.processor.tokenizer.batch_decode(batch["input_ids"])
    assert all(USER_PROMPT in p for p in prompts)
    assert f"{USER_PROMPT} {HINT_PREFIX}{HINTS[1]}" in prompts[1]
    assert HINT_PREFIX not in prompts[0] and HINT_PREFIX not in prompts[2]
    mask = batch["attention_mask"]
    assert bool(mask[:, -1].all()) and not bool(mask.all())  # padding only on the left, where prompts are shorter


def test_each_family_gets_the_authors_system_role(labeler, audio):
    (prompt,) = labeler.processor.tokenizer.batch_decode(labeler.inputs(audio[:1])["input_ids"])
    role = SYSTEM_ROLES[labeler.family]
    assert role in prompt and prompt.index(role) < prompt.index(USER_PROMPT)
    other = SYSTEM_PROMPT if role == QWEN_OMNI_SYSTEM_PROMPT else QWEN_OMNI_SYSTEM_PROMPT
    assert other not in prompt


def test_batched_generation_equals_one_by_one(labeler, audio):
    batched = labeler.describe(audio, HINTS)
    single = [labeler.describe([a], [h])[0] for a, h in zip(audio, HINTS)]
    assert [d.raw_text for d in batched] == [d.raw_text for d in single]
    assert all(isinstance(d.raw_text, str) and d.tags == [] for d in batched)


def test_labeler_stage_parses_the_text_or_dead_letters_it(labeler, audio):
    """Each clip's outcome follows from the model's own (deterministic) text: its parsed labels when there are
    any, else a dead letter quoting the text. A random-weight model may give either; the test knows which."""
    clips = clip_messages()
    texts = [d.raw_text for d in labeler.describe(audio, HINTS)]
    for clip, text, outs in zip(clips, texts, LabelerStage(labeler, load_clip).handle_batch(clips), strict=True):
        (out,) = outs
        if labels := parse_labels(text):
            assert out.topic == topics.LABELS
            proposal = out.message
            assert proposal.raw_text == text and list(proposal.labels) == labels
            assert proposal.model_id == labeler.model_id and proposal.prompt_id == PROMPT_ID
            assert proposal.hint == clip.metadata.get(HINT_KEY, "")
        else:
            assert out.topic == topics.DLQ
            assert out.message.reason == f"no usable label in model output {text[:200]!r}"


@pytest.mark.parametrize("checkpoint, family, thinker", [
    ("tiny_qwen2_5_omni", "qwen2_5_omni", "Qwen2_5OmniThinkerForConditionalGeneration"),
    ("tiny_qwen3_omni", "qwen3_omni", "Qwen3OmniMoeThinkerForConditionalGeneration")])
def test_omni_thinker_saved_alone_loads_like_the_released_layout(checkpoint, family, thinker, request, tmp_path):
    released = MllmLabeler(str(request.getfixturevalue(checkpoint)))  # weights under thinker., talker disabled
    assert type(released.model).__name__ == thinker and released.family == family
    released.model.save_pretrained(tmp_path)
    released.processor.save_pretrained(tmp_path)
    alone = MllmLabeler(str(tmp_path))
    assert alone.model.config.model_type == f"{released.model.config.model_type}" and alone.family == family
    clip = [load(CLIPS[0], alone.sample_rate)]
    assert alone.describe(clip) == released.describe(clip)


def test_mllm_refuses_what_this_machine_cannot_do(tiny_qwen2_audio):
    with pytest.raises(ValueError, match="unknown MLLM family"):
        MllmLabeler(str(tiny_qwen2_audio), family="whisper")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="4-bit loading needs a CUDA device"):
            MllmLabeler(str(tiny_qwen2_audio), load_in_4bit=True)


def test_the_paper_profile_loads_mllms_as_the_authors_did_where_cuda_is(tiny_qwen2_audio):
    config = quantization_config()  # the reference's BitsAndBytesConfig
    assert (config.load_in_4bit, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant,
            config.bnb_4bit_compute_dtype) == (True, "nf4", True, torch.bfloat16)
    assert FOUR_BIT[Settings(profile="paper").labeler_4bit] is None  # auto
    assert FOUR_BIT[Settings().labeler_4bit] is False
    assert FOUR_BIT[Settings(profile="paper", labeler_4bit="off").labeler_4bit] is False
    # auto: full weights where there is no GPU, instead of refusing
    assert _quantization(None, "cpu") is None
    assert MllmLabeler(str(tiny_qwen2_audio), load_in_4bit=None, device="cpu").model.dtype == torch.float32
    if torch.cuda.is_available():
        assert _quantization(None, "cuda").bnb_4bit_use_double_quant


@pytest.fixture(scope="module")
def clap(tiny_clap) -> ClapScorer:
    return ClapScorer(str(tiny_clap))


def score_items(rate: int) -> list[ScoreItem]:
    labels = [["car horn", "rain falling"], [], ["rain falling", "hammer", "car horn"]]
    return [ScoreItem(l, audio=partial(load, p, rate)) for p, l in zip(CLIPS, labels)]


def test_clap_scores_every_label_and_batches_like_single_items(clap):
    items = score_items(clap.sample_rate)
    batched = clap.score_batch(items)
    for item, result in zip(items, batched):
        assert result.scores.shape == (len(item.labels),)
        assert np.all(np.abs(result.scores) <= 1.0)
        assert np.isclose(np.linalg.norm(result.audio_embedding), 1.0, atol=1e-5)
        (single,) = clap.score_batch([item])
        np.testing.assert_allclose(result.scores, single.scores, atol=1e-5)
        np.testing.assert_allclose(result.audio_embedding, single.audio_embedding, atol=1e-5)
    assert clap.sample_rate == 48_000 and clap.scorer_id == f"clap({clap.model_id})"


def test_clap_runs_in_the_aligner_stage(clap):
    proposal = pb.LabelProposal(clip=clip_messages()[0], model_id="m", labels=["car horn", "hammer"])
    (out,) = AlignerStage(clap, load_clip, clap.sample_rate).handle(proposal)
    alignment = out.message
    assert out.topic == topics.ALIGNMENTS and alignment.scorer_id == clap.scorer_id
    assert [s.label for s in alignment.scores] == ["car horn", "hammer"] and -1 <= alignment.best_score <= 1
    with pytest.raises(ValueError, match="without it"):  # CLAP cannot score labels alone; the stage dead-letters
        clap.score_batch([ScoreItem(["car horn"])])


def test_fused_clap_scores_a_clip_the_same_in_any_batch_and_any_run(tiny_clap_fused, tiny_clap):
    # The authors' processor is laion/clap-htsat-fused: for a batch of clips shorter than its window, the feature
    # extractor marks one random clip as "longer", so batched extraction scored clips differently.
    fused = ClapScorer(str(tiny_clap_fused), processor_path=str(tiny_clap))
    # The checkpoint's own processor wins over the fallback one when the folder has one.
    assert fused.processor.feature_extractor.truncation == "fusion"
    clips = [LINCITY / name for name in ("Build1.wav", "CoalMine2.wav", "Blacksmith1.wav", "Fire1.wav")]
    items = [ScoreItem(["car horn", "rain falling"], audio=partial(load, p, fused.sample_rate)) for p in clips]
    runs = [fused.score_batch(items) for _ in range(3)]
    single = [fused.score_batch([item])[0] for item in items]
    for run in runs:
        for got, want in zip(run, single):
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
            np.testing.assert_allclose(got.audio_embedding, want.audio_embedding, atol=1e-5)
    # The same clip as a long one (15 s, cropped at random by the extractor) also scores the same every time.
    long = load(LINCITY / "Build1.wav", fused.sample_rate)
    long = Audio(np.tile(long.samples, int(np.ceil(15 * long.sample_rate / len(long.samples)))), long.sample_rate,
                 long.sample_rate, 1)
    first, second = (fused.score_batch([ScoreItem(["car horn"], audio=lambda: long)])[0] for _ in range(2))
    np.testing.assert_array_equal(first.scores, second.scores)


def test_the_paper_profile_scores_the_authors_16_bit_16k_audio():
    assert Settings(profile="paper").clap_resample_via_16k and not Settings().clap_resample_via_16k
    noise = Audio(np.random.default_rng(1).uniform(-0.5, 0.5, 16_000).astype(np.float32), 16_000, 16_000, 1)
    as_read = resample_for_clap(noise, 16_000, via_16k=True)
    np.testing.assert_array_equal(as_read * 32768, np.round(as_read * 32768))  # on the 16-bit grid
    assert not np.array_equal(resample_for_clap(noise, 16_000, via_16k=False) * 32768,
                              np.round(noise.samples * 32768))


def test_resampling_via_16k_keeps_nothing_above_8k(tiny_clap):
    noise = Audio(np.random.default_rng(0).uniform(-0.5, 0.5, 48_000).astype(np.float32), 48_000, 48_000, 1)

    def share_above_8k(samples: np.ndarray) -> float:
        power = np.abs(np.fft.rfft(samples)) ** 2
        return float(power[np.fft.rfftfreq(len(samples), 1 / 48_000) > 8_500].sum() / power.sum())

    assert share_above_8k(resample_for_clap(noise, 48_000, via_16k=False)) > 0.5
    assert share_above_8k(resample_for_clap(noise, 48_000, via_16k=True)) < 1e-3
    authors = ClapScorer(str(tiny_clap), resample_via_16k=True)
    assert authors.sample_rate == 16_000 and "via 16 kHz" in authors.scorer_id
    for result in authors.score_batch(score_items(authors.sample_rate)):
        assert np.all(np.abs(result.scores) <= 1.0)


def test_laion_clap_needs_a_checkpoint_file_and_the_package(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        LaionClapScorer(tmp_path / "missing.pt")
    checkpoint = tmp_path / "human_clap.pt"
    checkpoint.write_bytes(b"not used")
    monkeypatch.setitem(sys.modules, "laion_clap", None)  # what a missing package looks like to `import`
    with pytest.raises(BackendUnavailable, match="needs the `laion_clap` package"):
        LaionClapScorer(checkpoint)
    # The real package fetches tokenizers from the hub when imported; offline that raises OSError.
    monkeypatch.delitem(sys.modules, "laion_clap")
    (tmp_path / "laion_clap.py").write_text("raise OSError(\"We couldn't connect to 'https://huggingface.co'\")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendUnavailable, match="fetches its tokenizers from the Hugging Face hub"):
        LaionClapScorer(checkpoint)


def test_laion_clap_checkpoints_are_a_scorer_choice_and_load_offline(tiny_laion_clap, tmp_path):
    from auditoryhum.models import Models

    checkpoint = tiny_laion_clap / "tiny-laion-clap.pt"
    settings = Settings(scorer_model=str(checkpoint), laion_text_dir=str(tiny_laion_clap / "text"))
    scorer = Models(settings).scorer
    assert isinstance(scorer, LaionClapScorer) and scorer.scorer_id == "laion-clap(tiny-laion-clap.pt)"
    # Every weight comes from the checkpoint (the random ones the module was built with are replaced).
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]
    for name, value in scorer.model.model.state_dict().items():
        if f"module.{name}" in saved:
            assert torch.equal(value, saved[f"module.{name}"]), name
    items = score_items(scorer.sample_rate)
    batched = scorer.score_batch(items)
    for item, result in zip(items, batched):
        assert result.scores.shape == (len(item.labels),) and np.all(np.abs(result.scores) <= 1.0)
        (single,) = scorer.score_batch([item])
        np.testing.assert_allclose(result.scores, single.scores, atol=1e-5)
    proposal = pb.LabelProposal(clip=clip_messages()[0], model_id="m", labels=["car horn", "hammer"])
    (out,) = AlignerStage(scorer, load_clip, scorer.sample_rate).handle(proposal)
    assert out.topic == topics.ALIGNMENTS and out.message.scorer_id == scorer.scorer_id
    (tmp_path / "roberta-base").mkdir()
    with pytest.raises(FileNotFoundError, match="no bert-base-uncased, facebook/bart-base folder"):
        LaionClapScorer(checkpoint, text_dir=tmp_path)


def test_sentence_embedder_loads_a_local_mpnet_folder(tiny_sentence_model):
    embedder = SentenceEmbedder(str(tiny_sentence_model), model_id="all-mpnet-base-v2 (tiny)")
    vectors = embedder.embed(["car horn", "rain falling", "car horn"])
    assert vectors.shape == (3, embedder.dimension) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])


def test_the_paper_profile_runs_the_whole_embedded_pipeline(tmp_path, tiny_qwen2_5_omni, tiny_clap,
                                                            tiny_sentence_model, traffic_clips):
    """--profile paper with the tiny stand-ins: the MLLM labels, CLAP scores, mpnet embeds, end to end."""
    import json

    from auditoryhum.backends.clap import ClapScorer
    from auditoryhum.backends.mllm import MllmLabeler
    from auditoryhum.config import Settings
    from auditoryhum.models import Models
    from auditoryhum.pipeline import run

    settings = Settings(profile="paper", labeler_model=str(tiny_qwen2_5_omni), scorer_model=str(tiny_clap),
                        scorer_processor=str(tiny_clap),
                        embedder_path=str(tiny_sentence_model), k_max=3)
    models = Models(settings)
    assert isinstance(models.labeler, MllmLabeler) and isinstance(models.scorer, ClapScorer)
    # The authors' audio: 16 kHz for the labeler and, band-limited, for CLAP (which runs at 48 kHz).
    assert models.scorer_rate == models.scorer.sample_rate == models.labeler.sample_rate == 16_000
    assert models.scorer.model_rate == 48_000 and models.scorer.resample_via_16k

    audio = tmp_path / "audio"
    audio.mkdir()
    for clip in traffic_clips[:4]:
        (audio / clip.name).symlink_to(clip)
    summary = run(audio, tmp_path / "out", settings, models=models).summary
    assert summary["labelled"] + summary["dead_letters"] == 4
    assert summary["labelled"] >= 1
    for row in (tmp_path / "out" / "alignments.csv").read_text().splitlines()[1:]:
        assert -1.0 <= float(row.split(",")[2]) <= 1.0
    assert json.loads((tmp_path / "out" / "taxonomy.json").read_text())["embedder"] == tiny_sentence_model.name
