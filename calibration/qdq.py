"""Explicit-quantization (QDQ) ONNX for TensorRT, written by hand.

TensorRT 10+/11 takes INT8 only as QuantizeLinear/DequantizeLinear pairs. What it fuses
best (NVIDIA's TensorRT developer guide, "Q/DQ layer-placement recommendations") is QDQ on
the inputs of quantizable layers — the activation input (per-tensor, symmetric int8, zero
point 0) and the weights (per-output-channel, symmetric int8) of each Conv — with biases
left in float. ONNX Runtime's ``quantize_static`` places QDQ on outputs too and quantizes
biases to int32, so this placement is done here; the CPU INT8 model, where ONNX Runtime's
own placement is right, is made with ``quantize_static`` (see ``cpu_int8.py``).

Residual Adds follow the guide's fusion rule too: TensorRT fuses an Add into the Convolution
that produces one of its inputs, and the fused layer stays INT8 only when the Add's *other*
input is quantized (its figure of the Add input ``xf1`` in floating point vs INT8; NVIDIA's
TensorFlow quantization toolkit quantizes ResNet's residual connections for the same reason).
So for every Add fed by a Conv, the inputs other than the fused Conv's output (the one computed
last) read a DequantizeLinear: the pair the tensor already has when it is a Conv input too (the
block input of a MobileNetV2 residual), a new one at its own threshold otherwise (ResNet's
downsample output). :func:`residual_skips` lists them; QAT fake-quantizes the same tensors.
"""

from __future__ import annotations

import json

import numpy as np
import torch

__all__ = ["insert_qdq", "conv_nodes", "quantize_weight", "WEIGHT_BITS", "residual_skips", "bias_corrections", "tag_quantized"]


def tag_quantized(model, precision: str, calibration: dict | None = None, like=None) -> None:
    """deeplab-edge's metadata on a quantized ONNX model: ``like``'s (its FP32 export's) when given, then
    the precision and, when given, the calibration record (method, the calibration images' digests that
    `eval` compares its images with)."""
    if like is not None:
        del model.metadata_props[:]
        model.metadata_props.extend(like.metadata_props)
    for key, value in (("deeplab_edge.precision", precision), ("deeplab_edge.calibration", calibration)):
        if value is None:
            continue
        entry = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)


def conv_nodes(model) -> list:
    return [n for n in model.graph.node if n.op_type == "Conv"]


#: weight bits a QDQ model may use: 8 (TensorRT's int8), or 7 (int8 values within +-63), which x86 CPUs without
#: VNNI multiply without saturating their int16 pair sums (2 * 255 * 63 < 32767; OpenVINO's "saturation issue")
WEIGHT_BITS = (8, 7)


def quantize_weight(wf: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8: (int8 weights, float32 scales = max|w| / 127 per channel); with
    ``bits=7`` the values stay within +-63 (scale max|w| / 63), still stored as int8."""
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight bits {bits!r}: use 8 or 7")
    qmax = 2 ** (bits - 1) - 1
    s = np.abs(wf.reshape(wf.shape[0], -1)).max(axis=1) / float(qmax)
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    wq = np.clip(np.round(wf / s.reshape(-1, *([1] * (wf.ndim - 1)))), -qmax, qmax).astype(np.int8)
    return wq, s


def residual_skips(model, keep_float: set[str] | frozenset[str] = frozenset()) -> list[tuple[object, int]]:
    """(Add node, input index) of every Add input to quantize so that TensorRT can fuse the Add into
    the Conv producing its other input: all inputs but the output of the last-computed (quantized) Conv."""
    nodes = list(model.graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}  # tensor -> index of its node
    out = []
    for node in nodes:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        convs = [i for i, t in enumerate(node.input) if t in producer and nodes[producer[t]].op_type == "Conv"
                 and nodes[producer[t]].name not in keep_float]
        if not convs:
            continue
        fused = max(convs, key=lambda i: producer[node.input[i]])
        out += [(node, i) for i in range(len(node.input)) if i != fused]
    return out


def bias_corrections(model, means: dict[str, np.ndarray], weight_bits: int = 8) -> dict[str, np.ndarray]:
    """Conv name -> the mean shift its int8 weights add to each output channel, (W_q - W) applied to the
    per-channel mean of the Conv's input over the calibration images (empirical bias correction,
    Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV
    2019, Sec. 4.2; zero padding at the borders is ignored, as there)."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in conv_nodes(model):
        x, w = node.input[0], node.input[1]
        if w not in inits or x not in means:
            continue
        wf = numpy_helper.to_array(inits[w]).astype(np.float32)
        wq, s = quantize_weight(wf, weight_bits)
        dw = wq.astype(np.float32) * s.reshape(-1, *([1] * (wf.ndim - 1))) - wf
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        # a constant map of the channel means, one kernel in size: the conv sums exactly dW * mean
        m = torch.from_numpy(np.asarray(means[x], np.float32)).reshape(1, -1, *([1] * (wf.ndim - 2)))
        m = m.expand(1, -1, *wf.shape[2:])
        out[node.name] = torch.nn.functional.conv2d(m.double(), torch.from_numpy(dw).double(), groups=group) \
            .reshape(-1).numpy()
    return out


def insert_qdq(model, amax: dict[str, float], keep_float: set[str] | frozenset[str] = frozenset(),
               residual_add: bool = True, parts: str = "both", bias_shift: dict[str, np.ndarray] | None = None,
               weight_bits: int = 8):
    """A copy of ``model`` with QDQ around every Conv's activation input and weights, except the
    Convs named in ``keep_float``, and (``residual_add``) on the residual inputs of Adds fed by a Conv.
    ``amax`` gives each activation's clipping threshold. ``parts`` "weights" or "activations" quantizes
    only those (a diagnostic: where the INT8 loss comes from; neither is a deployable model).
    ``bias_shift`` (from :func:`bias_corrections`, at the same ``weight_bits``) is subtracted from the named Convs'
    float biases. ``weight_bits`` 7 keeps the int8 weights within +-63 (see :data:`WEIGHT_BITS`)."""
    if parts not in ("both", "weights", "activations"):
        raise ValueError(f"expected parts in both, weights, activations; got {parts!r}")
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes, new_inits = [], []
    dq_of: dict[str, str] = {}

    def act_qdq(name: str) -> str:
        if name in dq_of:
            return dq_of[name]
        a = amax.get(name)
        if a is None:
            raise KeyError(name)
        scale = np.float32(max(a, 1e-12) / 127.0)
        s_name, z_name = f"{name}_qdq_scale", f"{name}_qdq_zero"
        new_inits.extend([numpy_helper.from_array(np.array(scale, np.float32), s_name),
                          numpy_helper.from_array(np.array(0, np.int8), z_name)])
        q, dq = f"{name}_quantized", f"{name}_dequantized"
        new_nodes.append(helper.make_node("QuantizeLinear", [name, s_name, z_name], [q], name=f"{name}_Q"))
        new_nodes.append(helper.make_node("DequantizeLinear", [q, s_name, z_name], [dq], name=f"{name}_DQ"))
        dq_of[name] = dq
        return dq

    skips = residual_skips(m, keep_float) if residual_add and parts != "weights" else []
    for node in list(g.node):
        if node.op_type != "Conv" or node.name in keep_float:
            continue
        x, w = node.input[0], node.input[1]
        if w not in inits:
            continue
        if parts != "weights":
            node.input[0] = act_qdq(x)
        if parts == "activations":
            continue
        wf = numpy_helper.to_array(inits[w]).astype(np.float32)
        wq, s = quantize_weight(wf, weight_bits)
        wq_name, ws_name, wz_name = f"{w}_int8", f"{w}_scale", f"{w}_zero"
        new_inits += [numpy_helper.from_array(wq, wq_name), numpy_helper.from_array(s, ws_name),
                      numpy_helper.from_array(np.zeros(wf.shape[0], np.int8), wz_name)]
        wdq = f"{w}_dequantized"
        new_nodes.append(helper.make_node("DequantizeLinear", [wq_name, ws_name, wz_name], [wdq], name=f"{w}_DQ",
                                          axis=0))
        node.input[1] = wdq
        if bias_shift and node.name in bias_shift:
            b_old = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32) if len(node.input) > 2 and \
                node.input[2] else np.zeros(wf.shape[0], np.float32)
            b_name = f"{node.name}_bias_corrected"
            new_inits.append(numpy_helper.from_array((b_old - bias_shift[node.name]).astype(np.float32), b_name))
            if len(node.input) > 2:
                node.input[2] = b_name
            else:
                node.input.append(b_name)
    for node, i in skips:  # the residual input of a fusible Add: the pair the tensor has, or a new one
        node.input[i] = act_qdq(node.input[i])
    # QDQ nodes go right before their first consumer: simplest valid order is all of them first
    # for weights and graph inputs, and after the producer for activations; a topological sort does both.
    all_nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(_toposort(all_nodes, {i.name for i in g.input} | {t.name for t in g.initializer} |
                            {t.name for t in new_inits}))
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    return m


def _toposort(nodes: list, available: set[str]) -> list:
    ready, out, pending = set(available), [], list(nodes)
    while pending:
        progressed = False
        rest = []
        for n in pending:
            if all((not i) or i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            raise ValueError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    return out
