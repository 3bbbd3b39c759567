"""A MODEL_DIR for the serving tests: a LogMelCNN (auditoryhum.edge.models) trained for a few seconds on real
recordings of three scenes, exported as the contract of recogniser.json says (float and int8 ONNX)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from auditoryhum import audio
from auditoryhum.backends import features
from tests.conftest import LINCITY

# cluster id → (composite label, training recordings); the ids are not 0..C-1 on purpose: answers must carry them.
SCENES = {3: ("traffic / engine", ["TraficHigh1", "TraficHigh2", "TraficLow1", "TraficLow2"]),
          7: ("water / stream", ["Water1", "Water2", "Water3", "Water5"]),
          11: ("crowd / cheering", ["SportsCroud1", "SportsCroud2"])}
# Recordings of each scene the model never saw, by cluster id.
HELD_OUT = {3: ["TraficHigh3", "TraficLow3"], 7: ["Water4"], 11: ["SportsCroud3"]}


def build(out: Path, seed: int = 1, steps: int = 150) -> Path:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from auditoryhum.edge.models import LogMelCNN

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    xs, ys = [], []
    for index, (_, (_, names)) in enumerate(SCENES.items()):
        for name in names:
            p = features.patches(audio.load(LINCITY / f"{name}.wav", features.SAMPLE_RATE).samples)
            xs.append(p)
            ys += [index] * len(p)
    x, y = torch.from_numpy(np.concatenate(xs)), torch.tensor(ys)
    model = LogMelCNN(len(SCENES), blocks=((16, 2), (32, 2), (32, 2)), stem=8)
    model.mean.fill_(float(x.mean()))
    model.std.fill_(float(x.std()))
    weights = 1.0 / torch.bincount(y).float()  # class balance: traffic has more patches
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[pick]), y[pick], weight=weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (x[:2],), str(out / "logmel_cnn.onnx"), input_names=["patches"],
                      output_names=["logits"], dynamic_axes={"patches": {0: "n"}, "logits": {0: "n"}},
                      dynamo=False)
    quantize_dynamic(str(out / "logmel_cnn.onnx"), str(out / "logmel_cnn.int8.onnx"), weight_type=QuantType.QUInt8)
    classes = [{"index": i, "cluster_id": cid, "composite_label": label, "train_clips": len(names)}
               for i, (cid, (label, names)) in enumerate(SCENES.items())]
    (out / "recogniser.json").write_text(json.dumps({
        "format": "auditoryhum.recogniser/1", "classes": classes,
        "taxonomy": {"version": 2, "k": len(classes), "run": "tests/recogniser_fixture"},
        "sample_rate": 16000, "frontend": "yamnet-log-mel", "patch_frames": 96, "n_mels": 64, "patch_hop_frames": 48,
        "models": {"cnn": {"float": "logmel_cnn.onnx", "int8": "logmel_cnn.int8.onnx", "input": "patches",
                           "output": "logits", "needs": "log-mel patches [N,1,96,64]"}},
        "default": "cnn", "seed": seed}, indent=2))
    return out
