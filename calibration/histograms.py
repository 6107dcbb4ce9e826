"""Activation ranges from histograms of |x|: min-max, percentile, MSE and TensorRT-style entropy.

Each method returns ``amax``, the clipping threshold of a symmetric int8 quantizer
(scale = amax / 127). Histograms have 2048 bins over [0, max|x|], as TensorRT's calibrators use.

The entropy method is written here from the algorithm NVIDIA published for TensorRT's
entropy calibration (S. Migacz, "8-bit Inference with TensorRT", GTC 2017): for every
candidate threshold bin i in [128, 2048), the reference distribution P is the first i bins
with the outliers added to the last one, the candidate Q is P merged into 128 levels and
expanded back over P's non-zero bins; the threshold with the least KL(P || Q) wins, at
(i + 0.5) bin widths. TensorRT's own implementation is closed; this follows the published
description, not its code. ONNX Runtime's entropy calibrator works on signed histograms with
other bin counts, so it is not used here.
"""

from __future__ import annotations

import numpy as np

from .methods import HISTOGRAM_METHODS

__all__ = ["NUM_BINS", "NUM_QUANT_BINS", "amax_from_histogram", "METHODS"]

NUM_BINS = 2048
NUM_QUANT_BINS = 128
METHODS = HISTOGRAM_METHODS


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    if np.any(q[mask] == 0):
        return float("inf")
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def amax_entropy(hist: np.ndarray, width: float) -> float:
    hist = hist.astype(np.float64)
    # Post-ReLU tensors put a large share of exact zeros in bin 0; merged into a level with its
    # neighbours, that spike makes KL favour tiny thresholds (ReLU6 outputs clipped at ~0.6).
    # NVIDIA's pytorch-quantization (calib/histogram.py) sets bin 0 to bin 1 for this; so do we.
    if hist.size > 1:
        hist[0] = hist[1]
    n = hist.size
    if hist.sum() == 0:
        return 0.0
    best_i, best_kl = n, float("inf")
    total_tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # total_tail[i] = sum(hist[i:])
    for i in range(NUM_QUANT_BINS, n + 1):
        p = hist[:i].copy()
        p[i - 1] += total_tail[i]
        if p.sum() == 0:
            continue
        # merge the i bins into 128 levels (the last level takes the remainder), then expand
        # each level's mass evenly over its non-zero bins
        src = hist[:i]
        starts = (np.arange(NUM_QUANT_BINS) * i) // NUM_QUANT_BINS  # each level spans >= 1 bin (i >= 128)
        sizes = np.diff(np.append(starts, i))
        nz = src != 0
        sums = np.add.reduceat(src, starts)
        cnts = np.add.reduceat(nz.astype(np.float64), starts)
        level = np.divide(sums, cnts, out=np.zeros_like(sums), where=cnts > 0)
        q = np.repeat(level, sizes) * nz
        kl = _kl(p / p.sum(), q / q.sum() if q.sum() else q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * width if best_i < n else n * width


def amax_percentile(hist: np.ndarray, width: float, percentile: float) -> float:
    cdf = np.cumsum(hist, dtype=np.float64)
    if cdf[-1] == 0:
        return 0.0
    idx = int(np.searchsorted(cdf, cdf[-1] * percentile / 100.0))
    return min(idx + 1, hist.size) * width


def amax_mse(hist: np.ndarray, width: float, stride: int = 8) -> float:
    """The threshold minimising the expected squared error of symmetric int8 quantization,
    with every histogram bin represented by its centre."""
    centres = (np.arange(hist.size) + 0.5) * width
    counts = hist.astype(np.float64)
    if counts.sum() == 0:
        return 0.0
    best_t, best_err = hist.size * width, float("inf")
    for i in range(NUM_QUANT_BINS, hist.size + 1, stride):
        t = i * width
        s = t / 127.0
        q = np.clip(np.round(centres / s), -127, 127) * s
        err = float(np.sum(counts * (centres - q) ** 2))
        if err < best_err:
            best_err, best_t = err, t
    return best_t


def amax_from_histogram(hist: np.ndarray, amax: float, method: str, percentile: float = 99.99) -> float:
    """Threshold for one tensor from its |x| histogram over [0, amax]."""
    if method not in METHODS:
        raise ValueError(f"expected method in {METHODS}, got {method!r}")
    if amax <= 0:
        return 0.0
    width = amax / hist.size
    if method == "minmax":
        return float(amax)
    if method == "percentile":
        return float(amax_percentile(hist, width, percentile))
    if method == "mse":
        return float(amax_mse(hist, width))
    return float(amax_entropy(hist, width))
