"""ONNX export of a trained recogniser, int8 quantisation, and the check that int8 decides as float does.

Float: the MLP through ``torch.onnx.export`` (TorchScript exporter), one input with a dynamic batch and
``logits [N, C]``; for the cnn, YAMNet's first layers (:mod:`auditoryhum.edge.front`, int8 as shipped) go in front
of it in the same file, so its input is log-mel patches. Int8: the MLP through onnxruntime's dynamic quantisation
(int8 weights per output channel, activations quantised per call: the head's standardised 1024-d input has a few
dimensions far out of range, which one static activation scale cannot serve).

The check (on the test split, every test clip's patches at the device's 48-frame hop): no clip probability moves
by more than ``MAX_ABS_DP``, and on every clip int8 picks float's class or one float rates within ``NEAR_TIE`` of
its top (a near-tie either could win); otherwise the export fails with the figures. The share of clips and of
patches whose class is the same is reported too.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from auditoryhum.edge import front
from auditoryhum.edge.errors import EdgeError
from auditoryhum.edge.recogniser import pool, session, softmax

MAX_ABS_DP = 0.1
NEAR_TIE = 0.05
OPSET = 17
FILES = {"cnn": ("logmel_cnn", "patches", "log-mel patches [N,1,96,64]"),
         "head": ("embedding_head", "embedding", "YAMNet embedding of each patch [N,D]")}


class ExportError(EdgeError):
    """The int8 model does not decide as the float one within the stated tolerance."""


@dataclass
class Exported:
    float_path: Path
    int8_path: Path
    float_kb: float
    int8_kb: float
    patch_agreement: float
    clip_agreement: float
    max_abs_dp: float  # largest |p_int8 - p_float| of a clip's class probability
    checked_clips: int
    worst_choice_gap: float  # largest p_float(float's class) - p_float(int8's class) over the clips

    def as_dict(self) -> dict:
        return {"float_file": self.float_path.name, "int8_file": self.int8_path.name,
                "float_kb": round(self.float_kb, 1), "int8_kb": round(self.int8_kb, 1),
                "int8_patch_agreement": self.patch_agreement, "int8_clip_agreement": self.clip_agreement,
                "int8_max_abs_dp": self.max_abs_dp, "int8_worst_choice_gap": self.worst_choice_gap,
                "checked_clips": self.checked_clips, "tolerance": {"max_abs_dp": MAX_ABS_DP, "near_tie": NEAR_TIE}}


def manifest_entry(kind: str) -> dict:
    """The model's entry in recogniser.json."""
    stem, name, needs = FILES[kind]
    return {"float": f"{stem}.onnx", "int8": f"{stem}.int8.onnx", "input": name, "output": "logits", "needs": needs}


def export(kind: str, model: torch.nn.Module, out: Path, example: np.ndarray, test_x: np.ndarray,
           test_counts: list[int], front_model: onnx.ModelProto | None = None) -> Exported:
    """Write ``kind``'s float and int8 ONNX into ``out`` and check them on the test inputs (``test_counts``
    patches per clip, consecutive). ``example``: inputs of the MLP; ``front_model``: the cnn's front, exported
    in front of the MLP (then ``test_x`` are log-mel patches)."""
    stem, name, _ = FILES[kind]
    float_path, int8_path = out / f"{stem}.onnx", out / f"{stem}.int8.onnx"
    mlp_input = front.OUTPUT if front_model is not None else name
    opset = front.opset(front_model) if front_model is not None else OPSET
    with tempfile.TemporaryDirectory() as tmp:
        mlp, mlp_int8 = Path(tmp) / "mlp.onnx", Path(tmp) / "mlp.int8.onnx"
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (torch.from_numpy(example[:2]),), str(mlp), dynamo=False,
                              opset_version=opset, input_names=[mlp_input], output_names=["logits"],
                              dynamic_axes={mlp_input: {0: "batch"}, "logits": {0: "batch"}})
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # "pre-processing" notes
        quantize_dynamic(str(mlp), str(mlp_int8), per_channel=True, weight_type=QuantType.QInt8)
        for source, target in ((mlp, float_path), (mlp_int8, int8_path)):
            part = onnx.load(str(source))
            onnx.save(front.with_head(front_model, part) if front_model is not None else part, str(target))
    result = check(float_path, int8_path, name, test_x, test_counts)
    if result.max_abs_dp > MAX_ABS_DP or result.worst_choice_gap > NEAR_TIE:
        raise ExportError(f"{int8_path.name}: int8 differs from float on the test split beyond the tolerance: max "
                          f"|Δp| {result.max_abs_dp:.3f} (at most {MAX_ABS_DP}), a changed decision "
                          f"{result.worst_choice_gap:.3f} below float's top (at most {NEAR_TIE}); same class on "
                          f"{result.clip_agreement:.1%} of clips, {result.patch_agreement:.1%} of patches")
    return result


def check(float_path: Path, int8_path: Path, name: str, x: np.ndarray, counts: list[int]) -> Exported:
    """Float against int8 on ``x``: agreement of patch and clip decisions, largest probability change."""
    sessions = [session(p) for p in (float_path, int8_path)]
    probs = [softmax(s.run(["logits"], {name: x})[0]) if len(x) else np.zeros((0, 1)) for s in sessions]
    patch_agree = float(np.mean(probs[0].argmax(1) == probs[1].argmax(1))) if len(x) else 1.0
    clips = [pool(p, counts) for p in probs] if counts else [np.zeros((0, 1))] * 2
    clip_agree = float(np.mean(clips[0].argmax(1) == clips[1].argmax(1))) if counts else 1.0
    max_dp = float(np.abs(clips[0] - clips[1]).max()) if counts else 0.0
    gap = 0.0
    if counts:
        chosen = clips[0][np.arange(len(counts)), clips[1].argmax(1)]
        gap = float((clips[0].max(1) - chosen).max())
    return Exported(float_path, int8_path, float_path.stat().st_size / 1024, int8_path.stat().st_size / 1024,
                    patch_agree, clip_agree, max_dp, len(counts), gap)
