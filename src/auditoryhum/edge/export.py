"""ONNX export of a trained recogniser, int8 quantisation, and the check that int8 decides as float does.

Float: ``torch.onnx.export`` (TorchScript exporter, opset 17, batch-norm folded into the convolutions), one input
with a dynamic batch and ``logits [N, C]``. Int8: onnxruntime's static quantisation (QDQ, int8 weights per output
channel, uint8 activations) calibrated on training inputs for the CNN, so the device needs no float kernels for
it; dynamic quantisation (int8 weights, activations quantised per call) for the head, whose standardised 1024-d
input has a few dimensions far out of range, which one static activation scale cannot serve.

The check (on the test split, every test clip's patches at the device's 48-frame hop): no clip probability moves
by more than ``MAX_ABS_DP``, and on every clip int8 picks float's class or one float rates within ``NEAR_TIE`` of
its top (a near-tie either could win); otherwise the export fails with the figures. The share of clips and of
patches whose class is the same is reported too.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

from auditoryhum.edge.errors import EdgeError
from auditoryhum.edge.recogniser import pool, session, softmax

MAX_ABS_DP = 0.1
NEAR_TIE = 0.05
CALIBRATION_PATCHES = 512
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


class _Calibration(CalibrationDataReader):
    def __init__(self, name: str, x: np.ndarray, batch: int = 32):
        self._batches = iter([{name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self._batches, None)


def export(kind: str, model: torch.nn.Module, out: Path, calibration: np.ndarray, test_x: np.ndarray,
           test_counts: list[int]) -> Exported:
    """Write ``kind``'s float and int8 ONNX into ``out`` and check them on the test inputs (``test_counts``
    patches per clip, consecutive). ``calibration``: training inputs for the activation ranges."""
    stem, name, _ = FILES[kind]
    float_path, int8_path = out / f"{stem}.onnx", out / f"{stem}.int8.onnx"
    example = torch.from_numpy(calibration[:2])
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(float_path), dynamo=False, opset_version=OPSET,
                          input_names=[name], output_names=["logits"],
                          dynamic_axes={name: {0: "batch"}, "logits": {0: "batch"}})
    step = max(1, len(calibration) // CALIBRATION_PATCHES)  # evenly over the training clips
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # "consider pre-processing" notes
    if kind == "head":
        quantize_dynamic(str(float_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8)
    else:
        quantize_static(str(float_path), str(int8_path), _Calibration(name, calibration[::step]),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
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
