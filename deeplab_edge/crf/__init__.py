"""Fully connected CRF (Krähenbühl & Koltun, NIPS 2011) as DeepLab uses it after the network.

Energy: unary ``-log P`` from the network, plus two Gaussian pairwise kernels with Potts
compatibility — the *bilateral* (appearance) kernel ``w1 exp(-|p_i - p_j|^2 / 2 theta_alpha^2
- |I_i - I_j|^2 / 2 theta_beta^2)`` and the *spatial* (smoothness) kernel ``w2 exp(-|p_i -
p_j|^2 / 2 theta_gamma^2)`` — solved by ``iterations`` mean-field updates

    Q_i(l) ∝ exp(-U_i(l) + sum_m w_m sum_j k~_m(i, j) Q_j(l))

with ``k~_m = D^-1/2 K_m D^-1/2`` (symmetric normalisation, ``D = diag(K_m 1)``) as in
Krähenbühl's ``densecrf`` library that pydensecrf wraps (its Potts compatibility
``-w * Q`` and NORMALIZE_SYMMETRIC kernels; the sum includes j = i).

Implementations, one API (:func:`dense_crf`):

* ``pydensecrf`` — the reference: the permutohedral lattice in C++ through pydensecrf
  (``pip install pydensecrf2``; imports as ``pydensecrf``).
* ``torch`` — the same algorithm vectorised in PyTorch (:class:`PermutohedralLattice`,
  Adams et al., Eurographics 2010: splat to the d+1 vertices of each point's enclosing
  simplex, blur along the d+1 lattice axes with [1/2, 1, 1/2], slice back) for the
  bilateral kernel; the spatial kernel is an exact (4-sigma) separable Gaussian convolution.
* ``triton`` — that lattice mean-field in Triton on a GPU (``deeplab_edge.kernels.crf_lattice``):
  per iteration one fused launch (slice, spatial message with weights computed on the fly,
  Potts, unary, softmax, splat of the new marginals) and one small launch per lattice axis
  for the blur. Same math as ``torch``, tested equal to it.
* ``window`` / ``triton-window`` — a truncated-window approximation (after ConvCRF, Teichmann &
  Cipolla 2018) computed at full resolution: the bilateral kernel summed over a dense
  5 x 5 neighbourhood plus samples every 16 pixels out to +-96 (each weighted by the 256
  pixels it stands for), the spatial kernel over a dense 5 x 5 window, weights computed on
  the fly. ``window`` is the PyTorch reference of the Triton mean-field step
  (``deeplab_edge.kernels.crf_window``), which fuses both message passes, the Potts transform, the
  unary and the softmax in a single launch per iteration. Cheaper per iteration than the
  lattice, but it keeps only part of pydensecrf's mIoU gain (measured in ``crf bench``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError, DeepLabEdgeError, KernelUnavailableError
from ..kernels.device import triton_unavailable
from .lattice import (LatticeSetup, PermutohedralLattice, lattice_features, lattice_setup, lattice_step_reference,
                      permutohedral_crf)
from .params import (DEVICE_METHODS, METHODS, PARAMS_FORMAT, PRESETS, TRITON_METHODS, CRFParams, gaussian_1d,
                     gaussian_radius, load_crf_params, with_overrides)
from .reference import pydensecrf_crf

__all__ = ["CRFParams", "CRFStage", "PARAMS_FORMAT", "load_crf_params", "PRESETS", "METHODS", "DEVICE_METHODS", "TRITON_METHODS", "dense_crf",
           "PermutohedralLattice", "LatticeSetup", "lattice_features", "lattice_setup", "lattice_step_reference",
           "unary_from", "prune_labels", "with_overrides", "gaussian_radius", "gaussian_1d"]


def _check_inputs(image: np.ndarray, scores: np.ndarray | torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"expected the image as uint8 RGB [H, W, 3], got {image.dtype} {list(image.shape)}")
    s = torch.as_tensor(scores)
    if s.dim() != 3:
        raise DataError(f"expected scores as [classes, H, W], got shape {list(s.shape)}")
    if s.shape[1:] != image.shape[:2]:
        raise DataError(f"scores are {list(s.shape[1:])} but the image is {list(image.shape[:2])}: resize the "
                        "network's output to the image first")
    if s.shape[0] < 1:
        raise DataError("expected at least one class in the scores")
    if not s.is_floating_point():
        raise DataError(f"expected floating-point scores, got {s.dtype}")
    return image, s


def unary_from(scores: torch.Tensor, kind: str) -> torch.Tensor:
    """``-log P`` as float32 [L, H, W] from probabilities or logits."""
    s = scores.float()
    if kind == "probs":
        if s.min() < 0 or s.max() > 1 + 1e-4:
            raise DataError("expected probabilities in [0, 1]; pass kind='logits' for raw network outputs")
        return -torch.log(s.clamp_min(1e-8))
    if kind == "logits":
        return -torch.log_softmax(s, 0)
    raise ValueError(f"expected kind 'probs' or 'logits', got {kind!r}")


def dense_crf(image: np.ndarray, scores: np.ndarray | torch.Tensor, params: CRFParams | None = None, *,
              method: str = "torch", kind: str = "logits", device: str | torch.device | None = None) -> torch.Tensor:
    """Run the dense CRF; returns the marginals Q as float32 [L, H, W] (on ``device``).

    ``image``: uint8 RGB [H, W, 3]; ``scores``: [L, H, W] probabilities (``kind="probs"``) or
    logits (``kind="logits"``) at the image's resolution."""
    params = params or CRFParams()
    if method not in METHODS:
        raise ValueError(f"expected method in {METHODS}, got {method!r}")
    image, scores = _check_inputs(image, scores)
    dev = torch.device(device) if device is not None else scores.device
    unary = unary_from(scores, kind).to(dev)
    if method == "pydensecrf":
        return pydensecrf_crf(image, unary.cpu(), params).to(dev)
    img = torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).to(dev)  # writable: torch warns otherwise
    prob, keep = prune_labels(unary, params)
    active = unary[keep]
    if method == "torch":
        q = permutohedral_crf(img, active, params)
    elif method == "triton":
        from ..kernels.crf_lattice import crf_lattice

        q = crf_lattice(lattice_setup(img, params), active, params)
    else:
        from ..kernels.crf_window import crf_window

        q = crf_window(img, active, params, use_triton=method == "triton-window")
    if bool(keep.all()):
        return q
    out = prob.clone()
    out[keep] = q * (1.0 - prob[~keep].sum(0))  # the left-out labels keep their (tiny) mass
    return out


def prune_labels(unary: torch.Tensor, params: CRFParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(the probabilities ``exp(-unary)``, the labels the CRF runs on): those whose probability reaches
    ``label_threshold`` somewhere, and always the most probable one overall."""
    prob = torch.exp(-unary)
    keep = prob.amax((1, 2)) >= params.label_threshold
    keep[prob.sum((1, 2)).argmax()] = True
    return prob, keep


class CRFStage:
    """The CRF as a segmentation post-processing stage: (image, logits) -> label map."""

    def __init__(self, method: str, params: CRFParams, device: str | torch.device = "cpu") -> None:
        if method not in METHODS:
            raise ValueError(f"expected method in {METHODS}, got {method!r}")
        self.method, self.params, self.device = method, params, torch.device(device)
        if method in TRITON_METHODS:
            reason = triton_unavailable(self.device)
            if reason:
                raise KernelUnavailableError(reason)
        if method == "pydensecrf":
            try:
                import pydensecrf.densecrf  # noqa: F401
            except ImportError as e:
                raise DeepLabEdgeError("--crf pydensecrf needs pydensecrf: pip install pydensecrf2") from e

    def __call__(self, image: np.ndarray, logits: torch.Tensor) -> torch.Tensor:
        q = dense_crf(image, logits, self.params, method=self.method, kind="logits", device=self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return q.argmax(0)


