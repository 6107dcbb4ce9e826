"""Conv + batch-norm folding: the one formula the fused ASPP kernels and QAT both use.

An eval-mode ``BatchNorm2d`` after a ``Conv2d`` is an affine map per output channel, so it folds
into the conv: ``w' = w * s``, ``b' = beta - mean * s (+ b * s)`` with ``s = gamma / sqrt(var + eps)``.
The bias is written as the ONNX export folds it, so QAT's folded weights match the export's.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["fold_bn"]


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, dtype: torch.dtype | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of ``conv`` with ``bn`` (its eval statistics) folded in; without ``bn``
    the conv's own (the bias None where it has none).

    ``dtype=None``: folded from the parameters as they are, in their dtype, and differentiable
    (QAT trains through the fold). With a ``dtype``: from detached copies in that dtype (the fused
    kernels fold in fp32, whatever dtype the module was cast to, and store the result)."""
    tensors = [conv.weight, conv.bias]
    if bn is not None:
        tensors += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    if dtype is not None:
        tensors = [None if t is None else t.detach().to(dtype) for t in tensors]
    if bn is None:
        return tensors[0], tensors[1]
    w, b, gamma, beta, mean, var = tensors
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = beta - mean * scale
    if b is not None:
        bias = bias + b * scale
    return w * scale.reshape(-1, 1, 1, 1), bias
