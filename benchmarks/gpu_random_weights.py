"""Throughput of the paper's real-size model architectures with random weights, on a GPU (not run in CI).

    python benchmarks/gpu_random_weights.py [--batch 8] [--seconds 10] [--new-tokens 32] [--models all]
    python benchmarks/gpu_random_weights.py --tiny --device cpu     # the same code path, shrunk, on any machine

Nothing is downloaded: each architecture is built from its published config values, written out below, with
random weights, so this measures what the weights' values do not change — clips/s and memory for a batch of
``--seconds`` clips. The MLLMs generate exactly ``--new-tokens`` tokens per clip (random weights would stop at a
random end token); the paper's labels are a few word pairs, ~20–40 tokens. CLAP embeds each clip and three labels.

- Qwen2-Audio-7B-Instruct (Qwen2AudioForConditionalGeneration; Whisper-large-v3 encoder + a 7B Qwen LM);
- Qwen2.5-Omni-3B, its thinker only (Qwen2_5OmniThinkerForConditionalGeneration), as MllmLabeler loads it;
- CLAP htsat-fused (ClapModel, the architecture of Human-CLAP), with the fused 10 s feature extractor.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch
import transformers as tf
from rich.console import Console
from rich.table import Table

# Qwen/Qwen2-Audio-7B-Instruct config.json (the text model's omitted keys are Qwen2's defaults, written out).
QWEN2_AUDIO_7B = dict(
    audio_config=dict(model_type="qwen2_audio_encoder", num_mel_bins=128, encoder_layers=32,
                      encoder_attention_heads=20, encoder_ffn_dim=5120, d_model=1280, activation_function="gelu",
                      scale_embedding=False, max_source_positions=1500),
    text_config=dict(model_type="qwen2", vocab_size=156032, hidden_size=4096, intermediate_size=11008,
                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                     max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=151643, eos_token_id=151645,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    audio_token_index=151646,
)
# Qwen/Qwen2.5-Omni-3B config.json, thinker_config: Qwen2.5-3B's LM, the Qwen2.5-VL vision tower, a
# Whisper-large-v3-sized audio encoder projecting to the LM's 2048.
QWEN2_5_OMNI_3B_THINKER = dict(
    audio_config=dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                      num_mel_bins=128, max_source_positions=1500, n_window=100, output_dim=2048),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31], out_hidden_size=2048),
    text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                     num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
                     rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
    audio_token_index=151646, image_token_index=151655, video_token_index=151656, audio_start_token_id=151647,
    audio_end_token_id=151648, vision_start_token_id=151652, vision_end_token_id=151653,
    position_id_per_seconds=25, seconds_per_chunk=2,
)
# laion/clap-htsat-fused config.json: HTSAT-tiny audio tower with fusion, RoBERTa-base text tower, 512-d space.
CLAP_HTSAT_FUSED = dict(
    audio_config=dict(enable_fusion=True, fusion_type="aff_2d", spec_size=256, window_size=8, num_mel_bins=64,
                      depths=[2, 2, 6, 2], num_attention_heads=[4, 8, 16, 32], hidden_size=768,
                      patch_embeds_hidden_size=96, patch_size=4, patch_stride=[4, 4], mlp_ratio=4.0,
                      num_classes=527, projection_dim=512),
    text_config=dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, projection_dim=512),
    projection_dim=512,
)
# --tiny: the same architectures shrunk to run anywhere in seconds — a check of this script, not a measurement.
TINY_LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2)
TINY_WHISPER = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128)
TINY = {
    "qwen2-audio": dict(audio_config=TINY_WHISPER, text_config=TINY_LM),
    "omni-thinker": dict(audio_config={**TINY_WHISPER, "output_dim": 64},
                         vision_config=dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=4,
                                            out_hidden_size=64, fullatt_block_indexes=[0]),
                         text_config={**TINY_LM, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                                                     "mrope_section": [2, 3, 3]}}),
    "clap": dict(audio_config=dict(depths=[1, 1, 1, 1], hidden_size=64, patch_embeds_hidden_size=8,
                                   num_attention_heads=[1, 2, 4, 8]),
                 text_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)),
}
TEXT_TOKENS = 24  # random prompt tokens on each side of the audio: the prompt's length, roughly


def merged(config: dict, tiny: dict | None) -> dict:
    """``config`` with the ``--tiny`` overrides applied one level deep."""
    if not tiny:
        return config
    return {k: ({**v, **tiny.get(k, {})} if isinstance(v, dict) else v) for k, v in config.items()}


def build(cls, config, device: str, dtype: torch.dtype):
    torch.manual_seed(0)
    with torch.device(device):
        return cls._from_config(config, dtype=dtype).eval()


def audio_prompt(n_audio: torch.Tensor, audio_id: int, start_id: int, end_id: int) -> dict[str, torch.Tensor]:
    """Token ids per clip as the processors lay them out: text, the audio span (start, one token per audio frame
    the encoder outputs, end), text; random text ids below the special tokens, left-padded and masked."""
    rng = np.random.default_rng(0)
    rows = [np.concatenate([rng.integers(0, 151_000, TEXT_TOKENS), [start_id], np.full(int(n), audio_id), [end_id],
                            rng.integers(0, 151_000, TEXT_TOKENS)]) for n in n_audio]
    width = max(len(r) for r in rows)
    ids = np.stack([np.pad(r, (width - len(r), 0)) for r in rows])
    mask = np.stack([np.arange(width) >= width - len(r) for r in rows])
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}


def audio_tokens(model, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames the audio encoder outputs per clip: the number of audio tokens the prompt must hold."""
    tower = next(module for name, module in model.named_modules() if name.endswith("audio_tower"))
    return tower._get_feat_extract_output_lengths(features["feature_attention_mask"].sum(-1))


def mllm_step(model, features: dict, n_audio: torch.Tensor, ids: tuple[int, int, int], new_tokens: int,
              device: str) -> Callable[[], None]:
    inputs = {k: v.to(device) for k, v in {**features, **audio_prompt(n_audio, *ids)}.items()}

    def step() -> None:
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           num_beams=1, pad_token_id=0)
    return step


def whisper_features(batch: int, seconds: float, dtype: torch.dtype) -> dict:
    waves = [np.random.default_rng(i).normal(0, 0.1, int(16_000 * seconds)).astype(np.float32) for i in range(batch)]
    out = tf.WhisperFeatureExtractor(feature_size=128)(waves, sampling_rate=16_000, return_attention_mask=True,
                                                       return_tensors="pt")
    return {"input_features": out["input_features"].to(dtype), "feature_attention_mask": out["attention_mask"]}


def qwen2_audio(args, dtype) -> tuple[object, Callable[[], None]]:
    config = tf.Qwen2AudioConfig(**merged(QWEN2_AUDIO_7B, TINY["qwen2-audio"] if args.tiny else None))
    model = build(tf.Qwen2AudioForConditionalGeneration, config, args.device, dtype)
    features = whisper_features(args.batch, args.seconds, dtype)
    _, n_audio = audio_tokens(model, features)
    ids = (config.audio_token_id, 151647, 151648)
    return model, mllm_step(model, features, n_audio, ids, args.new_tokens, args.device)


def omni_thinker(args, dtype) -> tuple[object, Callable[[], None]]:
    config = tf.Qwen2_5OmniThinkerConfig(**merged(QWEN2_5_OMNI_3B_THINKER,
                                                  TINY["omni-thinker"] if args.tiny else None))
    model = build(tf.Qwen2_5OmniThinkerForConditionalGeneration, config, args.device, dtype)
    features = whisper_features(args.batch, args.seconds, dtype)
    _, n_audio = audio_tokens(model, features)
    ids = (config.audio_token_id, config.audio_start_token_id, config.audio_end_token_id)
    return model, mllm_step(model, features, n_audio, ids, args.new_tokens, args.device)


def clap(args, dtype) -> tuple[object, Callable[[], None]]:
    config = tf.ClapConfig(**merged(CLAP_HTSAT_FUSED, TINY["clap"] if args.tiny else None))
    model = build(tf.ClapModel, config, args.device, dtype)
    extractor = tf.ClapFeatureExtractor(truncation="fusion", padding="repeatpad")
    waves = [np.random.default_rng(i).normal(0, 0.1, int(48_000 * args.seconds)) for i in range(args.batch)]
    audio = extractor(waves, sampling_rate=48_000, return_tensors="pt")
    audio = {"input_features": audio["input_features"].to(args.device, dtype), "is_longer": audio["is_longer"].to(
        args.device)}
    # Three labels a clip of a few word pieces each, as the paper's word pairs tokenise.
    text = torch.randint(3, config.text_config.vocab_size, (3 * args.batch, 8), device=args.device)

    def step() -> None:
        with torch.inference_mode():
            model.get_audio_features(**audio)
            model.get_text_features(input_ids=text, attention_mask=torch.ones_like(text))
    return model, step


MODELS = {"qwen2-audio": ("Qwen2-Audio-7B-Instruct", qwen2_audio),
          "omni-thinker": ("Qwen2.5-Omni-3B thinker", omni_thinker),
          "clap": ("CLAP htsat-fused (Human-CLAP)", clap)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all", help=f"comma list of {', '.join(MODELS)}, or all")
    parser.add_argument("--batch", type=int, default=8, help="clips per model call")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens each MLLM generates per clip")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up call")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tiny", action="store_true", help="shrunk architectures: checks the script anywhere")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    names = list(MODELS) if args.models == "all" else args.models.split(",")

    table = Table(title=f"Random-weight architectures on {torch.cuda.get_device_name() if cuda else args.device}, "
                        f"{args.dtype}, {args.batch} clips of {args.seconds:g} s per call"
                        f"{' (TINY: not a measurement)' if args.tiny else ''}")
    for column in ("model", "parameters", "build s", "s per call", "clips/s", "peak GPU GiB"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in names:
        title, make = MODELS[name]
        t0 = time.perf_counter()
        model, step = make(args, dtype)
        built = time.perf_counter() - t0
        params = sum(p.numel() for p in model.parameters())
        step()  # warm-up: kernels, allocator
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            step()
        if cuda:
            torch.cuda.synchronize()
        per_call = (time.perf_counter() - t0) / args.repeats
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if cuda else "-"
        table.add_row(title, f"{params / 1e9:.2f} B" if params > 1e8 else f"{params / 1e6:.1f} M", f"{built:.0f}",
                      f"{per_call:.2f}", f"{args.batch / per_call:.1f}", peak)
        del model, step
        if cuda:
            torch.cuda.empty_cache()
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
