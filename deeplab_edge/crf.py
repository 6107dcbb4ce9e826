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
* ``triton`` — that lattice mean-field in Triton on a GPU (``deeplab_edge.kernels.lattice``):
  per iteration one fused launch (slice, spatial message with weights computed on the fly,
  Potts, unary, softmax, splat of the new marginals) and one small launch per lattice axis
  for the blur. Same math as ``torch``, tested equal to it.
* ``window`` / ``triton-window`` — a truncated-window approximation (after ConvCRF, Teichmann &
  Cipolla 2018) computed at full resolution: the bilateral kernel summed over a dense
  5 x 5 neighbourhood plus samples every 16 pixels out to +-96 (each weighted by the 256
  pixels it stands for), the spatial kernel over a dense 5 x 5 window, weights computed on
  the fly. ``window`` is the PyTorch reference of the Triton mean-field step
  (``deeplab_edge.kernels.crf``), which fuses both message passes, the Potts transform, the
  unary and the softmax in a single launch per iteration. Cheaper per iteration than the
  lattice, but it keeps only part of pydensecrf's mIoU gain (measured in ``crf bench``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError, DeepLabEdgeError

__all__ = ["CRFParams", "CRFStage", "PRESETS", "METHODS", "DEVICE_METHODS", "TRITON_METHODS", "dense_crf",
           "PermutohedralLattice", "lattice_features", "lattice_setup", "lattice_step_reference", "unary_from"]

METHODS = ("pydensecrf", "torch", "triton", "window", "triton-window")
#: The methods that run on the CRF's device (pydensecrf always runs on the CPU).
DEVICE_METHODS = ("torch", "triton", "window", "triton-window")
#: The methods that need a CUDA GPU (or Triton's interpreter).
TRITON_METHODS = ("triton", "triton-window")


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
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"expected {name} > 0, got {getattr(self, name)}")
        if min(self.iterations, self.near_radius, self.window_radius, self.spatial_radius) < 0 or self.dilation < 1:
            raise ValueError(f"expected iterations and radii >= 0 and dilation >= 1, got {self}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = {
    # DeepLab-v2 (Chen et al. 2018), released VOC CRF configuration.
    "deeplab-v2": CRFParams(),
    # DeepLab-v1 (Chen et al., ICLR 2015) MATLAB values.
    "deeplab-v1": CRFParams(w1=4.0, theta_alpha=121.0, theta_beta=5.0, w2=3.0, theta_gamma=3.0),
}


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
        return _pydensecrf(image, unary.cpu(), params).to(dev)
    img = torch.from_numpy(np.require(image, np.uint8, ["C", "W"])).to(dev)  # writable: torch warns otherwise
    prob = torch.exp(-unary)
    keep = prob.amax((1, 2)) >= params.label_threshold
    keep[prob.sum((1, 2)).argmax()] = True
    active = unary[keep]
    if method == "torch":
        q = _permutohedral_crf(img, active, params)
    elif method == "triton":
        from .kernels.lattice import crf_lattice

        q = crf_lattice(img, active, params)
    else:
        from .kernels.crf import crf_window

        q = crf_window(img, active, params, use_triton=method == "triton-window")
    if bool(keep.all()):
        return q
    out = prob.clone()
    out[keep] = q * (1.0 - prob[~keep].sum(0))  # the left-out labels keep their (tiny) mass
    return out


# ----------------------------------------------------------------------------- pydensecrf

def _pydensecrf(image: np.ndarray, unary: torch.Tensor, p: CRFParams) -> torch.Tensor:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise DeepLabEdgeError("the pydensecrf CRF needs pydensecrf: pip install pydensecrf2 (it imports as "
                               "pydensecrf; the 2018 'pydensecrf' sdist does not build with Cython 3)") from e
    labels, h, w = unary.shape
    crf = dcrf.DenseCRF2D(w, h, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(labels, -1).numpy(), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=p.theta_gamma, compat=p.w2, kernel=dcrf.DIAG_KERNEL,
                            normalization=dcrf.NORMALIZE_SYMMETRIC)
    crf.addPairwiseBilateral(sxy=p.theta_alpha, srgb=p.theta_beta, rgbim=np.require(image, np.uint8, ["C", "W"]),
                             compat=p.w1,
                             kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC)
    q = np.array(crf.inference(p.iterations), dtype=np.float32).reshape(labels, h, w)
    return torch.from_numpy(q)


# ----------------------------------------------------------------------------- permutohedral lattice

class PermutohedralLattice:
    """Gaussian filtering of values at N points with d-dimensional features (unit std dev
    in feature space), by splat / blur / slice on the permutohedral lattice, vectorised.

    Built once per image (the lattice only depends on the features); :meth:`filter` is
    then a few index_add / gather passes over [N, L] values."""

    def __init__(self, features: torch.Tensor) -> None:
        if features.dim() != 2:
            raise ValueError(f"expected features [N, d], got {list(features.shape)}")
        n, d = features.shape
        dev = features.device
        self.d = d
        d1 = d + 1
        f = features.float()
        # Elevate onto the hyperplane x . 1 = 0 in R^{d+1}, scaled so that the lattice's
        # blur is a unit-variance Gaussian in feature space (Adams et al. 2010, Sec. 3.1).
        inv_std = math.sqrt(2.0 / 3.0) * d1
        scale = torch.tensor([inv_std / math.sqrt((i + 1) * (i + 2)) for i in range(d)], dtype=torch.float32,
                             device=dev)
        cf = f * scale  # [N, d]
        higher = torch.flip(torch.cumsum(torch.flip(cf, [1]), 1), [1])  # sum_{i >= j} cf_i
        elevated = torch.empty(n, d1, dtype=torch.float32, device=dev)
        elevated[:, 0] = higher[:, 0]
        j = torch.arange(1, d1, dtype=torch.float32, device=dev)
        sm_above = torch.cat([higher[:, 1:], torch.zeros(n, 1, dtype=torch.float32, device=dev)], 1)
        elevated[:, 1:] = sm_above - j * cf
        # Closest remainder-0 lattice point, then the rank order of the differences.
        v = elevated / d1
        up, down = torch.ceil(v) * d1, torch.floor(v) * d1
        rem0 = torch.where(up - elevated < elevated - down, up, down)
        total = torch.round(rem0.sum(1) / d1).long()
        diff = elevated - rem0
        idx = torch.arange(d1, device=dev)
        greater = diff[:, :, None] < diff[:, None, :]  # [N, i, j]: diff_i < diff_j
        later = idx[None, :] > idx[:, None]  # j > i
        rank = (greater & later).sum(2) + ((~greater.transpose(1, 2)) & ~later & (idx[None, :] != idx[:, None])).sum(2)
        rank = rank + total[:, None]
        low, high = rank < 0, rank > d
        rank = torch.where(low, rank + d1, torch.where(high, rank - d1, rank))
        rem0 = torch.where(low, rem0 + d1, torch.where(high, rem0 - d1, rem0))
        # Barycentric coordinates of the point in its simplex.
        bary = torch.zeros(n, d + 2, dtype=torch.float32, device=dev)
        val = (elevated - rem0) / d1
        bary.scatter_add_(1, d - rank, val)
        bary.scatter_add_(1, d - rank + 1, -val)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        self.bary = bary[:, :d1].float()  # [N, d1]
        # Lattice keys of the d+1 simplex vertices (first d coordinates identify a vertex).
        rem = torch.arange(d1, device=dev)
        canonical = torch.where(idx[None, :] <= d - rem[:, None], rem[:, None], rem[:, None] - d1)  # [rem, rank]
        keys = rem0.long()[:, None, :d] + canonical[:, rank[:, :d]].permute(1, 0, 2)  # [N, d1, d]
        # Pack a key's d integers into one int64 (fields offset to >= 0, with room for +-d).
        lo = keys.amin((0, 1)) - d1
        span = keys.amax((0, 1)) + d1 - lo + 1
        bits = [max(1, int(math.ceil(math.log2(int(s) + 1)))) for s in span.tolist()]
        if sum(bits) > 62:
            raise DeepLabEdgeError(f"permutohedral lattice keys need {sum(bits)} bits; features are too spread "
                                   "for this implementation (scale them down)")
        shifts = torch.tensor(np.concatenate([[0], np.cumsum(bits[:-1])]), dtype=torch.long, device=dev)
        self._weights = torch.bitwise_left_shift(torch.ones_like(shifts), shifts)
        packed = ((keys - lo) * self._weights).sum(2)  # [N, d1]
        flat = packed.reshape(-1)
        sorted_keys, order = torch.sort(flat, stable=True)  # one sort gives the vertices and the splat order
        is_new = torch.ones_like(sorted_keys, dtype=torch.bool)
        is_new[1:] = sorted_keys[1:] != sorted_keys[:-1]
        uniq = sorted_keys[is_new]
        m = uniq.numel()
        inverse = torch.empty_like(flat)
        inverse[order] = torch.cumsum(is_new, 0) - 1
        self.num_points, self.num_vertices = n, m
        offset = inverse.reshape(n, d1)
        self.offset = offset  # [N, d1]: the lattice vertex of each corner of each point's simplex
        self.alpha = alpha = 1.0 / (1.0 + 2.0 ** (-d))  # slicing weight of the blurred lattice (Adams et al.)
        # The three linear maps as CSR matrices (rows built in order, no coalescing):
        # slice [N, M] (row = point: its d+1 simplex vertices), splat = its transpose [M, N].
        self.slice = _csr(torch.arange(0, n * d1 + 1, d1, device=dev), offset.reshape(-1),
                          self.bary.reshape(-1) * alpha, (n, m))
        counts = torch.bincount(inverse, minlength=m)
        self.splat = _csr(torch.cat([counts.new_zeros(1), counts.cumsum(0)]), order // d1,
                          self.bary.reshape(-1)[order], (m, n))
        # Blur along each of the d+1 lattice axes: v_i + (v_{i + e} + v_{i - e}) / 2,
        # e = (1, ..., 1, -d, 1, ..., 1) in key space; missing neighbours count as 0.
        self.blur = []
        neighbours = []  # per axis: [2, M] index of the +e / -e neighbour, M where it is missing
        rows = torch.arange(m, device=dev)
        for axis in range(d1):
            delta = torch.ones(d, dtype=torch.long, device=dev)
            if axis < d:
                delta[axis] = -d
            step = int((delta * self._weights).sum())
            cols, found = [rows], [torch.ones(m, dtype=torch.bool, device=dev)]
            for sign in (1, -1):
                target = uniq + sign * step
                pos = torch.searchsorted(uniq, target).clamp_max(m - 1)
                cols.append(pos)
                found.append(uniq[pos] == target)
            cols_t, found_t = torch.stack(cols, 1), torch.stack(found, 1)  # [M, 3]
            neighbours.append(torch.where(found_t[:, 1:], cols_t[:, 1:], m).t())
            vals = torch.tensor([1.0, 0.5, 0.5], device=dev).expand(m, 3)
            crow = torch.cat([counts.new_zeros(1), found_t.sum(1).cumsum(0)])
            self.blur.append(_csr(crow, cols_t[found_t], vals[found_t], (m, m)))
        self.neighbours = torch.stack(neighbours)  # [d1, 2, M]
        self._buffers: dict[tuple[int, torch.device], list[torch.Tensor]] = {}

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Gaussian-filter [N, L] values: out_i ≈ sum_j exp(-|f_i - f_j|^2 / 2) values_j (up to scale).

        The lattice-side products write into two [M, L] buffers kept between calls:
        ``A @ x`` allocates, zeroes and copies a fresh result each time, and on a 2-core CPU
        that zeroing and copying took five times as long as the product itself."""
        values = values.float().contiguous()
        key = (values.shape[1], values.device)
        if key not in self._buffers:
            self._buffers[key] = [torch.empty(self.num_vertices, values.shape[1], device=values.device)
                                  for _ in range(2)]
        x, y = self._buffers[key]
        torch.addmm(x, self.splat, values, beta=0.0, out=x)
        for blur in self.blur:
            torch.addmm(y, blur, x, beta=0.0, out=y)
            x, y = y, x
        out = torch.empty(self.num_points, values.shape[1], device=values.device)
        return torch.addmm(out, self.slice, x, beta=0.0, out=out)


def _csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the CSR @ dense product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val.float().contiguous(), size=size, check_invariants=False)


def gaussian_radius(sigma: float) -> int:
    """Truncation radius of the spatial Gaussian (4 sigma: weights below exp(-8) are left out)."""
    return max(1, int(math.ceil(4 * sigma)))


def _gaussian_1d(sigma: float, device: torch.device) -> torch.Tensor:
    radius = gaussian_radius(sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    return torch.exp(-x * x / (2 * sigma * sigma))


class _SpatialFilter:
    """Exact (4-sigma truncated) Gaussian over positions, zero outside the image, applied to
    point-major values [H * W, L] (the lattice's layout): the values are viewed as a
    channels-last [1, L, H, W] image and filtered by two depthwise convolutions. On this
    2-core CPU that is 8 ms for 21 labels at 513 x 513, against 233 ms for the same
    separable filter on [L, 1, H, W] planes plus the two transposes per iteration (median of 10)."""

    def __init__(self, sigma: float, h: int, w: int, labels: int, device: torch.device) -> None:
        k = _gaussian_1d(sigma, device)
        self.h, self.w, self.labels, self.r = h, w, labels, k.numel() // 2
        self.kh = k.view(1, 1, -1, 1).expand(labels, 1, -1, 1).contiguous()
        self.kw = k.view(1, 1, 1, -1).expand(labels, 1, 1, -1).contiguous()

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        x = values.reshape(1, self.h, self.w, self.labels).permute(0, 3, 1, 2)  # channels-last view, no copy
        x = F.conv2d(x, self.kh, groups=self.labels, padding=(self.r, 0))
        x = F.conv2d(x, self.kw, groups=self.labels, padding=(0, self.r))
        return x.permute(0, 2, 3, 1).reshape(-1, self.labels)


def lattice_features(image: torch.Tensor, p: CRFParams) -> torch.Tensor:
    """The bilateral kernel's features (x / theta_alpha, y / theta_alpha, RGB / theta_beta),
    [H * W, 5], of a uint8 [H, W, 3] image."""
    h, w = image.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=torch.float32),
                            torch.arange(w, device=image.device, dtype=torch.float32), indexing="ij")
    return torch.cat([torch.stack([xs, ys], -1) / p.theta_alpha, image.float() / p.theta_beta], -1).reshape(-1, 5)


def lattice_setup(image: torch.Tensor, p: CRFParams) -> tuple[PermutohedralLattice, torch.Tensor, torch.Tensor]:
    """What the lattice mean-field needs of one image (uint8 [H, W, 3] on the CRF's device):
    the bilateral kernel's lattice over (x / theta_alpha, y / theta_alpha, RGB / theta_beta),
    and the symmetric normalisers ``(K 1)^-1/2`` of the bilateral and spatial kernels, [N, 1]."""
    h, w = image.shape[:2]
    dev = image.device
    lattice = PermutohedralLattice(lattice_features(image, p))
    ones = torch.ones(h * w, 1, device=dev)
    bil_norm = lattice.filter(ones).clamp_min(1e-20).rsqrt()
    sp_norm = _SpatialFilter(p.theta_gamma, h, w, 1, dev)(ones).clamp_min(1e-20).rsqrt()
    return lattice, bil_norm, sp_norm


def _lattice_update(lattice: PermutohedralLattice, spatial: _SpatialFilter, u: torch.Tensor, q: torch.Tensor,
                    bil_norm: torch.Tensor, sp_norm: torch.Tensor, p: CRFParams) -> torch.Tensor:
    """One mean-field update of point-major marginals ``q`` [N, L] (``u``: the unary, [N, L])."""
    bil = lattice.filter(q * bil_norm) * bil_norm
    sp = spatial(q * sp_norm) * sp_norm
    return torch.softmax(-u + p.w1 * bil + p.w2 * sp, 1)


def _permutohedral_crf(image: torch.Tensor, unary: torch.Tensor, p: CRFParams) -> torch.Tensor:
    labels, h, w = unary.shape
    lattice, bil_norm, sp_norm = lattice_setup(image, p)
    spatial = _SpatialFilter(p.theta_gamma, h, w, labels, unary.device)
    u = unary.reshape(labels, -1).t().contiguous()  # [N, L]
    q = torch.softmax(-u, 1)
    for _ in range(p.iterations):
        q = _lattice_update(lattice, spatial, u, q, bil_norm, sp_norm, p)
    return q.t().reshape(labels, h, w).contiguous()


def lattice_step_reference(image: torch.Tensor, unary: torch.Tensor, q: torch.Tensor, p: CRFParams) -> torch.Tensor:
    """One ``torch`` mean-field update from marginals ``q`` [L, H, W] (``image``: uint8 [H, W, 3];
    ``unary``: [L, H, W]): the reference of the Triton lattice step."""
    labels, h, w = q.shape
    lattice, bil_norm, sp_norm = lattice_setup(image, p)
    spatial = _SpatialFilter(p.theta_gamma, h, w, labels, q.device)
    flat = lambda t: t.float().reshape(labels, -1).t().contiguous()  # noqa: E731
    return _lattice_update(lattice, spatial, flat(unary), flat(q), bil_norm, sp_norm, p).t().reshape(labels, h, w)


class CRFStage:
    """The CRF as a segmentation post-processing stage: (image, logits) -> label map."""

    def __init__(self, method: str, params: CRFParams, device: str | torch.device = "cpu") -> None:
        if method not in METHODS:
            raise ValueError(f"expected method in {METHODS}, got {method!r}")
        self.method, self.params, self.device = method, params, torch.device(device)
        if method in TRITON_METHODS:
            from .errors import KernelUnavailableError
            from .kernels.device import triton_unavailable

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


def with_overrides(params: CRFParams, **kw: Any) -> CRFParams:
    """``params`` with the given (non-None) fields replaced."""
    return replace(params, **{k: v for k, v in kw.items() if v is not None})
