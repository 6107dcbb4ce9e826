"""Per-tensor range selection by output error (``--method search``).

Histogram methods choose each activation's threshold from that tensor's own distribution, and on
a few calibration images the entropy method clips hardest where the images happen to be
quiet (ReLU6 outputs cut at 3.6-5.5 instead of 6 on the 9 VOC samples), which then costs accuracy
on other images. This searches, for every quantized activation x, the threshold that
minimizes the squared error of what the network computes from it: the outputs of the Convs that
consume x, with their int8 weights as deployed (per-channel, symmetric), against the FP32 Convs
on the FP32 activation,

    amax(x) = argmin_a  sum_images sum_{Conv c reading x} || c_int8w(fq(x, a)) - c_fp32(x) ||^2,

over a grid of fractions of max|x| plus the histogram methods' own thresholds. ``fq`` is the
symmetric int8 fake quantization of the QDQ model (scale a/127, round half to even, saturated to
[-128, 127] as QuantizeLinear does). The same objective is the "MSE on the layer output" criterion of post-training
quantization literature (e.g. Nagel et al., "A White Paper on Neural Network Quantization",
2021, Sec. 3.4.1); the code here is this project's own.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .collect import _session_with_outputs
from .histograms import amax_from_histogram
from .qdq import conv_nodes, quantize_weight

__all__ = ["search_ranges", "FRACTIONS", "fake_quant", "candidates", "thresholds"]

FRACTIONS = tuple(np.round(np.linspace(0.3, 1.0, 15), 4))


def fake_quant(x: torch.Tensor, amax: float) -> torch.Tensor:
    """Symmetric int8 QuantizeLinear + DequantizeLinear, as ONNX Runtime computes it."""
    scale = torch.tensor(max(amax, 1e-12) / 127.0, dtype=torch.float32)
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def _conv_fn(node, inits: dict[str, np.ndarray], weight_bits: int = 8):
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"{node.name}: auto_pad is not supported by the range search")
    w = inits[node.input[1]].astype(np.float32)
    nd = w.ndim - 2
    pads = list(attrs.get("pads", [0] * 2 * nd))
    stride, dil, group = attrs.get("strides", [1] * nd), attrs.get("dilations", [1] * nd), attrs.get("group", 1)
    wq, s = quantize_weight(w, weight_bits)
    w_f = torch.from_numpy(w)
    w_q = torch.from_numpy(wq.astype(np.float32) * s.reshape(-1, *([1] * (w.ndim - 1))))

    def run(x: torch.Tensor, quantized: bool) -> torch.Tensor:
        if pads[:nd] != pads[nd:]:  # asymmetric: pad explicitly (F.pad takes the last dim first)
            x = F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[nd + i])])
            padding = 0
        else:
            padding = tuple(pads[:nd])
        return F.conv2d(x, w_q if quantized else w_f, None, tuple(stride), padding, tuple(dil), group)

    return run


def candidates(hist: np.ndarray, mx: float, percentile: float = 99.99) -> list[float]:
    """The thresholds tried for a tensor with |x| histogram ``hist`` over [0, ``mx``]."""
    extra = [amax_from_histogram(hist, mx, m, percentile) for m in ("entropy", "mse", "percentile")]
    return sorted({float(mx * f) for f in FRACTIONS} | {float(a) for a in extra if a > 0})


def search_ranges(model, inputs: list[torch.Tensor], stats: dict[str, tuple[np.ndarray, float]],
                  percentile: float = 99.99, progress: Callable[[], None] | None = None,
                  errors: dict[str, np.ndarray] | None = None, weight_bits: int = 8) -> dict[str, float]:
    """Activation name -> threshold chosen by the consumers' output error on ``inputs``; tensors no
    Conv reads keep their max. ``errors``, when given, receives each tensor's summed squared error
    per candidate (in the order of :func:`candidates`)."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in conv_nodes(model):
        if node.input[1] in inits and node.input[0] in stats:
            consumers.setdefault(node.input[0], []).append(_conv_fn(node, inits, weight_bits))
    tried = {n: candidates(*stats[n], percentile) for n in consumers if stats[n][1] > 0}
    errors = {} if errors is None else errors
    errors.update({n: np.zeros(len(c)) for n, c in tried.items()})
    names = list(tried)
    sess = _session_with_outputs(model, names)
    in_name = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]
    with torch.inference_mode():
        for x in inputs:
            feed = x[None].numpy()
            res = sess.run(None, {in_name: feed})
            for name in names:
                act = torch.from_numpy(feed if name == in_name else res[outs.index(name)])
                refs = [f(act, False) for f in consumers[name]]
                for k, a in enumerate(tried[name]):
                    xq = fake_quant(act, a)
                    errors[name][k] += sum(float(((f(xq, True) - r) ** 2).sum()) for f, r in zip(consumers[name], refs))
            if progress:
                progress()
    out = {n: float(mx) for n, (_, mx) in stats.items()}
    out.update({n: tried[n][int(np.argmin(errors[n]))] for n in names})
    return out


def thresholds(model, inputs: list[torch.Tensor], stats: dict[str, tuple[np.ndarray, float]], method: str,
               percentile: float = 99.99, search_num: int = 16,
               progress: Callable[[], None] | None = None, weight_bits: int = 8) -> dict[str, float]:
    """Every activation's threshold by ``method``: from its histogram, or (``search``) by the output error
    of the Convs reading it on the first ``search_num`` inputs."""
    if method == "search":
        return search_ranges(model, inputs[:search_num], stats, percentile, progress, weight_bits=weight_bits)
    return {n: amax_from_histogram(h, a, method, percentile) for n, (h, a) in stats.items()}
