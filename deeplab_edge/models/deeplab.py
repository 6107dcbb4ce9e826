"""The DeepLab segmentation model and its builders.

DeepLab-v2 (Chen et al., TPAMI 2018): ResNet-101 at output stride 8, ASPP-L whose four
atrous branches (rates 6/12/18/24) each predict class logits, summed.
DeepLab-v3 (Chen et al., arXiv 1706.05587): ASPP = 1x1 + three atrous 3x3 (rates 6/12/18
at OS16, doubled at OS8) + image pooling, concatenated and projected.
DeepLab-v3+ (Chen et al., ECCV 2018): the v3 head plus a low-level-feature decoder.
DeepLab-LargeFOV (Chen et al., ICLR 2015, the seed's baseline) and DeepLab-v2's ASPP-L on MobileNetV2: one
3x3 atrous conv (rate 12), or one per rate (6/12/18/24), straight to class logits, summed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .heads import ASPPSum, DeepLabV3Head, DeepLabV3PlusHead, FCNHead
from .mobilenet import (MobileNetV2Backbone, MobileNetV3Backbone, V2Block, mobilenet_v2_blocks,
                        mobilenet_v3_large_blocks, restride_v2_blocks)
from .resnet import RESNET_LAYERS, ResNetBackbone

__all__ = ["DeepLab", "deeplabv2_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
           "deeplabv3_mobilenet_v2", "deeplabv3_mobilenet_v3_large", "deeplabv3plus_resnet50",
           "deeplabv3plus_resnet101", "deeplabv3plus_mobilenet_v2", "deeplabv2_mobilenet_v2",
           "deeplab_largefov_mobilenet_v2", "restride_config", "OUTPUT_STRIDES"]


class DeepLab(nn.Module):
    """Backbone + head; ``forward`` returns logits upsampled (bilinear) to the input size.

    ``config`` holds the builder name and keyword arguments, so a checkpoint can rebuild
    exactly this model.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, *, decoder: bool = False,
                 aux_classifier: nn.Module | None = None, align_corners: bool = False,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        if aux_classifier is not None:
            self.aux_classifier = aux_classifier
        self.decoder = decoder
        self.align_corners = align_corners
        self.config: dict[str, Any] = dict(config or {})

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    #: Set by training: in train mode ``forward`` then also returns the aux head's logits (a model with one).
    train_aux = False

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        feats = self.backbone(x)
        logits = self.classifier(feats["out"], feats["low"]) if self.decoder else self.classifier(feats["out"])
        out = F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)
        if self.training and self.train_aux and getattr(self, "aux_classifier", None) is not None:
            aux = self.aux_classifier(feats["aux"])
            return out, F.interpolate(aux, size=size, mode="bilinear", align_corners=self.align_corners)
        return out


#: The output strides each architecture is built for (its builders check them; so does ``restride_config``).
OUTPUT_STRIDES: dict[str, tuple[int, ...]] = {
    "deeplabv2_resnet101": (8, 16), "deeplabv3_resnet50": (8, 16), "deeplabv3_resnet101": (8, 16),
    "deeplabv3_mobilenet_v2": (8, 16, 32), "deeplabv3_mobilenet_v3_large": (16,),
    "deeplabv3plus_resnet50": (8, 16), "deeplabv3plus_resnet101": (8, 16), "deeplabv3plus_mobilenet_v2": (8, 16),
    "deeplabv2_mobilenet_v2": (8, 16, 32), "deeplab_largefov_mobilenet_v2": (8, 16, 32)}


def _check(num_classes: int, output_stride: int, arch: str) -> None:
    allowed = OUTPUT_STRIDES[arch]
    if num_classes < 1:
        raise ValueError(f"expected num_classes >= 1, got {num_classes}")
    if output_stride not in allowed:
        raise ValueError(f"expected output_stride in {allowed}, got {output_stride}")


def _default_rates(output_stride: int) -> tuple[int, ...]:
    return tuple(r * 16 // output_stride for r in (6, 12, 18))


def _resnet(depth: str, output_stride: int) -> ResNetBackbone:
    dil = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}[output_stride]
    return ResNetBackbone(RESNET_LAYERS[depth], dil)


def deeplabv2_resnet101(*, num_classes: int = 21, output_stride: int = 8,
                        aspp_rates: tuple[int, ...] | list[int] = (6, 12, 18, 24),
                        align_corners: bool = False) -> DeepLab:
    """DeepLab-v2: ResNet-101, output stride 8, ASPP-L (summed per-branch logits)."""
    _check(num_classes, output_stride, "deeplabv2_resnet101")
    config = dict(arch="deeplabv2_resnet101", num_classes=num_classes, output_stride=output_stride,
                  aspp_rates=list(aspp_rates), align_corners=align_corners)
    return DeepLab(_resnet("resnet101", output_stride), ASPPSum(2048, num_classes, aspp_rates),
                   align_corners=align_corners, config=config)


def _v3_resnet(depth: str, arch: str, num_classes: int, output_stride: int, aspp_rates, aux_loss: bool,
               align_corners: bool) -> DeepLab:
    _check(num_classes, output_stride, arch)
    rates = _default_rates(output_stride) if aspp_rates is None else tuple(aspp_rates)
    config = dict(arch=arch, num_classes=num_classes, output_stride=output_stride, aspp_rates=list(rates),
                  aux_loss=aux_loss, align_corners=align_corners)
    return DeepLab(_resnet(depth, output_stride), DeepLabV3Head(2048, num_classes, rates),
                   aux_classifier=FCNHead(1024, num_classes) if aux_loss else None,
                   align_corners=align_corners, config=config)


def deeplabv3_resnet50(*, num_classes: int = 21, output_stride: int = 8, aspp_rates=None,
                       aux_loss: bool = False, align_corners: bool = False) -> DeepLab:
    """DeepLab-v3 on ResNet-50; keys match torchvision's ``deeplabv3_resnet50`` (``aux_loss=True`` for its
    COCO checkpoints). Rates default to 6/12/18 scaled to the output stride (12/24/36 at OS8)."""
    return _v3_resnet("resnet50", "deeplabv3_resnet50", num_classes, output_stride, aspp_rates, aux_loss,
                      align_corners)


def deeplabv3_resnet101(*, num_classes: int = 21, output_stride: int = 8, aspp_rates=None,
                        aux_loss: bool = False, align_corners: bool = False) -> DeepLab:
    """DeepLab-v3 on ResNet-101; keys match torchvision's ``deeplabv3_resnet101``."""
    return _v3_resnet("resnet101", "deeplabv3_resnet101", num_classes, output_stride, aspp_rates, aux_loss,
                      align_corners)


def _v2_backbone(output_stride: int, width_mult: float, stem: int | None,
                 blocks: list | None) -> tuple[MobileNetV2Backbone, int, list[list[int]]]:
    if blocks is None:
        stem, parsed = mobilenet_v2_blocks(width_mult, output_stride)
    else:
        parsed = [b if isinstance(b, V2Block) else V2Block(*b) for b in blocks]
        if stem is None:
            raise ValueError("expected stem channels together with explicit blocks, got none")
    trunk = MobileNetV2Backbone(int(stem), parsed)
    if trunk.output_stride != output_stride:
        raise ValueError(f"expected blocks with output stride {output_stride}, got {trunk.output_stride}")
    as_lists = [[b.cin, b.hidden, b.cout, b.stride, b.dilation] for b in parsed]
    return trunk, int(stem), as_lists


def deeplabv3_mobilenet_v2(*, num_classes: int = 21, output_stride: int = 16, aspp_rates=(),
                           width_mult: float = 1.0, head_conv: bool = False, align_corners: bool = False,
                           stem: int | None = None, blocks: list | None = None, aspp_channels: int = 256) -> DeepLab:
    """DeepLab-v3 on MobileNetV2 as in Google's TF DeepLab ``mobilenet_v2`` variant: by default no
    atrous branches (1x1 + image pooling only) and no 3x3 conv before the logits, output stride 16.
    ``stem``/``blocks`` give the trunk explicitly and ``aspp_channels`` the ASPP width (the TFLite
    importer reads them from a graph)."""
    _check(num_classes, output_stride, "deeplabv3_mobilenet_v2")
    trunk, stem, as_lists = _v2_backbone(output_stride, width_mult, stem, blocks)
    rates = tuple(aspp_rates)
    config = dict(arch="deeplabv3_mobilenet_v2", num_classes=num_classes, output_stride=output_stride,
                  aspp_rates=list(rates), width_mult=width_mult, head_conv=head_conv,
                  align_corners=align_corners, stem=stem, blocks=as_lists, aspp_channels=aspp_channels)
    return DeepLab(trunk, DeepLabV3Head(trunk.out_channels["out"], num_classes, rates, head_conv=head_conv,
                                        channels=aspp_channels),
                   align_corners=align_corners, config=config)


def deeplabv3_mobilenet_v3_large(*, num_classes: int = 21, output_stride: int = 16, aspp_rates=(12, 24, 36),
                                 aux_loss: bool = False, align_corners: bool = False) -> DeepLab:
    """DeepLab-v3 on MobileNetV3-Large at output stride 16 (the only one); keys match torchvision's
    ``deeplabv3_mobilenet_v3_large`` (whose head uses rates 12/24/36)."""
    _check(num_classes, output_stride, "deeplabv3_mobilenet_v3_large")
    trunk = MobileNetV3Backbone(mobilenet_v3_large_blocks(dilated=True))
    rates = tuple(aspp_rates)
    config = dict(arch="deeplabv3_mobilenet_v3_large", num_classes=num_classes, output_stride=16,
                  aspp_rates=list(rates), aux_loss=aux_loss, align_corners=align_corners)
    return DeepLab(trunk, DeepLabV3Head(trunk.out_channels["out"], num_classes, rates),
                   aux_classifier=FCNHead(trunk.out_channels["aux"], num_classes) if aux_loss else None,
                   align_corners=align_corners, config=config)


def _v3plus(trunk: nn.Module, config: dict[str, Any]) -> DeepLab:
    head = DeepLabV3PlusHead(trunk.out_channels["out"], trunk.out_channels["low"], config["num_classes"],
                             config["aspp_rates"], align_corners=config["align_corners"],
                             separable=bool(config.get("separable", False)))
    return DeepLab(trunk, head, decoder=True, align_corners=config["align_corners"], config=config)


def deeplabv3plus_resnet50(*, num_classes: int = 21, output_stride: int = 16, aspp_rates=None,
                           align_corners: bool = False) -> DeepLab:
    """DeepLab-v3+ on ResNet-50 (decoder on layer1 features)."""
    _check(num_classes, output_stride, "deeplabv3plus_resnet50")
    rates = _default_rates(output_stride) if aspp_rates is None else tuple(aspp_rates)
    return _v3plus(_resnet("resnet50", output_stride), dict(
        arch="deeplabv3plus_resnet50", num_classes=num_classes, output_stride=output_stride,
        aspp_rates=list(rates), align_corners=align_corners))


def deeplabv3plus_resnet101(*, num_classes: int = 21, output_stride: int = 16, aspp_rates=None,
                            align_corners: bool = False) -> DeepLab:
    """DeepLab-v3+ on ResNet-101 (decoder on layer1 features)."""
    _check(num_classes, output_stride, "deeplabv3plus_resnet101")
    rates = _default_rates(output_stride) if aspp_rates is None else tuple(aspp_rates)
    return _v3plus(_resnet("resnet101", output_stride), dict(
        arch="deeplabv3plus_resnet101", num_classes=num_classes, output_stride=output_stride,
        aspp_rates=list(rates), align_corners=align_corners))


def deeplabv3plus_mobilenet_v2(*, num_classes: int = 21, output_stride: int = 16, aspp_rates=None,
                               width_mult: float = 1.0, align_corners: bool = False, stem: int | None = None,
                               blocks: list | None = None, separable: bool = False) -> DeepLab:
    """DeepLab-v3+ on MobileNetV2 (decoder on the stride-4, 24-channel features); ``stem``/``blocks`` give the
    trunk explicitly (an imported model's, see :func:`deeplabv3_mobilenet_v2`); ``separable``: atrous separable
    convolutions in the ASPP and the decoder, as the paper (with 11 classes: 2.7M parameters instead of 5.8M, 7.4
    GFLOPs instead of 34.8 at 480x360)."""
    _check(num_classes, output_stride, "deeplabv3plus_mobilenet_v2")
    rates = _default_rates(output_stride) if aspp_rates is None else tuple(aspp_rates)
    trunk, stem, as_lists = _v2_backbone(output_stride, width_mult, stem, blocks)
    config = dict(arch="deeplabv3plus_mobilenet_v2", num_classes=num_classes, output_stride=output_stride,
                  aspp_rates=list(rates), width_mult=width_mult, align_corners=align_corners)
    if separable:  # recorded only when on: earlier checkpoints' configs stay as they were
        config["separable"] = True
    if blocks is not None:  # the table's trunk keeps its old config (checkpoints without stem/blocks load as before)
        config.update(stem=stem, blocks=as_lists)
    return _v3plus(trunk, config)


def _summed_logits_mobilenet_v2(arch: str, num_classes: int, output_stride: int, rates, width_mult: float,
                                align_corners: bool, stem: int | None, blocks: list | None) -> DeepLab:
    _check(num_classes, output_stride, arch)
    trunk, stem, as_lists = _v2_backbone(output_stride, width_mult, stem, blocks)
    config = dict(arch=arch, num_classes=num_classes, output_stride=output_stride, aspp_rates=[int(r) for r in rates],
                  width_mult=width_mult, align_corners=align_corners, stem=stem, blocks=as_lists)
    return DeepLab(trunk, ASPPSum(trunk.out_channels["out"], num_classes, rates), align_corners=align_corners,
                   config=config)


def deeplabv2_mobilenet_v2(*, num_classes: int = 21, output_stride: int = 16,
                           aspp_rates: tuple[int, ...] | list[int] = (6, 12, 18, 24), width_mult: float = 1.0,
                           align_corners: bool = False, stem: int | None = None, blocks: list | None = None) -> DeepLab:
    """DeepLab-v2's head on MobileNetV2: ASPP-L, one 3x3 atrous conv per rate (6/12/18/24, the seed's) from the
    trunk's 320 channels straight to class logits, the branches summed (as DeepLab-v2's ResNet-101 model)."""
    return _summed_logits_mobilenet_v2("deeplabv2_mobilenet_v2", num_classes, output_stride, aspp_rates, width_mult,
                                       align_corners, stem, blocks)


def deeplab_largefov_mobilenet_v2(*, num_classes: int = 21, output_stride: int = 16,
                                  aspp_rates: tuple[int, ...] | list[int] = (12,), width_mult: float = 1.0,
                                  align_corners: bool = False, stem: int | None = None,
                                  blocks: list | None = None) -> DeepLab:
    """DeepLab-LargeFOV's head on MobileNetV2 (the seed's single-scale baseline): one 3x3 atrous conv, rate 12,
    from the trunk straight to class logits."""
    return _summed_logits_mobilenet_v2("deeplab_largefov_mobilenet_v2", num_classes, output_stride, aspp_rates,
                                       width_mult, align_corners, stem, blocks)


def restride_config(config: dict[str, Any], output_stride: int) -> dict[str, Any]:
    """A builder config for the same weights run at another output stride.

    The last strides become atrous rates (or the reverse) and the ASPP rates scale with them,
    as DeepLab-v3 does when it trains at output stride 16 and evaluates at 8 (Chen et al. 2017,
    Sec. 4.1: rates 6/12/18 become 12/24/36). Every weight keeps its shape."""
    arch = config.get("arch")
    allowed = OUTPUT_STRIDES.get(arch)
    if allowed is None:
        raise ValueError(f"unknown architecture {arch!r}")
    if output_stride not in allowed:
        raise ValueError(f"{arch} runs at output stride {' or '.join(map(str, allowed))}, not {output_stride}")
    old = int(config.get("output_stride", 16))
    out = dict(config, output_stride=output_stride)
    if old == output_stride:
        return out
    rates = list(config.get("aspp_rates") or [])
    scaled = [r * old // output_stride for r in rates]
    if any(r * old % output_stride or s < 1 for r, s in zip(rates, scaled)):
        raise ValueError(f"ASPP rates {rates} at output stride {old} have no whole equivalent at {output_stride}")
    if "aspp_rates" in config:
        out["aspp_rates"] = scaled
    if config.get("blocks") is not None:
        blocks = restride_v2_blocks([V2Block(*b) for b in config["blocks"]], output_stride)
        out["blocks"] = [[b.cin, b.hidden, b.cout, b.stride, b.dilation] for b in blocks]
    return out
