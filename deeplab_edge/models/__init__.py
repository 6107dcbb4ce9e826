"""DeepLab models: builders, a registry and metadata.

>>> from deeplab_edge.models import get_model, list_models
>>> model = get_model("deeplabv3_mobilenet_v2", num_classes=21)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from . import deeplab as _d
from .deeplab import OUTPUT_STRIDES, DeepLab, restride_config
from .flops import count_flops, count_params

__all__ = ["DeepLab", "OUTPUT_STRIDES", "restride_config", "ModelInfo", "MODELS", "get_model", "list_models",
           "count_flops", "count_params", "with_trunk"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., DeepLab]
    version: str
    backbone: str
    torchvision_compatible: bool
    summary: str


MODELS: dict[str, ModelInfo] = {m.name: m for m in [
    ModelInfo("deeplabv2_resnet101", _d.deeplabv2_resnet101, "v2", "ResNet-101", False,
              "ASPP-L, four atrous 3x3 branches to logits, summed"),
    ModelInfo("deeplabv3_resnet50", _d.deeplabv3_resnet50, "v3", "ResNet-50", True,
              "ASPP 1x1 + 3 atrous + image pooling"),
    ModelInfo("deeplabv3_resnet101", _d.deeplabv3_resnet101, "v3", "ResNet-101", True,
              "ASPP 1x1 + 3 atrous + image pooling"),
    ModelInfo("deeplabv3_mobilenet_v2", _d.deeplabv3_mobilenet_v2, "v3", "MobileNetV2", False,
              "Google's TF DeepLab variant: 1x1 + image pooling, no atrous branches"),
    ModelInfo("deeplabv3_mobilenet_v3_large", _d.deeplabv3_mobilenet_v3_large, "v3", "MobileNetV3-Large", True,
              "ASPP 1x1 + 3 atrous + image pooling"),
    ModelInfo("deeplabv3plus_resnet50", _d.deeplabv3plus_resnet50, "v3+", "ResNet-50", False,
              "v3 head + low-level decoder"),
    ModelInfo("deeplabv3plus_resnet101", _d.deeplabv3plus_resnet101, "v3+", "ResNet-101", False,
              "v3 head + low-level decoder"),
    ModelInfo("deeplabv3plus_mobilenet_v2", _d.deeplabv3plus_mobilenet_v2, "v3+", "MobileNetV2", False,
              "v3 head + low-level decoder"),
    ModelInfo("deeplabv2_mobilenet_v2", _d.deeplabv2_mobilenet_v2, "v2", "MobileNetV2", False,
              "ASPP-L, four atrous 3x3 branches to logits, summed"),
    ModelInfo("deeplab_largefov_mobilenet_v2", _d.deeplab_largefov_mobilenet_v2, "v1", "MobileNetV2", False,
              "LargeFOV: one atrous 3x3 (rate 12) to logits"),
]}


def list_models() -> list[str]:
    return list(MODELS)


def get_model(name: str, **kwargs: Any) -> DeepLab:
    """Build a model by name; keyword arguments go to its builder."""
    if name not in MODELS:
        raise ValueError(f"expected one of {', '.join(MODELS)}, got {name!r}")
    return MODELS[name].builder(**kwargs)


#: what describes a trunk in a builder's config (MobileNetV2's width and explicit blocks, as an import records them)
TRUNK_CONFIG = ("output_stride", "width_mult", "stem", "blocks")


def with_trunk(source: DeepLab, arch: str, num_classes: int, **options: Any) -> DeepLab:
    """``arch`` built on ``source``'s trunk: the trunk's config carried over where ``arch``'s builder takes it
    (``options`` win, e.g. another ``aspp_rates``), every backbone weight copied from ``source`` (all of them
    must fit, or ValueError); the head is new. How the model zoo starts each head from the imported VOC trunk."""
    if arch not in MODELS:
        raise ValueError(f"expected one of {', '.join(MODELS)}, got {arch!r}")
    params = inspect.signature(MODELS[arch].builder).parameters
    kwargs = {k: source.config[k] for k in TRUNK_CONFIG if k in source.config and k in params}
    model = get_model(arch, **{**kwargs, **options, "num_classes": num_classes})
    trunk = {k: v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    own = {k: v.shape for k, v in model.state_dict().items() if k.startswith("backbone.")}
    if own != {k: v.shape for k, v in trunk.items()}:
        raise ValueError(f"{arch}'s trunk is not the checkpoint's ({source.config.get('arch')}): "
                         f"{len(set(own) ^ set(trunk))} backbone tensors differ by name or shape")
    model.load_state_dict(trunk, strict=False)
    return model
