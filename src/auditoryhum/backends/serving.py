"""What the Triton model adapters (deploy/triton/models/*/1/model.py) share: settings, devices, input checks.

Kept free of Triton imports so it loads anywhere; the adapters themselves run inside Triton's Python backend.
"""

from __future__ import annotations

import json
from typing import Iterable

import numpy as np


def parameters(args: dict) -> dict[str, str]:
    """A model's ``parameters`` entries from config.pbtxt (or a load-time config override)."""
    config = json.loads(args["model_config"])
    return {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}


def required(params: dict[str, str], key: str, model: str) -> str:
    """A parameter the model cannot start without: a clear load error names it and how to set it."""
    value = params.get(key, "").strip()
    if not value:
        raise ValueError(f"{model}: parameter '{key}' is empty; set it in {model}/config.pbtxt or load the model "
                         "with a config override (see deploy/triton/README.md)")
    return value


def device(args: dict) -> str:
    """The torch device of this model instance: its GPU for a KIND_GPU instance, else the CPU."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{args['model_instance_device_id']}"
    return "cpu"


def texts(values: Iterable) -> list[str]:
    """A BYTES tensor's elements as text."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def waveform_problem(samples: np.ndarray) -> str | None:
    """Why a request's waveform cannot be used, or None: a client's bad input, answered as INVALID_ARGUMENT."""
    if samples.size == 0:
        return "WAVEFORM is empty"
    if not np.isfinite(samples).all():
        return "WAVEFORM has NaN or infinite samples"
    return None
