"""MobileNetV2 and MobileNetV3-Large backbones with torchvision's parameter names.

MobileNetV2: Sandler et al., CVPR 2018. MobileNetV3: Howard et al., ICCV 2019.
Both trunks are ``nn.Sequential`` subclasses whose children are named ``0..N`` exactly as
torchvision's ``features`` (and as torchvision's DeepLab-v3 MobileNetV3 ``backbone``), so
state-dict keys line up. Output stride is reached with atrous rates the way TF-slim's
``mobilenet_base`` and torchvision do it: the layer that would exceed the output stride
keeps stride 1 at the current rate, and every later layer runs at the multiplied rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ConvBNAct", "MobileNetV2Backbone", "MobileNetV3Backbone", "mobilenet_v2_blocks", "restride_v2_blocks",
           "mobilenet_v3_large_blocks", "make_divisible"]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNAct(nn.Sequential):
    """Conv2d + BatchNorm2d (+ activation): torchvision's ``Conv2dNormActivation`` keys."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 dilation: int = 1, activation: type[nn.Module] | None = nn.ReLU6, eps: float = 1e-5) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=eps),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class _FeatureTrunk(nn.Sequential):
    """A Sequential trunk that returns the outputs of chosen children by name."""

    taps: dict[str, int]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        feats: dict[str, torch.Tensor] = {}
        wanted = {i: k for k, i in self.taps.items()}
        for i, layer in enumerate(self):
            x = layer(x)
            if i in wanted:
                feats[wanted[i]] = x
        return feats


# --------------------------------------------------------------------------- MobileNetV2

@dataclass(frozen=True)
class V2Block:
    """One inverted residual: channels in/expanded/out, stride and atrous rate of the depthwise conv."""

    cin: int
    hidden: int
    cout: int
    stride: int
    dilation: int = 1


class InvertedResidualV2(nn.Module):
    def __init__(self, b: V2Block) -> None:
        super().__init__()
        self.use_res_connect = b.stride == 1 and b.cin == b.cout
        layers: list[nn.Module] = []
        if b.hidden != b.cin:
            layers.append(ConvBNAct(b.cin, b.hidden, 1))
        layers += [
            ConvBNAct(b.hidden, b.hidden, 3, b.stride, groups=b.hidden, dilation=b.dilation),
            nn.Conv2d(b.hidden, b.cout, 1, bias=False),
            nn.BatchNorm2d(b.cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _apply_output_stride(strides: list[int], output_stride: int) -> list[tuple[int, int]]:
    """Map per-layer strides to (stride, rate) pairs that stop at ``output_stride``."""
    current, rate, out = 1, 1, []
    for s in strides:
        if current == output_stride and s > 1:
            out.append((1, rate))
            rate *= s
        else:
            out.append((s, rate))
            current *= s
    return out


def restride_v2_blocks(blocks: list[V2Block], output_stride: int) -> list[V2Block]:
    """The same blocks re-planned for another output stride (same weights, other strides and rates).

    A block whose stride was turned into a rate shows as a rate that doubles after it, so the
    nominal strides are recovered from the rates, then planned again as ``mobilenet_v2_blocks``
    does (the stem's stride 2 first)."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"expected output_stride in (8, 16, 32), got {output_stride}")
    nominal = []
    for i, b in enumerate(blocks):
        after = blocks[i + 1].dilation if i + 1 < len(blocks) else b.dilation
        if after % b.dilation:
            raise ValueError(f"block {i}: rate {b.dilation} then {after} is not a stride plan")
        nominal.append(b.stride * after // b.dilation)
    plan = _apply_output_stride([2] + nominal, output_stride)[1:]
    out = [V2Block(b.cin, b.hidden, b.cout, st, d) for b, (st, d) in zip(blocks, plan)]
    for i, (old, new) in enumerate(zip(blocks, out)):
        if (old.stride == 1 and old.cin == old.cout) != (new.stride == 1 and new.cin == new.cout):
            raise ValueError(f"block {i}: output stride {output_stride} would change its residual connection")
    return out


def mobilenet_v2_blocks(width_mult: float = 1.0, output_stride: int = 16) -> tuple[int, list[V2Block]]:
    """The stem width and the 17 inverted residual blocks of MobileNetV2 (t, c, n, s table)."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"expected output_stride in (8, 16, 32), got {output_stride}")
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    stem = make_divisible(32 * width_mult)
    raw: list[tuple[int, int, int, int]] = []
    cin = stem
    for t, c, n, s in table:
        cout = make_divisible(c * width_mult)
        for i in range(n):
            raw.append((cin, int(round(cin * t)), cout, s if i == 0 else 1))
            cin = cout
    plan = _apply_output_stride([2] + [r[3] for r in raw], output_stride)[1:]
    return stem, [V2Block(ci, h, co, st, d) for (ci, h, co, _), (st, d) in zip(raw, plan)]


class MobileNetV2Backbone(_FeatureTrunk):
    """``features[0..17]`` of MobileNetV2 (the 1280-channel last conv is not used by DeepLab).

    ``blocks`` may be given explicitly (the TFLite importer reads them from the graph).
    Taps: ``low`` = stride-4 features (block 3), ``out`` = last block.
    """

    def __init__(self, stem: int, blocks: list[V2Block]) -> None:
        layers: list[nn.Module] = [ConvBNAct(3, stem, 3, stride=2)]
        layers += [InvertedResidualV2(b) for b in blocks]
        super().__init__(*layers)
        stride, low = 2, 0
        for i, b in enumerate(blocks, start=1):
            if stride * b.stride > 4 and low == 0:
                low = i - 1
            stride *= b.stride
        self.taps = {"low": low, "out": len(blocks)}
        self.out_channels = {"low": blocks[low - 1].cout if low else stem, "out": blocks[-1].cout}
        self.output_stride = stride


# --------------------------------------------------------------------------- MobileNetV3

@dataclass(frozen=True)
class V3Block:
    cin: int
    kernel: int
    expanded: int
    cout: int
    use_se: bool
    use_hs: bool
    stride: int
    dilation: int = 1


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation`` (fc1/fc2 1x1 convs, ReLU, Hardsigmoid)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(s))))


class InvertedResidualV3(nn.Module):
    def __init__(self, b: V3Block, eps: float) -> None:
        super().__init__()
        # torchvision decides the residual on the configured stride, before dilation.
        self.use_res_connect = b.stride == 1 and b.cin == b.cout
        act = nn.Hardswish if b.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if b.expanded != b.cin:
            layers.append(ConvBNAct(b.cin, b.expanded, 1, activation=act, eps=eps))
        stride = 1 if b.dilation > 1 else b.stride
        layers.append(ConvBNAct(b.expanded, b.expanded, b.kernel, stride, groups=b.expanded,
                                dilation=b.dilation, activation=act, eps=eps))
        if b.use_se:
            layers.append(SqueezeExcitation(b.expanded, make_divisible(b.expanded // 4)))
        layers.append(ConvBNAct(b.expanded, b.cout, 1, activation=None, eps=eps))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res_connect else self.block(x)


def mobilenet_v3_large_blocks(width_mult: float = 1.0, dilated: bool = True) -> list[V3Block]:
    """MobileNetV3-Large's bneck table; ``dilated`` runs the last stage at rate 2 (output stride 16)."""
    d = 2 if dilated else 1
    c = lambda v: make_divisible(v * width_mult)  # noqa: E731
    # in, kernel, expanded, out, SE, hard-swish, stride, dilation
    table = [
        (16, 3, 16, 16, False, False, 1, 1), (16, 3, 64, 24, False, False, 2, 1),
        (24, 3, 72, 24, False, False, 1, 1), (24, 5, 72, 40, True, False, 2, 1),
        (40, 5, 120, 40, True, False, 1, 1), (40, 5, 120, 40, True, False, 1, 1),
        (40, 3, 240, 80, False, True, 2, 1), (80, 3, 200, 80, False, True, 1, 1),
        (80, 3, 184, 80, False, True, 1, 1), (80, 3, 184, 80, False, True, 1, 1),
        (80, 3, 480, 112, True, True, 1, 1), (112, 3, 672, 112, True, True, 1, 1),
        (112, 5, 672, 160, True, True, 2, d), (160, 5, 960, 160, True, True, 1, d),
        (160, 5, 960, 160, True, True, 1, d),
    ]
    return [V3Block(c(i), k, c(e), c(o), se, hs, s, dl) for i, k, e, o, se, hs, s, dl in table]


class MobileNetV3Backbone(_FeatureTrunk):
    """``features[0..16]`` of MobileNetV3-Large (torchvision eps=0.001 batch norms).

    Taps: ``low`` = block 3 (stride 4), ``aux`` = block 4 (torchvision's aux position),
    ``out`` = the 960-channel last conv.
    """

    def __init__(self, blocks: list[V3Block]) -> None:
        eps = 0.001
        stem = blocks[0].cin
        last = 6 * blocks[-1].cout
        layers: list[nn.Module] = [ConvBNAct(3, stem, 3, stride=2, activation=nn.Hardswish, eps=eps)]
        layers += [InvertedResidualV3(b, eps) for b in blocks]
        layers.append(ConvBNAct(blocks[-1].cout, last, 1, activation=nn.Hardswish, eps=eps))
        super().__init__(*layers)
        self.taps = {"low": 3, "aux": 4, "out": len(layers) - 1}
        self.out_channels = {"low": blocks[2].cout, "aux": blocks[3].cout, "out": last}
        stride = 2
        for b in blocks:
            stride *= 1 if b.dilation > 1 else b.stride
        self.output_stride = stride
