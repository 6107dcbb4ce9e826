"""DeepLab heads: ASPP-L sum (v2), ASPP with image pooling (v3), and the v3+ decoder.

Parameter names follow torchvision's ``models/segmentation/deeplabv3.py`` (``convs``,
``project``) so its checkpoints load strictly. Image pooling uses a mean over H, W and a
broadcast instead of ``AdaptiveAvgPool2d`` + bilinear resize of a 1x1 map: the same
numbers, and an ONNX graph (ReduceMean + Expand) that TensorRT and ONNX Runtime take with
dynamic input sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASPP", "ASPPSum", "DeepLabV3Head", "DeepLabV3PlusHead", "FCNHead", "GlobalAvgPool", "SeparableConv"]


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)


class ASPPConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, rate: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=rate, dilation=rate, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SeparableConv(nn.Sequential):
    """DeepLab-v3+'s atrous separable convolution (Chen et al., ECCV 2018, Sec. 3.1; TF DeepLab's
    ``split_separable_conv2d``): a depthwise 3x3 at ``rate`` + BN + ReLU, then a pointwise 1x1 + BN + ReLU."""

    def __init__(self, cin: int, cout: int, rate: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cin, 3, padding=rate, dilation=rate, groups=cin, bias=False),
                         nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPPPooling(nn.Sequential):
    """Image-level features: global mean, 1x1 conv + BN + ReLU, broadcast back to H x W."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(GlobalAvgPool(), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h, w = x.shape[-2:]
        return super().forward(x).expand(-1, -1, h, w)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab-v3): 1x1 branch, one 3x3 branch per rate,
    optional image pooling; concatenated and projected by 1x1 conv + BN + ReLU.

    ``rates=()`` gives the head of Google's MobileNetV2 DeepLab (1x1 branch + pooling only);
    ``separable`` makes each atrous branch a :class:`SeparableConv` (DeepLab-v3+).
    """

    def __init__(self, cin: int, rates: tuple[int, ...] | list[int], cout: int = 256,
                 image_pooling: bool = True, dropout: float = 0.5, separable: bool = False) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        self.image_pooling = image_pooling
        branches: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))]
        branches += [(SeparableConv if separable else ASPPConv)(cin, cout, r) for r in self.rates]
        if image_pooling:
            branches.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class ASPPSum(nn.Module):
    """DeepLab-v2's ASPP-L: one 3x3 atrous conv per rate straight to class logits, summed."""

    def __init__(self, cin: int, num_classes: int, rates: tuple[int, ...] | list[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        if not self.rates:
            raise ValueError("expected at least one ASPP rate for DeepLab-v2, got none")
        self.convs = nn.ModuleList(nn.Conv2d(cin, num_classes, 3, padding=r, dilation=r) for r in self.rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class DeepLabV3Head(nn.Sequential):
    """ASPP, then (torchvision) 3x3 conv + BN + ReLU, then the 1x1 classifier.

    ``head_conv=False`` drops the 3x3 conv, as in Google's TF DeepLab (ASPP -> logits).
    """

    def __init__(self, cin: int, num_classes: int, rates: tuple[int, ...] | list[int],
                 head_conv: bool = True, image_pooling: bool = True, channels: int = 256) -> None:
        layers: list[nn.Module] = [ASPP(cin, rates, cout=channels, image_pooling=image_pooling)]
        if head_conv:
            layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(channels, num_classes, 1))
        super().__init__(*layers)


class DeepLabV3PlusHead(nn.Module):
    """DeepLab-v3+ (Chen et al., ECCV 2018): ASPP on the deep features, upsampled x4 and
    concatenated with 48 projected low-level channels, then two 3x3 convs and the classifier;
    ``separable``: the ASPP's atrous branches and the two decoder convs as atrous separable convolutions
    (the paper's design, and TF DeepLab's default for its decoder)."""

    def __init__(self, cin: int, low_channels: int, num_classes: int, rates: tuple[int, ...] | list[int],
                 image_pooling: bool = True, align_corners: bool = False, separable: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.aspp = ASPP(cin, rates, image_pooling=image_pooling, separable=separable)
        self.project = nn.Sequential(nn.Conv2d(low_channels, 48, 1, bias=False), nn.BatchNorm2d(48),
                                     nn.ReLU(inplace=True))
        if separable:
            convs: list[nn.Module] = [SeparableConv(256 + 48, 256), SeparableConv(256, 256)]
        else:
            convs = [nn.Conv2d(256 + 48, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
                     nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True)]
        self.classifier = nn.Sequential(*convs, nn.Conv2d(256, num_classes, 1))

    def forward(self, out: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.aspp(out), size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.classifier(torch.cat([x, self.project(low)], dim=1))


class FCNHead(nn.Sequential):
    """torchvision's auxiliary head (its checkpoints load strictly; trained with weight 0.5 by ``train``, as
    torchvision's reference does; unused at inference)."""

    def __init__(self, cin: int, num_classes: int) -> None:
        inter = cin // 4
        super().__init__(nn.Conv2d(cin, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter),
                         nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Conv2d(inter, num_classes, 1))
