"""Quantization-aware training that ends in the very QDQ model ``calibrate`` writes (``train --qat``).

The fake quantization is the QDQ model's arithmetic, in PyTorch: every Conv's input is quantized
per tensor (symmetric int8, scale amax/127, zero point 0, round half to even, saturated to
[-128, 127], as ONNX's QuantizeLinear computes), and its weights per output channel (symmetric,
max|w|/127, [-127, 127]) *after* the batch norm that follows it is folded in, as the ONNX export
folds it; each residual block's skip input is quantized as the QDQ model's residual Add reads
it. Batch norms stay frozen (eval statistics), which is what makes that folding exact during
training. Gradients pass by the straight-through estimator (zero where an activation is
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

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from deeplab_edge.checkpoint import LoadedModel
from deeplab_edge.data.preprocess import Preprocess
from deeplab_edge.export import dynamic_axes, export_onnx
from deeplab_edge.models.fold import fold_bn
from deeplab_edge.outputs import atomic_path

from .pipeline import Calibrator, Recipe
from .qdq import conv_nodes, insert_qdq, residual_skips, tag_quantized

__all__ = ["fake_quant_act", "fake_quant_weight", "conv_bn_pairs", "residual_blocks", "QATPlan", "FakeQuant",
           "onnx_conv_modules", "skip_tensors", "ptq_ranges", "qdq_from_model"]


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quant_act(x: torch.Tensor, amax: float) -> torch.Tensor:
    """QuantizeLinear + DequantizeLinear (int8, zero point 0, scale amax/127) with a straight-through gradient.

    While training (a gradient to compute) it is PyTorch's fused ``fake_quantize_per_tensor_affine`` (the
    same straight-through gradient, half the time here), which multiplies by 1/scale where QuantizeLinear
    divides: the two differ on about 1 value in 3 million (exact ties); without a gradient (validation, the
    export check) it is QuantizeLinear's division, exactly."""
    if torch.is_grad_enabled() and x.requires_grad and x.dtype == torch.float32:
        return torch.fake_quantize_per_tensor_affine(x, float(np.float32(max(float(amax), 1e-12) / 127.0)), 0,
                                                     -128, 127)
    scale = max(float(amax), 1e-12) / 127.0
    scale = torch.tensor(np.float32(scale), dtype=x.dtype, device=x.device)
    return torch.clamp(_round_ste(x / scale), -128, 127) * scale


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel symmetric int8 (max|w|/127, as ``quantize_weight``), straight-through gradient."""
    s = w.detach().abs().flatten(1).amax(dim=1) / 127.0
    s = torch.where(s > 0, s, torch.ones_like(s)).reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(_round_ste(w / s), -127, 127) * s


def _run_hooked(model: torch.nn.Module, x: torch.Tensor, hooks: list) -> None:
    """One eval-mode forward pass for ``hooks`` to watch; then they go and the model's mode comes back."""
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()


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
    _run_hooked(model, x, hooks)
    if len(set(order)) != len(order):
        raise ValueError("a Conv2d module runs twice in one forward pass; QAT maps each to one ONNX Conv")
    return [(c, bn_of.get(c)) for c in order]


def residual_blocks(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """(module name, where its residual input comes from) of every residual block, in execution order:
    "input" (MobileNet inverted residuals, ResNet blocks without downsample: the block's input) or
    "downsample" (ResNet's projection shortcut: the downsample Conv's output)."""
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, str]] = []
    hooks = []
    for m in model.modules():
        kind = None
        if getattr(m, "use_res_connect", False):
            kind = "input"
        elif hasattr(m, "downsample") and hasattr(m, "conv1"):
            kind = "input" if m.downsample is None else "downsample"
        if kind:
            hooks.append(m.register_forward_pre_hook(lambda mod, inp, k=kind: order.append((names[mod], k))))
    _run_hooked(model, x, hooks)
    return order


@dataclass
class QATPlan:
    """What QAT fake-quantizes: each Conv2d (with the batch norm folded into it) and each residual block's
    skip input, as ``insert_qdq`` places QDQ. ``ranges`` are keyed by Conv2d name and ``<block>:skip``."""
    pairs: list[tuple[str, str | None]]
    blocks: list[tuple[str, str]]


class FakeQuant:
    """Fake quantization installed on a model's Conv2d modules (their ``forward``) and the batch norms
    folded into them (identity); ``remove()`` restores the FP32 model. State dict keys do not change."""

    def __init__(self, model: torch.nn.Module, plan: QATPlan, ranges: dict[str, float]) -> None:
        missing = [k for k in [c for c, _ in plan.pairs] + [f"{b}:skip" for b, _ in plan.blocks] if k not in ranges]
        if missing:
            raise ValueError(f"no activation range for {missing[:3]}")
        mods = dict(model.named_modules())
        self.plan, self.ranges = plan, ranges
        self.patched: list[torch.nn.Module] = []
        for name, kind in plan.blocks:
            block, a = mods[name], float(ranges[f"{name}:skip"])
            if kind == "input":  # the block on fq(x): its first Conv's own fq of fq(x) is fq(x) again
                block.forward = (lambda blk, amax: lambda x: type(blk).forward(blk, fake_quant_act(x, amax)))(block, a)
                self.patched.append(block)
            else:
                ds = block.downsample
                ds.forward = (lambda d, amax: lambda x: fake_quant_act(type(d).forward(d, x), amax))(ds, a)
                self.patched.append(ds)
        for c, b in plan.pairs:
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
            w, b = fold_bn(conv, bn)
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
            w, bias = fold_bn(mods[c], mods[b] if b else None)
            w = w.detach().cpu().numpy()
            bias = np.zeros(w.shape[0], np.float32) if bias is None else bias.detach().cpu().numpy()
            wo = numpy_helper.to_array(inits[node.input[1]])
            bo = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else \
                np.zeros(wo.shape[0], np.float32)

            def close(a, ref):
                tol = 1e-6 * max(1.0, float(np.abs(ref).max()))
                return a.shape == ref.shape and np.allclose(a, ref, rtol=1e-4, atol=tol)
            if not (close(wo, w) and close(bo, bias)):
                raise ValueError(f"ONNX Conv {node.name} does not hold the folded weights of {c}; QAT cannot match them")
            out.setdefault(node.input[0], c)
    return out


def skip_tensors(onnx_model, plan: QATPlan) -> dict[str, str]:
    """Residual block -> the ONNX tensor ``insert_qdq`` quantizes on its Add, checked against the block's
    own Convs (its first Conv's input, or its downsample Conv's output)."""
    skips = residual_skips(onnx_model)
    if len(skips) != len(plan.blocks):
        raise ValueError(f"the ONNX model has {len(skips)} fusible residual Adds, the PyTorch model runs "
                         f"{len(plan.blocks)} residual blocks; QAT cannot match them")
    conv_in = {c: n.input[0] for n, (c, _) in zip(_weighted_convs(onnx_model), plan.pairs)}
    conv_out = {c: n.output[0] for n, (c, _) in zip(_weighted_convs(onnx_model), plan.pairs)}
    out = {}
    for (add, i), (name, kind) in zip(skips, plan.blocks):
        inside = [c for c, _ in plan.pairs if c.startswith(name + ".")]
        want = conv_out.get(f"{name}.downsample.0") if kind == "downsample" else conv_in.get(inside[0]) if inside \
            else None
        if add.input[i] != want:
            raise ValueError(f"residual Add {add.name} reads {add.input[i]}, block {name} should give {want}; QAT "
                             "cannot match them")
        out[name] = want
    return out


def _weighted_convs(onnx_model) -> list:
    inits = {t.name for t in onnx_model.graph.initializer}
    return [n for n in conv_nodes(onnx_model) if n.input[1] in inits]


def _export(model: torch.nn.Module, meta: dict[str, Any], images: list[np.ndarray], path: Path):
    import onnx

    cpu = copy.deepcopy(model).cpu().eval()  # the training model stays where it is, in its mode
    export_onnx(LoadedModel(cpu, meta, None), path, images, dynamic=dynamic_axes(meta))
    return onnx.load(str(path))


def ptq_ranges(model: torch.nn.Module, meta: dict[str, Any], images: list[np.ndarray], method: str,
               work: Path, percentile: float = 99.99, search_num: int = 16) -> tuple[dict[str, float], QATPlan]:
    """The thresholds ``calibrate`` chooses on ``images`` (uint8 RGB) for this model's FP32 export, for each
    Conv2d's input and each residual block's skip input; returns (ranges, plan)."""
    pre = Preprocess.from_dict(meta.get("preprocess") or {})
    inputs = [pre(im)[0] for im in images]
    x = inputs[0][None].to(next(model.parameters()).device)
    plan = QATPlan(conv_bn_pairs(model, x), residual_blocks(model, x))
    onnx_model = _export(model, meta, images[:2], work / "qat_start_fp32.onnx")
    amax = Calibrator(onnx_model, inputs).thresholds(Recipe(method, percentile, search_num))
    onnx_conv_modules(model, onnx_model, plan.pairs)  # same modules, same order, weights checked
    # Convs reading the same tensor (the ASPP branches) get the same threshold: its one QDQ pair
    ranges = {c: float(amax[node.input[0]]) for node, (c, _) in zip(_weighted_convs(onnx_model), plan.pairs)}
    ranges.update({f"{b}:skip": float(amax[t]) for b, t in skip_tensors(onnx_model, plan).items()})
    return ranges, plan


def qdq_from_model(model: torch.nn.Module, meta: dict[str, Any], ranges: dict[str, float], plan: QATPlan,
                   images: list[np.ndarray], out_path: Path, work: Path, ranges_method: str | None = None,
                   images_sha1: list[str] | None = None) -> dict:
    """The TensorRT QDQ ONNX of a QAT model (its fake quantization removed): its FP32 export with
    ``insert_qdq`` at the trained ranges, residual Adds included."""
    import onnx

    onnx_model = _export(model, meta, images[:2], work / "qat_end_fp32.onnx")
    nodes = _weighted_convs(onnx_model)
    onnx_conv_modules(model, onnx_model, plan.pairs)  # the same modules in the same order, weights checked
    wanted = [(node.input[0], c) for node, (c, _) in zip(nodes, plan.pairs)]
    wanted += [(t, f"{b}:skip") for b, t in skip_tensors(onnx_model, plan).items()]
    amax: dict[str, float] = {}
    for tensor, key in wanted:
        a = float(ranges[key])
        if tensor in amax and amax[tensor] != a:
            raise ValueError(f"{tensor} was trained with two thresholds ({amax[tensor]} and {a}: {key})")
        amax[tensor] = a
    qdq = insert_qdq(onnx_model, amax)
    tag_quantized(qdq, "int8-qdq-tensorrt", {"method": "qat", "ranges_from": ranges_method,
                                             "images_sha1": images_sha1 or []})
    with atomic_path(out_path) as tmp:
        onnx.save(qdq, str(tmp))
    return {"qdq_onnx": str(out_path), "quantized_convs": len(nodes), "residual_adds": len(plan.blocks)}
