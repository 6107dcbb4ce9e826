"""Quantization-aware training that ends in the very QDQ model ``calibrate`` writes (``train --qat``).

The fake quantization is the QDQ model's arithmetic, in PyTorch: every Conv's input is quantized
per tensor (symmetric int8, scale amax/127, zero point 0, round half to even, saturated to
[-128, 127], as ONNX's QuantizeLinear computes), and its weights per output channel (symmetric,
max|w|/127, [-127, 127]) *after* the batch norm that follows it is folded in, as the ONNX export
folds it. Batch norms stay frozen (eval statistics), which is what makes that folding exact
during training. Gradients pass by the straight-through estimator (zero where an activation is
clipped). The activation thresholds start from, and stay at, the PTQ ranges that ``calibrate``
would choose for the same FP32 export and images; the weights learn to live with them.

Written with this project's own modules rather than ModelOpt's PyTorch quantization: those would
put ModelOpt (and its environment, see issue #17) into training, and the QDQ placement would
then be ModelOpt's (Add and pooling inputs quantized, fp16 between pairs), not this project's
TensorRT placement that ``insert_qdq`` writes and the tests check.

PyTorch Conv2d modules are matched to the ONNX Conv nodes by execution order, and every pair is
checked: the ONNX weight must equal the PyTorch weight with its batch norm folded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["fake_quant_act", "fake_quant_weight", "conv_bn_pairs", "FakeQuant", "onnx_conv_modules",
           "ptq_ranges", "qdq_from_model"]


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quant_act(x: torch.Tensor, amax: float) -> torch.Tensor:
    """QuantizeLinear + DequantizeLinear (int8, zero point 0, scale amax/127) with a straight-through gradient."""
    scale = max(float(amax), 1e-12) / 127.0
    scale = torch.tensor(np.float32(scale), dtype=x.dtype, device=x.device)
    return torch.clamp(_round_ste(x / scale), -128, 127) * scale


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 (max|w|/127, as ``quantize_weight``), straight-through gradient."""
    s = w.detach().abs().flatten(1).amax(dim=1) / 127.0
    s = torch.where(s > 0, s, torch.ones_like(s)).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(_round_ste(w / s), -127, 127) * s


def folded(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Conv's weight and bias with ``bn`` (eval statistics) folded in, as the ONNX export folds them."""
    if bn is None:
        return conv.weight, conv.bias
    inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * inv.reshape(-1, 1, 1, 1)
    b = bn.bias - bn.running_mean * inv
    if conv.bias is not None:
        b = b + conv.bias * inv
    return w, b


def conv_bn_pairs(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, str | None]]:
    """(Conv2d name, name of the BatchNorm2d fed directly by it, or None), in execution order on ``x``."""
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    produced: dict[int, str] = {}
    bn_of: dict[str, str] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_pre_hook(lambda mod, inp: order.append(names[mod])))
            hooks.append(m.register_forward_hook(lambda mod, inp, out: produced.__setitem__(id(out), names[mod])))
        elif isinstance(m, torch.nn.BatchNorm2d):
            def pre(mod, inp):
                src = produced.get(id(inp[0]))
                if src is not None:
                    bn_of[src] = names[mod]
            hooks.append(m.register_forward_pre_hook(pre))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    if len(set(order)) != len(order):
        raise ValueError("a Conv2d module runs twice in one forward pass; QAT maps each to one ONNX Conv")
    return [(c, bn_of.get(c)) for c in order]


class FakeQuant:
    """Fake quantization installed on a model's Conv2d modules (their ``forward``) and the batch norms
    folded into them (identity); ``remove()`` restores the FP32 model. State dict keys do not change."""

    def __init__(self, model: torch.nn.Module, pairs: list[tuple[str, str | None]], ranges: dict[str, float]) -> None:
        missing = [c for c, _ in pairs if c not in ranges]
        if missing:
            raise ValueError(f"no activation range for {missing[:3]}")
        mods = dict(model.named_modules())
        self.patched: list[torch.nn.Module] = []
        for c, b in pairs:
            conv, bn = mods[c], (mods[b] if b else None)
            conv.forward = self._conv_forward(conv, bn, float(ranges[c]))
            self.patched.append(conv)
            if bn is not None:
                bn.forward = lambda x: x
                self.patched.append(bn)

    @staticmethod
    def _conv_forward(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d | None, amax: float) -> Callable:
        def forward(x: torch.Tensor) -> torch.Tensor:
            if bn is not None and bn.training:
                raise RuntimeError("QAT needs frozen batch norms (eval statistics): they are folded into the Convs")
            w, b = folded(conv, bn)
            return conv._conv_forward(fake_quant_act(x, amax), fake_quant_weight(w), b)
        return forward

    def remove(self) -> None:
        for m in self.patched:
            del m.forward  # back to the class's forward
        self.patched = []


def onnx_conv_modules(model: torch.nn.Module, onnx_model, pairs: list[tuple[str, str | None]]) -> dict[str, str]:
    """ONNX Conv input tensor -> Conv2d name, checked: same count, same order, and each ONNX weight equal
    to the PyTorch weight with its batch norm folded."""
    from onnx import numpy_helper

    inits = {t.name: t for t in onnx_model.graph.initializer}
    nodes = _weighted_convs(onnx_model)
    if len(nodes) != len(pairs):
        raise ValueError(f"the ONNX model has {len(nodes)} Convs with constant weights, the PyTorch model runs "
                         f"{len(pairs)} Conv2d modules; QAT cannot match them")
    mods = dict(model.named_modules())
    out: dict[str, str] = {}
    with torch.no_grad():
        for node, (c, b) in zip(nodes, pairs):
            w, bias = folded(mods[c], mods[b] if b else None)
            w = w.detach().cpu().numpy()
            bias = np.zeros(w.shape[0], np.float32) if bias is None else bias.detach().cpu().numpy()
            wo = numpy_helper.to_array(inits[node.input[1]])
            bo = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else \
                np.zeros(wo.shape[0], np.float32)

            def close(a, ref):
                return a.shape == ref.shape and np.allclose(a, ref, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(ref).max())))
            if not (close(wo, w) and close(bo, bias)):
                raise ValueError(f"ONNX Conv {node.name} does not hold the folded weights of {c}; QAT cannot match them")
            out.setdefault(node.input[0], c)
    return out


def _weighted_convs(onnx_model) -> list:
    from .qdq import conv_nodes

    inits = {t.name for t in onnx_model.graph.initializer}
    return [n for n in conv_nodes(onnx_model) if n.input[1] in inits]


def _export(model: torch.nn.Module, meta: dict[str, Any], images: list[np.ndarray], path: Path):
    import onnx

    from deeplab_edge.checkpoint import LoadedModel
    from deeplab_edge.data.preprocess import Preprocess
    from deeplab_edge.export import export_onnx

    import copy

    pre = Preprocess.from_dict(meta.get("preprocess") or {})
    cpu = copy.deepcopy(model).cpu().eval()  # the training model stays where it is, in its mode
    export_onnx(LoadedModel(cpu, meta, None), path, images, dynamic=() if pre.fixed_input_hw else ("hw",))
    return onnx.load(str(path))


def ptq_ranges(model: torch.nn.Module, meta: dict[str, Any], images: list[np.ndarray], method: str,
               work: Path, percentile: float = 99.99, search_num: int = 16) -> tuple[dict[str, float], list]:
    """Each Conv2d's input threshold as ``calibrate`` chooses it on ``images`` (uint8 RGB) for this model's FP32
    export; returns (ranges by Conv2d name, the (conv, bn) pairs)."""
    from deeplab_edge.data.preprocess import Preprocess

    from .collect import collect_histograms
    from .histograms import amax_from_histogram

    pre = Preprocess.from_dict(meta.get("preprocess") or {})
    inputs = [pre(im)[0] for im in images]
    pairs = conv_bn_pairs(model, inputs[0][None].to(next(model.parameters()).device))
    onnx_model = _export(model, meta, images[:2], work / "qat_start_fp32.onnx")
    stats = collect_histograms(onnx_model, inputs)
    if method == "search":
        from .search import search_ranges

        amax = search_ranges(onnx_model, inputs[:search_num], stats, percentile)
    else:
        amax = {n: amax_from_histogram(h, a, method, percentile) for n, (h, a) in stats.items()}
    onnx_conv_modules(model, onnx_model, pairs)  # same modules, same order, weights checked
    # Convs reading the same tensor (the ASPP branches) get the same threshold: its one QDQ pair
    return {c: float(amax[node.input[0]]) for node, (c, _) in zip(_weighted_convs(onnx_model), pairs)}, pairs


def qdq_from_model(model: torch.nn.Module, meta: dict[str, Any], ranges: dict[str, float],
                   pairs: list[tuple[str, str | None]], images: list[np.ndarray], out_path: Path, work: Path) -> dict:
    """The TensorRT QDQ ONNX of a QAT model: its FP32 export with ``insert_qdq`` at the trained ranges."""
    import json

    import onnx

    from deeplab_edge.outputs import atomic_path

    from .qdq import insert_qdq

    onnx_model = _export(model, meta, images[:2], work / "qat_end_fp32.onnx")
    nodes = _weighted_convs(onnx_model)
    onnx_conv_modules(model, onnx_model, pairs)  # the same modules in the same order, weights checked
    amax: dict[str, float] = {}
    for node, (c, _) in zip(nodes, pairs):
        a = float(ranges[c])
        if node.input[0] in amax and amax[node.input[0]] != a:
            raise ValueError(f"Convs reading {node.input[0]} were trained with different thresholds")
        amax[node.input[0]] = a
    qdq = insert_qdq(onnx_model, amax)
    props = {p.key: p for p in qdq.metadata_props}
    props["deeplab_edge.precision"].value = json.dumps("int8-qdq-tensorrt")
    e = qdq.metadata_props.add()
    e.key, e.value = "deeplab_edge.calibration", json.dumps({"method": "qat", "ranges_from": meta.get("qat", {})
                                                             .get("method")})
    with atomic_path(out_path) as tmp:
        onnx.save(qdq, str(tmp))
    return {"qdq_onnx": str(out_path), "quantized_convs": len(nodes)}
