"""The dense CRF's parameters (named as in the DeepLab paper), presets and methods."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import DeepLabEdgeError

__all__ = ["CRFParams", "PARAM_RANGES", "PARAMS_FORMAT", "load_crf_params", "PRESETS", "METHODS", "DEVICE_METHODS", "TRITON_METHODS", "with_overrides",
           "gaussian_radius", "gaussian_1d"]

METHODS = ("pydensecrf", "torch", "triton", "window", "triton-window")
#: The methods that run on the CRF's device (pydensecrf always runs on the CPU).
DEVICE_METHODS = ("torch", "triton", "window", "triton-window")
#: The methods that need a CUDA GPU (or Triton's interpreter).
TRITON_METHODS = ("triton", "triton-window")


#: The closed range each parameter is accepted in (their defaults and every preset far inside): theta_alpha /
#: theta_beta below 0.01 need lattice keys wider than 62 bits on a 0-255 image, theta_gamma above 100 a spatial
#: kernel of over 800 taps per axis; weights above 1000 saturate the softmax; 200 iterations are far past the
#: mean-field's convergence (5-10, the paper's 10).
PARAM_RANGES = {"w1": (0.0, 1e3), "w2": (0.0, 1e3), "theta_alpha": (1e-2, 1e5), "theta_beta": (1e-2, 1e5),
                "theta_gamma": (1e-2, 100.0), "iterations": (0, 200)}


@dataclass(frozen=True)
class CRFParams:
    """Parameters named as in the DeepLab paper (Chen et al., TPAMI 2018, Sec. 3.3).

    Defaults: DeepLab-v2's released VOC configuration. ``near_radius``, ``window_radius``,
    ``dilation`` and ``spatial_radius`` only apply to the ``window`` / ``triton-window`` approximation."""

    w1: float = 4.0  # bilateral (appearance) kernel weight
    theta_alpha: float = 67.0  # bilateral kernel: position scale (pixels)
    theta_beta: float = 3.0  # bilateral kernel: colour scale (0-255 RGB)
    w2: float = 3.0  # spatial (smoothness) kernel weight
    theta_gamma: float = 1.0  # spatial kernel: position scale (pixels)
    iterations: int = 10
    near_radius: int = 2  # bilateral: every offset within this (dense 5 x 5)
    window_radius: int = 6  # bilateral: then samples every `dilation` px out to window_radius * dilation
    dilation: int = 16
    spatial_radius: int = 2
    # every method but pydensecrf: labels whose probability stays below this at every pixel
    # keep their input probability and are left out of the mean-field (0 keeps all).
    label_threshold: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("iterations", "near_radius", "window_radius", "dilation", "spatial_radius"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"expected a whole number for {name}, got {v!r}")
        for name in ("w1", "w2", "label_threshold", "theta_alpha", "theta_beta", "theta_gamma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"expected a number for {name}, got {v!r}")
        for name in ("w1", "w2", "label_threshold"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"expected a finite {name} >= 0, got {getattr(self, name)}")
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"expected a finite {name}, got {getattr(self, name)}")
            if not getattr(self, name) > 0:
                raise ValueError(f"expected {name} > 0, got {getattr(self, name)}")
        if min(self.iterations, self.near_radius, self.window_radius, self.spatial_radius) < 0 or self.dilation < 1:
            raise ValueError(f"expected iterations and radii >= 0 and dilation >= 1, got {self}")
        # the ranges the CRF computes in (float32 features, lattice keys, the spatial kernel's taps): outside them it
        # overflows or allocates without bound, or its output means nothing (a threshold of 1 prunes every label)
        for name, (lo, hi) in PARAM_RANGES.items():
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ValueError(f"expected {name} in [{lo:g}, {hi:g}], got {v}")
        if self.label_threshold >= 1:
            raise ValueError(f"expected label_threshold below 1 (it leaves out the labels below it), "
                             f"got {self.label_threshold}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = {
    # DeepLab-v2 (Chen et al. 2018), released VOC CRF configuration.
    "deeplab-v2": CRFParams(),
    # DeepLab-v1 (Chen et al., ICLR 2015) MATLAB values.
    "deeplab-v1": CRFParams(w1=4.0, theta_alpha=121.0, theta_beta=5.0, w2=3.0, theta_gamma=3.0),
}


#: the format of a parameter file (``crf tune -o``), read by ``--crf-params``
PARAMS_FORMAT = "deeplab-edge-crf-params/1"


def load_crf_params(path: str | Path) -> CRFParams:
    """The parameters of a ``crf tune`` file (or of a plain JSON object of CRFParams fields), checked."""
    path = Path(path)
    if path.is_dir():
        raise DeepLabEdgeError(f"--crf-params {path}: is a folder; pass the JSON file `crf tune -o` wrote")
    if not path.is_file():
        raise DeepLabEdgeError(f"--crf-params {path}: file not found; write one with `deeplab-edge crf tune -o FILE`")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DeepLabEdgeError(f"--crf-params {path}: not JSON ({e}); pass the file `crf tune -o` wrote") from None
    if isinstance(doc, dict) and "format" in doc and doc["format"] != PARAMS_FORMAT:
        raise DeepLabEdgeError(f"--crf-params {path}: format {doc['format']!r} is not {PARAMS_FORMAT!r}; pass the file "
                               "`crf tune -o` wrote (or a JSON object of CRF parameters)")
    fields = doc.get("params") if isinstance(doc, dict) and doc.get("format") == PARAMS_FORMAT else doc
    if not isinstance(fields, dict) or not fields:
        raise DeepLabEdgeError(f"--crf-params {path}: no CRF parameters in it; pass the file `crf tune -o` wrote")
    known = set(CRFParams.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise DeepLabEdgeError(f"--crf-params {path}: unknown CRF parameter {unknown[0]!r}; known: "
                               f"{', '.join(sorted(known))}")
    try:
        return CRFParams(**fields)
    except (TypeError, ValueError) as e:
        raise DeepLabEdgeError(f"--crf-params {path}: {e}; fix the value or tune again") from None


def with_overrides(params: CRFParams, **kw: Any) -> CRFParams:
    """``params`` with the given (non-None) fields replaced; a value out of range is a :class:`DeepLabEdgeError`."""
    try:
        return replace(params, **{k: v for k, v in kw.items() if v is not None})
    except ValueError as e:
        raise DeepLabEdgeError(f"CRF parameters: {e}; give a value in that range") from None


def gaussian_radius(sigma: float) -> int:
    """Truncation radius of the spatial Gaussian (4 sigma: weights below exp(-8) are left out)."""
    return max(1, int(math.ceil(4 * sigma)))


def gaussian_1d(sigma: float, device: torch.device) -> torch.Tensor:
    """The spatial Gaussian's 1-D taps exp(-x^2 / 2 sigma^2), x = -r..r (r = gaussian_radius(sigma))."""
    radius = gaussian_radius(sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    return torch.exp(-x * x / (2 * sigma * sigma))
