"""Parameter and FLOP counts, computed from the model itself.

FLOPs are counted on the ``meta`` device (shapes only, no arithmetic), so the table of
every model at 513x513 costs milliseconds. Counted: convolutions and linear layers,
2 x multiply-accumulates, as ``torch.utils.flop_counter`` counts them; element-wise ops,
pooling and resizing are not counted.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["count_params", "count_flops"]


def count_params(model: nn.Module, *, inference_only: bool = True) -> int:
    """Number of parameters; ``inference_only`` leaves out torchvision's auxiliary head."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (inference_only and name.startswith("aux_classifier.")))


def count_flops(model: nn.Module, height: int = 513, width: int = 513, batch: int = 1) -> int:
    """FLOPs of one forward pass (2 per multiply-accumulate of conv/linear layers)."""
    on_meta = all(p.is_meta for p in model.parameters())
    meta = (model if on_meta else copy.deepcopy(model).to("meta")).eval()
    handles = []
    total = 0

    def conv_hook(m: nn.Conv2d, inputs, out) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += 2 * out.numel() * k

    def linear_hook(m: nn.Linear, inputs, out) -> None:
        nonlocal total
        total += 2 * out.numel() * m.in_features

    for m in meta.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            meta(torch.empty(batch, 3, height, width, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total
