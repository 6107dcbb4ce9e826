"""The one preprocessing implementation shared by eval, predict, export and calibration.

A :class:`Preprocess` turns a uint8 RGB image into the model's float input and records
the geometry so that outputs can be mapped back to the original image:

* ``resize="long_side"``: scale so the long side is ``size`` (PIL bilinear on uint8, as
  TF DeepLab's evaluation and the TFLite reference do), then, with ``pad``, pad
  bottom/right to ``size`` x ``size`` with ``pad_value`` (the mean, i.e. 0 after
  normalisation).
* ``resize="none"``: feed the image at its own size (torchvision-style evaluation).

Normalisation: ``(x - mean) / std`` per channel, in float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["Preprocess", "Geometry", "IMAGENET"]

IMAGENET = {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}


@dataclass(frozen=True)
class Geometry:
    """Where the original image lies inside the model input."""

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    input_hw: tuple[int, int]


@dataclass(frozen=True)
class Preprocess:
    size: int | None = 513
    resize: str = "long_side"
    pad: bool = True
    mean: list[float] = field(default_factory=lambda: [127.5, 127.5, 127.5])
    std: list[float] = field(default_factory=lambda: [127.5, 127.5, 127.5])
    pad_value: float | None = None  # pixel value used for padding; None -> the mean

    def __post_init__(self) -> None:
        if self.resize not in ("long_side", "none"):
            raise ValueError(f"expected resize in ('long_side', 'none'), got {self.resize!r}")
        if self.resize == "long_side" and (self.size is None or self.size < 1):
            raise ValueError(f"expected a positive size with resize='long_side', got {self.size}")
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (*self.mean, *self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or not finite or min(self.std) <= 0:
            raise ValueError(f"expected 3 finite means and 3 positive stds, got {self.mean} and {self.std}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Preprocess":
        if not d:
            return cls()
        keys = {"size", "resize", "pad", "mean", "std", "pad_value"}
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items() if k in keys})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def fixed_input_hw(self) -> tuple[int, int] | None:
        """The input size every image gets, when there is one (resize + pad)."""
        return (self.size, self.size) if self.resize == "long_side" and self.pad and self.size else None

    # ------------------------------------------------------------------ forward
    def resize_uint8(self, image: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Resize and pad a uint8 HWC image; returns the uint8 model input and its geometry."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        if self.resize == "long_side":
            s = self.size / max(h, w)
            rh, rw = max(1, int(round(h * s))), max(1, int(round(w * s)))
            if (rh, rw) != (h, w):
                image = np.array(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
        else:
            rh, rw = h, w
        ih, iw = (self.size, self.size) if (self.resize == "long_side" and self.pad) else (rh, rw)
        if (ih, iw) != (rh, rw):
            pv = self.pad_value if self.pad_value is not None else self.mean
            canvas = np.empty((ih, iw, 3), np.uint8)
            canvas[...] = np.clip(np.round(np.broadcast_to(np.asarray(pv, np.float64), (3,))), 0, 255).astype(np.uint8)
            canvas[:rh, :rw] = image
            image = canvas
        return image, Geometry((h, w), (rh, rw), (ih, iw))

    def normalize(self, image_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 HWC (or NHWC) -> float32 CHW (or NCHW), ``(x - mean) / std``."""
        if isinstance(image_uint8, np.ndarray) and not image_uint8.flags.writeable:
            image_uint8 = image_uint8.copy()
        x = torch.as_tensor(image_uint8)
        x = x.permute(2, 0, 1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return ((x.float() - mean) / std).contiguous()

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        img, geom = self.resize_uint8(image)
        return self.normalize(img), geom

    # ------------------------------------------------------------------ back
    @staticmethod
    def restore_labels(labels: np.ndarray, geom: Geometry) -> np.ndarray:
        """Crop the padding off an (h, w) label map and resize it (nearest) to the original size."""
        rh, rw = geom.resized_hw
        out = labels[:rh, :rw]
        if (rh, rw) != geom.orig_hw:
            out = np.asarray(Image.fromarray(out.astype(np.uint8)).resize(geom.orig_hw[::-1], Image.NEAREST))
        return out

    @staticmethod
    def restore_logits(logits: torch.Tensor, geom: Geometry) -> torch.Tensor:
        """Crop the padding off (C, h, w) logits and resize them (bilinear) to the original size."""
        rh, rw = geom.resized_hw
        out = logits[..., :rh, :rw]
        if (rh, rw) != geom.orig_hw:
            out = F.interpolate(out[None], size=geom.orig_hw, mode="bilinear", align_corners=False)[0]
        return out
