"""Composite labels: one name per cluster, from its label distribution.

The paper asks an LLM: "Provide a short sentence to describe this set of audio samples. The frequency
distribution of individual labels for this set of audio samples is provided:" then one "label, count" line per
label and "Total samples: n". That runs when a text-generation backend is configured; the offline default names
the cluster from its most frequent labels, deterministically.
"""

from __future__ import annotations

import re
from typing import Mapping, Protocol, Sequence

PROMPT = ("Provide a short sentence to describe this set of audio samples. The frequency distribution of "
          "individual labels for this set of audio samples is provided:")
MAX_NAME_CHARS = 160


def ranked(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Most frequent first, ties alphabetical."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def frequent_labels_name(counts: Mapping[str, int], top: int = 2) -> str:
    """The offline composite label: the cluster's ``top`` most frequent labels joined by " / "."""
    return " / ".join(label for label, _ in ranked(counts)[:top])


def cluster_prompt(counts: Mapping[str, int], max_labels: int = 50) -> str:
    rows = ranked(counts)
    lines = [PROMPT, *(f"{label}, {count}" for label, count in rows[:max_labels])]
    return "\n".join([*lines, f"Total samples: {sum(counts.values())}"])


class TextGenerator(Protocol):
    model_id: str

    def generate(self, prompts: Sequence[str]) -> list[str]: ...


def clean_name(text: str) -> str:
    """First non-empty line of a model's answer, whitespace collapsed, length capped: an LLM may ramble."""
    line = next((l.strip() for l in text.splitlines() if l.strip()), "")
    return re.sub(r"\s+", " ", line)[:MAX_NAME_CHARS]


class TransformersGenerator:
    """A causal LM from a local folder (transformers), greedy decoding; uses the chat template when it has one."""

    def __init__(self, path: str, *, max_new_tokens: int = 40, model_id: str | None = None, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_id = model_id or path
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device).eval()
        self.max_new_tokens = max_new_tokens

    def generate(self, prompts: Sequence[str]) -> list[str]:
        import torch

        answers = []
        for prompt in prompts:
            if getattr(self.tokenizer, "chat_template", None):
                text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                          add_generation_prompt=True)
            else:
                text = prompt + "\n"
            inputs = self.tokenizer(text, return_tensors="pt").to(self.model.device)
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                             num_beams=1, pad_token_id=self.tokenizer.pad_token_id
                                             or self.tokenizer.eos_token_id)
            answers.append(self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
        return answers
