"""Tiny random-weight models of the paper's model classes, built and saved here, never fetched from a hub.

Each ``build_*`` writes a folder that ``from_pretrained`` loads exactly like a released checkpoint (same model,
processor and tokenizer classes, config keys, chat template), so the real loading and inference code runs on it.
Each builds in a second or less (the first also imports torch). Weights are seeded: the same folder every run.
Their output is gibberish by design.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from auditoryhum.backends.mllm import HINT_PREFIX, QWEN_OMNI_SYSTEM_PROMPT, SYSTEM_PROMPT, USER_PROMPT  # noqa: E402

# The tokenizers learn the prompts' words and some labels, so random weights at least emit real sub-words.
CORPUS = [SYSTEM_PROMPT, QWEN_OMNI_SYSTEM_PROMPT, USER_PROMPT, HINT_PREFIX,
          "car horn, busy street, rain falling, birds singing, dog barking",
          "heavy traffic, church bells, crowd cheering, water flowing, wind blowing, train passing"]

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
OMNI_SPECIAL = [*QWEN_SPECIAL, "<|vision_bos|>", "<|vision_eos|>", "<|IMAGE|>", "<|VIDEO|>"]
# Qwen2.5-Omni's chat template, less the image and video branches.
QWEN_OMNI_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'audio' %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma 3n's: the system text opens the first user turn; an audio part is one <audio_soft_token>.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(prefix='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.prefix = m['content'] + '\n\n' %}{% else %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ ns.prefix }}{% set ns.prefix = '' %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'audio' %}<audio_soft_token>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
TINY_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1)
TINY_AUDIO_ENCODER = dict(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32)


def byte_bpe(special_tokens: list[str], vocab_size: int = 400) -> Tokenizer:
    """A byte-level BPE (the GPT-2/Qwen/RoBERTa kind) trained on :data:`CORPUS`; special tokens take the first ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    return tok


def _save(folder: Path, model, processor) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_clap(folder: Path, fusion: bool = False) -> Path:
    """``ClapModel`` (HTSAT audio tower, RoBERTa text tower) with ``ClapProcessor``: 48 kHz, 10 s windows. With
    ``fusion``, the feature fusion of laion/clap-htsat-fused and its processor (truncation "fusion")."""
    tok = byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))  # vocab.json + merges.txt, the files RobertaTokenizer reads
    tokenizer = tf.RobertaTokenizer.from_pretrained(folder)
    # The released fused checkpoints use truncation="fusion"; a model without the fusion layers needs these.
    features = tf.ClapFeatureExtractor(truncation="fusion" if fusion else "rand_trunc", padding="repeatpad")
    config = tf.ClapConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, projection_dim=8),
        audio_config=dict(spec_size=256, patch_embeds_hidden_size=8, depths=[1, 1], num_attention_heads=[1, 2],
                          hidden_size=16, projection_dim=8, num_classes=4, enable_fusion=fusion),
        projection_dim=8)
    torch.manual_seed(0)
    return _save(folder, tf.ClapModel(config), tf.ClapProcessor(features, tokenizer))


def build_clap_fused(folder: Path) -> Path:
    return build_clap(folder, fusion=True)


def build_laion_clap(folder: Path) -> Path:
    """An original laion_clap checkpoint file (``CLAP_Module``, HTSAT-tiny audio tower, RoBERTa text tower) with
    random weights, beside the folder of text models laion_clap loads by name (``text/roberta-base``,
    ``text/bert-base-uncased``, ``text/facebook/bart-base``). The text model is a one-layer RoBERTa of the released
    width (768, which the CLAP projection expects); the audio tower is HTSAT-tiny at its real size, which the
    package's configuration fixes. Returns ``folder``, holding ``tiny-laion-clap.pt`` and ``text/``."""
    from auditoryhum.backends.clap import _names_resolve_in

    text = folder / "text"
    tok = byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    for name in ("roberta-base", "facebook/bart-base"):  # both byte-level BPE tokenizers with these specials
        (text / name).mkdir(parents=True, exist_ok=True)
        tok.model.save(str(text / name))
    tf.RobertaTokenizer.from_pretrained(text / "roberta-base").save_pretrained(text / "roberta-base")
    tf.BartTokenizer.from_pretrained(text / "facebook/bart-base").save_pretrained(text / "facebook/bart-base")
    words = sorted({w.strip(".,:").lower() for line in CORPUS for w in line.split()})
    bert = text / "bert-base-uncased"
    bert.mkdir(parents=True, exist_ok=True)
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tf.BertTokenizer(str(bert / "vocab.txt")).save_pretrained(bert)
    torch.manual_seed(0)
    config = tf.RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=768, num_hidden_layers=1,
                              num_attention_heads=12, intermediate_size=64, max_position_embeddings=80,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2)
    tf.RobertaModel(config).save_pretrained(text / "roberta-base")
    with _names_resolve_in(text):
        import laion_clap

        module = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-tiny", device="cpu")
    state = module.model.state_dict()
    # The released checkpoints were saved with transformers < 4.31, whose RoBERTa kept position_ids in the state;
    # laion_clap's loader deletes that key, so a checkpoint must have it.
    state.setdefault("text_branch.embeddings.position_ids", torch.arange(config.max_position_embeddings)[None])
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, folder / "tiny-laion-clap.pt")
    return folder


def build_qwen2_audio(folder: Path) -> Path:
    """``Qwen2AudioForConditionalGeneration`` with ``Qwen2AudioProcessor`` (Whisper features, 128 mel bins)."""
    tok = byte_bpe(QWEN_SPECIAL)
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>",
                              "audio_eos_token": "<|audio_eos|>"})
    # No chat_template given: the processor's default is Qwen2-Audio-Instruct's.
    processor = tf.Qwen2AudioProcessor(feature_extractor=tf.WhisperFeatureExtractor(feature_size=128),
                                       tokenizer=tokenizer)
    config = tf.Qwen2AudioConfig(
        audio_config=dict(**TINY_AUDIO_ENCODER, num_mel_bins=128),
        text_config=dict(model_type="qwen2", vocab_size=tok.get_vocab_size(), **TINY_TEXT,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    torch.manual_seed(0)
    return _save(folder, tf.Qwen2AudioForConditionalGeneration(config), processor)


def _omni_processor(processor_class) -> tuple:
    """The Qwen Omni families' tokenizer (their special tokens by name), processor and those tokens' ids."""
    named = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
             "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
             "vision_eos_token": "<|vision_eos|>"}
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=byte_bpe(OMNI_SPECIAL), eos_token="<|im_end|>",
                                           pad_token="<|endoftext|>", extra_special_tokens=named)
    processor = processor_class(
        image_processor=tf.Qwen2VLImageProcessor(), video_processor=tf.Qwen2VLVideoProcessor(),
        feature_extractor=tf.WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer,
        chat_template=QWEN_OMNI_TEMPLATE)
    return tokenizer, processor, {name: tokenizer.convert_tokens_to_ids(token) for name, token in named.items()}


def build_qwen2_5_omni(folder: Path) -> Path:
    """A Qwen2.5-Omni checkpoint as released (``model_type`` qwen2_5_omni, weights under ``thinker.``) with audio
    output disabled, so only the thinker has weights; ``Qwen2_5OmniProcessor``."""
    tokenizer, processor, ids = _omni_processor(tf.Qwen2_5OmniProcessor)
    vocab = len(tokenizer)
    thinker = dict(
        audio_config=dict(**TINY_AUDIO_ENCODER, output_dim=16),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=vocab, **TINY_TEXT, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"])  # the released config has these too; rope positions use them
    # Saving logs warnings about the default talker config's token ids: transformers' own defaults, never built.
    config = tf.Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    torch.manual_seed(0)
    return _save(folder, tf.Qwen2_5OmniForConditionalGeneration(config), processor)


def build_qwen3_omni(folder: Path) -> Path:
    """A Qwen3-Omni-30B-A3B-Instruct checkpoint as released (``model_type`` qwen3_omni_moe, weights under
    ``thinker.``) with audio output disabled, so only the thinker (a mixture-of-experts text model with an audio
    and a vision tower) has weights; ``Qwen3OmniMoeProcessor``."""
    tokenizer, processor, ids = _omni_processor(tf.Qwen3OmniMoeProcessor)
    thinker = dict(
        audio_config=dict(**TINY_AUDIO_ENCODER, output_dim=16, downsample_hidden_size=8),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           deepstack_visual_indexes=[0]),
        text_config=dict(vocab_size=len(tokenizer), **TINY_TEXT, moe_intermediate_size=16, num_experts=2,
                         num_experts_per_tok=1, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True}),
        audio_token_id=ids["audio_token"], image_token_id=ids["image_token"], video_token_id=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        vision_start_token_id=ids["vision_bos_token"])  # not a declared config field, but in the released config
    config = tf.Qwen3OmniMoeConfig(thinker_config=thinker, enable_audio_output=False)
    torch.manual_seed(0)
    return _save(folder, tf.Qwen3OmniMoeForConditionalGeneration(config), processor)


def build_gemma3n(folder: Path, soft_tokens: int = 4) -> Path:
    """``Gemma3nForConditionalGeneration`` with ``Gemma3nProcessor``. As in the released model the vocabulary is
    text, then ``soft_tokens`` vision ids, then ``soft_tokens`` audio ids (each block opens with its end token,
    then its soft token); the vision tower is timm's smallest test network, since no image is ever given."""
    tok = byte_bpe(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                    "<start_of_audio>"])
    text_vocab = tok.get_vocab_size()
    blocks = {kind: [f"<end_of_{kind}>", f"<{kind}_soft_token>"] + [f"<{kind}_{i}>" for i in range(2, soft_tokens)]
              for kind in ("image", "audio")}
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in blocks["image"] + blocks["audio"]])
    named = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
             "audio_token": "<audio_soft_token>", "boa_token": "<start_of_audio>", "eoa_token": "<end_of_audio>"}
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<end_of_turn>",
                                           pad_token="<pad>", unk_token="<unk>", extra_special_tokens=named)
    audio_seq_length = 188  # the released model's soft tokens per clip: 30 s of audio, subsampled 16x
    processor = tf.Gemma3nProcessor(
        feature_extractor=tf.Gemma3nAudioFeatureExtractor(),
        image_processor=tf.SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer,
        chat_template=GEMMA_TEMPLATE, audio_seq_length=audio_seq_length, image_seq_length=soft_tokens)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in named.items()}
    config = tf.Gemma3nConfig(
        text_config=dict(vocab_size=tok.get_vocab_size(), vocab_size_per_layer_input=text_vocab,
                         hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=8, hidden_size_per_layer_input=4, laurel_rank=2,
                         num_kv_shared_layers=0, altup_num_inputs=2, sliding_window=16,
                         layer_types=["sliding_attention", "full_attention"], activation_sparsity_pattern=[0.0, 0.0],
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id),
        vision_config=dict(architecture="test_efficientnet", hidden_size=16, vocab_size=soft_tokens,
                           vocab_offset=text_vocab),
        audio_config=dict(vocab_size=soft_tokens, vocab_offset=text_vocab + soft_tokens, hidden_size=16,
                          conf_num_attention_heads=2, conf_num_hidden_layers=1, sscp_conv_channel_size=[8, 4]),
        audio_soft_tokens_per_image=audio_seq_length, vision_soft_tokens_per_image=soft_tokens,
        boi_token_id=ids["boi_token"], eoi_token_id=ids["eoi_token"], image_token_id=ids["image_token"],
        boa_token_id=ids["boa_token"], eoa_token_id=ids["eoa_token"], audio_token_id=ids["audio_token"])
    torch.manual_seed(0)
    return _save(folder, tf.Gemma3nForConditionalGeneration(config), processor)


def build_sentence_model(folder: Path) -> Path:
    """A sentence-transformers folder like all-mpnet-base-v2's: an ``MPNetModel``, mean pooling, normalisation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st

    # A WordPiece vocabulary of the corpus' words and single letters, so any lower-case word has a tokenisation.
    words = sorted({w.strip(".,:").lower() for line in CORPUS for w in line.split()})
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = dict.fromkeys(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *words, *letters, *(f"##{c}" for c in letters)])
    tokenizer = tf.MPNetTokenizer(vocab={piece: i for i, piece in enumerate(pieces)}, unk_token="<unk>")
    transformer_dir = folder / "transformer"
    config = tf.MPNetConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=130)
    torch.manual_seed(0)
    tf.MPNetModel(config).save_pretrained(transformer_dir)
    tokenizer.save_pretrained(transformer_dir)
    body = st.Transformer(str(transformer_dir), max_seq_length=128)
    model = SentenceTransformer(modules=[body, st.Pooling(body.get_embedding_dimension(), "mean"), st.Normalize()],
                                device="cpu")
    out = folder / "sentence-model"
    model.save(str(out))
    return out
