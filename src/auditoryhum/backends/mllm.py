"""The paper's labelers: multimodal LLMs that listen to a clip and describe it in word pairs (transformers).

Four families, told apart by the checkpoint's ``config.model_type``:

- ``qwen2_audio``: Qwen2-Audio-7B-Instruct, ``Qwen2AudioForConditionalGeneration``;
- ``qwen2_5_omni``: Qwen2.5-Omni-3B. Only its *thinker* (audio in, text out) is loaded, as
  ``Qwen2_5OmniThinkerForConditionalGeneration``, from either the full checkpoint (weights under ``thinker.``) or a
  thinker saved on its own (``qwen2_5_omni_thinker``); the talker and the speech decoder are never built;
- ``qwen3_omni``: Qwen3-Omni-30B-A3B-Instruct, the same way: only its thinker,
  ``Qwen3OmniMoeThinkerForConditionalGeneration``, from the full checkpoint or a thinker saved alone;
- ``gemma3n``: Gemma-3n-E2B-it, ``Gemma3nForConditionalGeneration``.

Each uses its checkpoint's own processor (``AutoProcessor``) and chat template. The prompt is the authors': a
user turn with the audio and "Describe the auditory scene using word pairs. Separate each pair with a comma.", to
which a reviewer's hint is appended when re-labelling, after a system turn that depends on the family, as in their
code: the Qwen Omni models get the Qwen team's own system prompt, which they need to behave; Qwen2-Audio and
Gemma 3n get "Describing an auditory scene.".

On CUDA the paper profile loads the weights as the authors did: bitsandbytes 4-bit NF4 with double quantisation
and bfloat16 compute (:func:`quantization_config`).
Decoding is greedy, batched with left padding, and only the new tokens are returned: the labeler stage applies
the paper's post-processing (:func:`auditoryhum.labels.parse_labels`) to that text.

Audio longer than the processor's window (30 s for all three) is cut by the processor, as in the authors' runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from typing import Any, Sequence

from auditoryhum.audio import Audio
from auditoryhum.backends import BackendUnavailable, Description

SYSTEM_PROMPT = "Describing an auditory scene."
# The reference code's comment: "The following text in system_role is required for Qwen to work properly".
QWEN_OMNI_SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
                           "perceiving auditory and visual inputs, as well as generating text and speech.")
USER_PROMPT = "Describe the auditory scene using word pairs. Separate each pair with a comma."
HINT_PREFIX = "Hint from a reviewer: "

FAMILIES = ("qwen2_audio", "qwen2_5_omni", "qwen3_omni", "gemma3n")
SYSTEM_PROMPTS = {"qwen2_audio": SYSTEM_PROMPT, "qwen2_5_omni": QWEN_OMNI_SYSTEM_PROMPT,
                  "qwen3_omni": QWEN_OMNI_SYSTEM_PROMPT, "gemma3n": SYSTEM_PROMPT}
# Names the prompts (every family's) in every label proposal, so labels from different prompts are never mixed up
# unknowingly. One id for all families: a Triton client knows the prompt set, not the family behind the server.
PROMPT_ID = "word-pairs-" + hashlib.sha256(
    "\n".join([*(f"{f}: {SYSTEM_PROMPTS[f]}" for f in FAMILIES), USER_PROMPT]).encode()).hexdigest()[:8]
# model_type of a thinker saved on its own → its family
_THINKERS = {"qwen2_5_omni_thinker": "qwen2_5_omni", "qwen3_omni_moe_thinker": "qwen3_omni",
             "qwen3_omni_moe": "qwen3_omni"}


def user_prompt(hint: str = "") -> str:
    """The user turn's text; a reviewer's hint, when there is one, follows the authors' instruction."""
    hint = " ".join(hint.split())
    return f"{USER_PROMPT} {HINT_PREFIX}{hint}" if hint else USER_PROMPT


def conversation(hint: str = "", family: str = "qwen2_audio") -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPTS[family]},
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": user_prompt(hint)}]},
    ]


class MllmLabeler:
    """A Labeler over one of the paper's MLLMs, loaded from a local folder (or a hub id where a hub is reachable)."""

    prompt_id = PROMPT_ID

    def __init__(self, path: str, *, family: str | None = None, model_id: str | None = None,
                 max_new_tokens: int = 64, load_in_4bit: bool | None = False, device: str | None = None,
                 batch_size: int = 8):
        import torch
        from transformers import AutoConfig, AutoProcessor

        self.model_id = model_id or path
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_new_tokens, self.batch_size = max_new_tokens, max(1, batch_size)
        config = AutoConfig.from_pretrained(path)
        self.family = _family(family or config.model_type)
        if self.family not in FAMILIES:
            raise ValueError(f"unknown MLLM family {self.family!r}; expected one of {', '.join(FAMILIES)}")
        self.processor = AutoProcessor.from_pretrained(path)
        # Batched generation appends new tokens on the right, so prompts must be padded on the left.
        self.processor.tokenizer.padding_side = "left"
        self.sample_rate = int(self.processor.feature_extractor.sampling_rate)
        self.model = _load_model(self.family, path, config, self.device, _quantization(load_in_4bit, self.device))
        # A fast tokenizer raises "Already borrowed" when two threads call it at once (the labeler stage's workers).
        self._processor_lock = threading.Lock()

    def inputs(self, clips: Sequence[Audio], hints: Sequence[str] | None = None):
        """A batch's model inputs: the chat-formatted prompts, tokenised and left-padded, and the audio features."""
        for clip in clips:
            if clip.sample_rate != self.sample_rate:
                raise ValueError(f"{self.family} needs {self.sample_rate} Hz audio, got {clip.sample_rate}")
        hints = list(hints) if hints else [""] * len(clips)
        texts = [self.processor.apply_chat_template(conversation(h, self.family), add_generation_prompt=True,
                                                    tokenize=False)
                 for h in hints]
        with self._processor_lock:
            batch = self.processor(text=texts, audio=[c.samples for c in clips], sampling_rate=self.sample_rate,
                                   padding=True, return_tensors="pt")
        # Float tensors (the audio features) take the model's dtype; token ids stay integers.
        return batch.to(self.model.device, self.model.dtype)

    def describe(self, clips: Sequence[Audio], hints: Sequence[str] | None = None) -> list[Description]:
        hints = list(hints) if hints else [""] * len(clips)
        out: list[Description] = []
        for start in range(0, len(clips), self.batch_size):
            end = start + self.batch_size
            out.extend(Description(text) for text in self._generate(clips[start:end], hints[start:end]))
        return out

    def _generate(self, clips: Sequence[Audio], hints: Sequence[str]) -> list[str]:
        import torch

        batch = self.inputs(clips, hints)
        tokenizer = self.processor.tokenizer
        # Greedy; anything else in the checkpoint's generation_config (a repetition penalty, say) still applies.
        with torch.inference_mode():
            output = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                         pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _family(model_type: str) -> str:
    return _THINKERS.get(model_type, model_type)


def quantization_config():
    """The authors' loading: 4-bit NF4 weights, double quantisation, bfloat16 compute."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _quantization(load_in_4bit: bool | None, device: str):
    """bitsandbytes 4-bit weights, which exist only on CUDA: asking for them elsewhere is an error, not a fallback.
    ``None`` (the paper profile's default) means "as the authors, where it can be": 4-bit on CUDA, else full."""
    import torch

    on_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if load_in_4bit is None:
        load_in_4bit = on_cuda
    if not load_in_4bit:
        return None
    if not on_cuda:
        raise BackendUnavailable(f"4-bit loading needs a CUDA device; this labeler runs on {device!r}")
    missing = [name for name in ("bitsandbytes", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendUnavailable(f"4-bit loading needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    return quantization_config()


def _load_model(family: str, path: str, config, device: str, quantization):
    import transformers

    # dtype "auto" keeps the checkpoint's own (bfloat16 for the released models, float32 for test models).
    # Quantised weights are placed on the GPU as they load (device_map, through accelerate); others are moved after.
    kwargs: dict[str, Any] = {"dtype": "auto"}
    if quantization is not None:
        kwargs.update(quantization_config=quantization, device_map=device)
    if family == "qwen2_audio":
        model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(path, **kwargs)
    elif family == "gemma3n":
        model = transformers.Gemma3nForConditionalGeneration.from_pretrained(path, **kwargs)
    else:
        thinker = (transformers.Qwen2_5OmniThinkerForConditionalGeneration if family == "qwen2_5_omni"
                   else transformers.Qwen3OmniMoeThinkerForConditionalGeneration)
        if config.model_type in ("qwen2_5_omni", "qwen3_omni_moe"):  # released: keep the thinker, skip the talker
            model = thinker.from_pretrained(path, config=config.thinker_config, key_mapping={r"^thinker\.": ""},
                                            **kwargs)
        else:
            model = thinker.from_pretrained(path, **kwargs)
    return model if quantization is not None else model.to(device)
