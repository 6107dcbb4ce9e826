"""The permutohedral lattice (Adams et al., Eurographics 2010) and the ``torch`` mean-field on it.

Splat each point to the d+1 vertices of its enclosing simplex, blur along the d+1 lattice axes
with [1/2, 1, 1/2], slice back: Gaussian filtering of [N, L] values in a few sparse products,
the lattice built once per image. The spatial kernel is an exact (4-sigma) separable Gaussian.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DeepLabEdgeError
from .params import CRFParams, gaussian_1d

__all__ = ["PermutohedralLattice", "SpatialFilter", "LatticeSetup", "lattice_features", "lattice_setup",
           "permutohedral_crf", "lattice_step_reference", "profile_lattice_crf", "CHECK_CSR_INVARIANTS"]

#: Validate every CSR matrix built here with PyTorch's invariant check (crow indices, columns in
#: range, sorted and distinct within each row: what cuSPARSE assumes). Off in use: the check costs
#: a pass over the indices (and a device sync on a GPU); the tests turn it on.
CHECK_CSR_INVARIANTS = False


class PermutohedralLattice:
    """Gaussian filtering of values at N points with d-dimensional features (unit std dev
    in feature space), by splat / blur / slice on the permutohedral lattice, vectorised.

    Built once per image (the lattice only depends on the features); :meth:`filter` is
    then a few index_add / gather passes over [N, L] values."""

    def __init__(self, features: torch.Tensor) -> None:
        if features.dim() != 2:
            raise ValueError(f"expected features [N, d], got {list(features.shape)}")
        n, d = features.shape
        self.d = d
        elevated = _elevate(features.float())
        rem0, rank = _enclosing_simplex(elevated)
        self.bary = _barycentric(elevated, rem0, rank)  # [N, d1]
        packed, key_weights = _packed_simplex_keys(rem0, rank)
        uniq, order, inverse = _unique_vertices(packed)
        self.num_points, self.num_vertices = n, uniq.numel()
        self.offset = inverse.reshape(n, d + 1)  # [N, d1]: the lattice vertex of each corner of each point's simplex
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))  # slicing weight of the blurred lattice (Adams et al.)
        self.slice, self.splat = _slice_and_splat(self.offset, self.bary, order, inverse, self.alpha,
                                                  self.num_vertices)
        axes = [_blur_axis(uniq, key_weights, axis) for axis in range(d + 1)]
        self.blur = [csr for csr, _ in axes]
        self.neighbours = torch.stack([nb for _, nb in axes])  # [d1, 2, M]
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
    """A float CSR matrix, its indices int32 where they fit: the products read a column index per value, and with
    int64 ones a blur or splat product took 20-30% longer (2-core EPYC, 513 x 513, 750k vertices,
    4 labels)."""
    if max(*size, col.numel()) < 2 ** 31:
        crow, col = crow.int(), col.int()
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the CSR @ dense product used here is stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val.float().contiguous(), size=size,
                                       check_invariants=CHECK_CSR_INVARIANTS)


# ----------------------------------------------------------------------------- building the lattice
# The steps of PermutohedralLattice.__init__, in order (Adams et al. 2010, Sec. 3.1 - 4); N points,
# d features, d1 = d + 1 lattice coordinates.

def _elevate(f: torch.Tensor) -> torch.Tensor:
    """[N, d] features -> [N, d1] points on the hyperplane x . 1 = 0 in R^{d+1}, scaled so that the
    lattice's blur is a unit-variance Gaussian in feature space."""
    n, d = f.shape
    dev = f.device
    d1 = d + 1
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
    return elevated


def _enclosing_simplex(elevated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the closest remainder-0 lattice point, the rank order of each coordinate's difference from
    it), both [N, d1]: together they name the simplex that encloses each point."""
    d1 = elevated.shape[1]
    d = d1 - 1
    v = elevated / d1
    up, down = torch.ceil(v) * d1, torch.floor(v) * d1
    rem0 = torch.where(up - elevated < elevated - down, up, down)
    total = torch.round(rem0.sum(1) / d1).long()
    diff = elevated - rem0
    # rank_i = #{j: diff_j > diff_i} + #{j < i: diff_j == diff_i} (ties to the earlier coordinate): each
    # coordinate's place in a stable descending sort of its row (a fifth of the [N, d1, d1] comparison's time)
    order = torch.argsort(diff, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d1, device=elevated.device).expand_as(order))
    rank += total[:, None]
    low, high = rank < 0, rank > d
    rank = torch.where(low, rank + d1, torch.where(high, rank - d1, rank))
    rem0 = torch.where(low, rem0 + d1, torch.where(high, rem0 - d1, rem0))
    return rem0, rank


def _barycentric(elevated: torch.Tensor, rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """[N, d1] barycentric coordinates of each point in its simplex (the splat and slice weights)."""
    n, d1 = elevated.shape
    d = d1 - 1
    bary = torch.zeros(n, d + 2, dtype=torch.float32, device=elevated.device)
    val = (elevated - rem0) / d1
    bary.scatter_add_(1, d - rank, val)
    bary.scatter_add_(1, d - rank + 1, -val)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    return bary[:, :d1].float()


def _simplex_keys(rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """[N, d1, d] lattice keys of the d1 vertices of each point's simplex (the first d coordinates
    identify a vertex)."""
    d1 = rank.shape[1]
    d = d1 - 1
    idx = torch.arange(d1, device=rank.device)
    rem = torch.arange(d1, device=rank.device)
    canonical = torch.where(idx[None, :] <= d - rem[:, None], rem[:, None], rem[:, None] - d1)  # [rem, rank]
    return rem0.long()[:, None, :d] + canonical[:, rank[:, :d]].permute(1, 0, 2)


def _field_weights(lo: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """The [d] weights packing integer fields of ``span`` values each (from ``lo``) into one int64, the last field
    most significant; refused where they need more than 62 bits."""
    bits = [max(1, int(math.ceil(math.log2(int(s) + 1)))) for s in span.tolist()]
    if sum(bits) > 62:
        raise DeepLabEdgeError(f"permutohedral lattice keys need {sum(bits)} bits; features are too spread "
                               "for this implementation (scale them down)")
    shifts = torch.tensor(np.concatenate([[0], np.cumsum(bits[:-1])]), dtype=torch.long, device=span.device)
    return torch.bitwise_left_shift(torch.ones_like(shifts), shifts)


def _pack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each key's d integers packed into one int64 ([N, d1]; fields offset to >= 0, with room for
    +-d), and the field weights ([d]: a step along a lattice axis is then one integer offset). With
    :func:`_simplex_keys`, the definition :func:`_packed_simplex_keys` computes without the [N, d1, d] keys."""
    d1 = keys.shape[1]
    lo = keys.amin((0, 1)) - d1
    weights = _field_weights(lo, keys.amax((0, 1)) + d1 - lo + 1)
    return ((keys - lo) * weights).sum(2), weights


def _packed_simplex_keys(rem0: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_pack_keys` of :func:`_simplex_keys`, equal to it, without the [N, d1, d] keys: vertex r's key is
    ``rem0`` plus a canonical offset in [-rank, d - rank] on each coordinate, so the fields' bounds and the packed
    integers are computed on [N, d] and [N, d1]."""
    n, d1 = rank.shape
    d = d1 - 1
    base, ranks = rem0.long()[:, :d], rank[:, :d]
    lo = (base - ranks).amin(0) - d1
    weights = _field_weights(lo, (base + d - ranks).amax(0) + d1 - lo + 1)
    # vertex r's offset on coordinate k is r, less d1 once r >= d + 1 - rank_k: packed, that is r * sum(weights)
    # less d1 times the weights of the coordinates already switched (a cumulative sum over r of a scatter)
    switched = torch.zeros(n, d1 + 1, dtype=torch.long, device=rank.device)
    switched.scatter_add_(1, d1 - ranks, weights.expand(n, d))
    switched = switched.cumsum(1)[:, :d1]
    r = torch.arange(d1, device=rank.device)
    packed = ((base - lo) * weights).sum(1, keepdim=True) + r * weights.sum() - d1 * switched
    return packed, weights


def _unique_vertices(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the M distinct vertex keys, sorted; the stable sort order of the N x d1 corners; each
    corner's vertex index): one sort gives the vertices and the splat order."""
    flat = packed.reshape(-1)
    sorted_keys, order = torch.sort(flat, stable=True)
    is_new = torch.ones_like(sorted_keys, dtype=torch.bool)
    is_new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    inverse = torch.empty_like(flat)
    inverse[order] = torch.cumsum(is_new, 0) - 1
    return sorted_keys[is_new], order, inverse


def _slice_and_splat(offset: torch.Tensor, bary: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor,
                     alpha: float, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The slice [N, M] and splat [M, N] maps as CSR matrices, rows built in order and the columns
    sorted within each row (once per image), each value moved with its column: slice (row = point:
    its d+1 simplex vertices, which come in remainder order), splat = its transpose (already sorted:
    the stable sort lists a vertex's points in order)."""
    n, d1 = offset.shape
    slice_cols, perm = offset.sort(1)
    slice_ = _csr(torch.arange(0, n * d1 + 1, d1, device=offset.device), slice_cols.reshape(-1),
                  bary.gather(1, perm).reshape(-1) * alpha, (n, m))
    counts = torch.bincount(inverse, minlength=m)
    splat = _csr(torch.cat([counts.new_zeros(1), counts.cumsum(0)]), order // d1, bary.reshape(-1)[order], (m, n))
    return slice_, splat


def _blur_axis(uniq: torch.Tensor, key_weights: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The blur along one lattice axis, v_i + (v_{i + e} + v_{i - e}) / 2 with e = (1, ..., 1, -d,
    1, ..., 1) in key space (missing neighbours count as 0): as a CSR [M, M] matrix, and as the
    [2, M] index of each vertex's +e / -e neighbour (M where it is missing) for the Triton blur.

    One search per axis: j is i's +e neighbour exactly when i is j's -e neighbour, so the -e index is the +e
    index inverted (a scatter). The CSR rows are laid out by counting (no mask compaction): row i holds its
    smaller-key neighbour, itself, its larger-key neighbour, the missing ones left out."""
    m, d = uniq.numel(), key_weights.numel()
    dev = uniq.device
    rows = torch.arange(m, device=dev)
    delta = torch.ones(d, dtype=torch.long, device=dev)
    if axis < d:
        delta[axis] = -d
    step = int((delta * key_weights).sum())
    target = uniq + step
    pos = torch.searchsorted(uniq, target).clamp_max(m - 1)
    plus = torch.where(uniq[pos] == target, pos, m)
    minus = torch.full((m + 1,), m, dtype=torch.long, device=dev).scatter_(0, plus, rows)[:m]  # slot m: no +e
    neighbours = torch.stack([plus, minus])  # [2, M]: +e, -e
    # the keys are sorted, so the neighbour with the smaller key (-e when the step is positive) has the smaller index
    lo, hi = (minus, plus) if step > 0 else (plus, minus)
    has_lo, has_hi = lo < m, hi < m
    crow = torch.zeros(m + 1, dtype=torch.long, device=dev)
    torch.cumsum(1 + has_lo.long() + has_hi.long(), 0, out=crow[1:])
    nnz = int(crow[-1])
    diag = crow[:-1] + has_lo  # the place of each row's own entry; slot nnz takes the missing neighbours
    cols = torch.empty(nnz + 1, dtype=torch.long, device=dev)
    cols.scatter_(0, torch.where(has_lo, crow[:-1], nnz), lo).scatter_(0, torch.where(has_hi, diag + 1, nnz), hi)
    cols[diag] = rows
    vals = torch.full((nnz + 1,), 0.5, device=dev)
    vals[diag] = 1.0
    return _csr(crow, cols[:nnz], vals[:nnz], (m, m)), neighbours


class SpatialFilter:
    """Exact (4-sigma truncated) Gaussian over positions, zero outside the image, applied to
    point-major values [H * W, L] (the lattice's layout): the values are viewed as a
    channels-last [1, L, H, W] image and filtered by two depthwise convolutions. On this
    2-core CPU that is 8 ms for 21 labels at 513 x 513, against 233 ms for the same
    separable filter on [L, 1, H, W] planes plus the two transposes per iteration (median of 10)."""

    def __init__(self, sigma: float, h: int, w: int, labels: int, device: torch.device) -> None:
        k = gaussian_1d(sigma, device)
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


@dataclass(frozen=True)
class LatticeSetup:
    """What the lattice mean-field needs of one image, built once: the bilateral kernel's
    lattice over (x / theta_alpha, y / theta_alpha, RGB / theta_beta), the symmetric normalisers
    ``(K 1)^-1/2`` of the bilateral and spatial kernels ([N, 1]) and the spatial Gaussian's 1-D
    taps. The Triton kernels take it as it is (they import nothing from this package)."""

    lattice: PermutohedralLattice
    bil_norm: torch.Tensor
    sp_norm: torch.Tensor
    gauss: torch.Tensor


def lattice_setup(image: torch.Tensor, p: CRFParams) -> LatticeSetup:
    """:class:`LatticeSetup` of a uint8 [H, W, 3] image on the CRF's device."""
    h, w = image.shape[:2]
    dev = image.device
    lattice = PermutohedralLattice(lattice_features(image, p))
    ones = torch.ones(h * w, 1, device=dev)
    bil_norm = lattice.filter(ones).clamp_min(1e-20).rsqrt()
    sp_norm = SpatialFilter(p.theta_gamma, h, w, 1, dev)(ones).clamp_min(1e-20).rsqrt()
    return LatticeSetup(lattice, bil_norm, sp_norm, gaussian_1d(p.theta_gamma, dev))


def _lattice_update(lattice: PermutohedralLattice, spatial: SpatialFilter, u: torch.Tensor, q: torch.Tensor,
                    bil_norm: torch.Tensor, sp_norm: torch.Tensor, p: CRFParams) -> torch.Tensor:
    """One mean-field update of point-major marginals ``q`` [N, L] (``u``: the unary, [N, L]), in place on the
    filter's fresh output (no [N, L] temporaries beyond the two normalised inputs)."""
    x = lattice.filter(q * bil_norm)
    x.mul_(bil_norm).mul_(p.w1)
    x.addcmul_(spatial(q * sp_norm), sp_norm, value=p.w2)
    return _softmax_rows(x.sub_(u))


def _softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Softmax over each row of [N, L], in place where it pays: PyTorch's CPU softmax over a short last dim (a
    few labels, as the CRF's label pruning leaves) runs a row at a time, 4x slower than the three vectorised
    passes here (2-core EPYC, 513 x 513, 6 labels: 35 ms against 9); from 8 labels on, its own kernel."""
    if x.shape[1] >= 8 or x.device.type != "cpu":
        return torch.softmax(x, 1)
    x.sub_(x.amax(1, keepdim=True)).exp_()
    return x.div_(x.sum(1, keepdim=True))


def permutohedral_crf(image: torch.Tensor, unary: torch.Tensor, p: CRFParams) -> torch.Tensor:
    labels, h, w = unary.shape
    st = lattice_setup(image, p)
    lattice, bil_norm, sp_norm = st.lattice, st.bil_norm, st.sp_norm
    spatial = SpatialFilter(p.theta_gamma, h, w, labels, unary.device)
    u = unary.reshape(labels, -1).t().contiguous()  # [N, L]
    q = _softmax_rows(-u)
    for _ in range(p.iterations):
        q = _lattice_update(lattice, spatial, u, q, bil_norm, sp_norm, p)
    return q.t().reshape(labels, h, w).contiguous()


def lattice_step_reference(image: torch.Tensor, unary: torch.Tensor, q: torch.Tensor, p: CRFParams) -> torch.Tensor:
    """One ``torch`` mean-field update from marginals ``q`` [L, H, W] (``image``: uint8 [H, W, 3];
    ``unary``: [L, H, W]): the reference of the Triton lattice step."""
    labels, h, w = q.shape
    st = lattice_setup(image, p)
    spatial = SpatialFilter(p.theta_gamma, h, w, labels, q.device)
    flat = lambda t: t.float().reshape(labels, -1).t().contiguous()  # noqa: E731
    return _lattice_update(st.lattice, spatial, flat(unary), flat(q), st.bil_norm, st.sp_norm, p).t().reshape(
        labels, h, w)


def profile_lattice_crf(image: torch.Tensor, unary: torch.Tensor, p: CRFParams) -> tuple[torch.Tensor, dict]:
    """:func:`permutohedral_crf` run stage by stage with a clock around each (CPU: the stages are synchronous):
    (its marginals, equal to :func:`permutohedral_crf`'s, and the milliseconds of each stage). ``build``: the
    lattice's construction steps, then the normalisers; ``iteration``: each mean-field update's parts, summed over
    the iterations (``filter:*`` are the bilateral message's splat, the d+1 blurs and the slice)."""
    build: dict[str, float] = {}
    it: dict[str, float] = {}

    def clock(table: dict[str, float], name: str, fn):
        t = time.perf_counter()
        out = fn()
        table[name] = table.get(name, 0.0) + 1e3 * (time.perf_counter() - t)
        return out

    labels, h, w = unary.shape
    feats = clock(build, "features", lambda: lattice_features(image, p))
    lat = PermutohedralLattice.__new__(PermutohedralLattice)
    n, d = feats.shape
    lat.d = d
    elevated = clock(build, "elevate", lambda: _elevate(feats.float()))
    rem0, rank = clock(build, "enclosing simplex", lambda: _enclosing_simplex(elevated))
    lat.bary = clock(build, "barycentric", lambda: _barycentric(elevated, rem0, rank))
    packed, key_weights = clock(build, "vertex keys", lambda: _packed_simplex_keys(rem0, rank))
    uniq, order, inverse = clock(build, "unique vertices (sort)", lambda: _unique_vertices(packed))
    lat.num_points, lat.num_vertices = n, uniq.numel()
    lat.offset = inverse.reshape(n, d + 1)
    lat.alpha = 1.0 / (1.0 + 2.0 ** (-d))
    lat.slice, lat.splat = clock(build, "slice/splat matrices", lambda: _slice_and_splat(
        lat.offset, lat.bary, order, inverse, lat.alpha, lat.num_vertices))
    axes = clock(build, "blur matrices", lambda: [_blur_axis(uniq, key_weights, a) for a in range(d + 1)])
    lat.blur = [csr for csr, _ in axes]
    lat.neighbours = torch.stack([nb for _, nb in axes])
    lat._buffers = {}
    ones = torch.ones(h * w, 1, device=image.device)
    bil_norm = clock(build, "normalisers", lambda: lat.filter(ones).clamp_min(1e-20).rsqrt())
    sp_norm = SpatialFilter(p.theta_gamma, h, w, 1, image.device)(ones).clamp_min(1e-20).rsqrt()
    spatial = SpatialFilter(p.theta_gamma, h, w, labels, unary.device)
    u = unary.reshape(labels, -1).t().contiguous()
    q = _softmax_rows(-u)
    for _ in range(p.iterations):  # _lattice_update, its parts clocked
        v = (q * bil_norm).contiguous()
        x, y = torch.empty(lat.num_vertices, labels), torch.empty(lat.num_vertices, labels)
        clock(it, "filter: splat", lambda: torch.addmm(x, lat.splat, v, beta=0.0, out=x))
        for blur in lat.blur:
            clock(it, "filter: blur (d+1 axes)", lambda: torch.addmm(y, blur, x, beta=0.0, out=y))
            x, y = y, x
        out = torch.empty(n, labels)
        msg = clock(it, "filter: slice", lambda: torch.addmm(out, lat.slice, x, beta=0.0, out=out))
        msg.mul_(bil_norm).mul_(p.w1)
        sp = clock(it, "spatial", lambda: spatial(q * sp_norm))
        msg.addcmul_(sp, sp_norm, value=p.w2)
        q = clock(it, "softmax", lambda: _softmax_rows(msg.sub_(u)))
    info = {"points": n, "vertices": lat.num_vertices, "labels": labels, "iterations": p.iterations,
            "build_ms": build, "iterations_ms": it, "build_total_ms": sum(build.values()),
            "iterations_total_ms": sum(it.values())}
    return q.t().reshape(labels, h, w).contiguous(), info
