"""The permutohedral-lattice dense CRF (the ``torch`` method of :mod:`deeplab_edge.crf`) in
Triton: the same math, so the same accuracy as pydensecrf, on a GPU.

Per mean-field iteration, for pixel i with simplex corners v_k(i) and barycentric weights b_k(i):

    m_bil(i, l) = n_b(i) * alpha * sum_k b_k(i) V(v_k(i), l)          (slice)
    m_sp(i, l)  = n_s(i) * sum_{|dy|,|dx| <= r} g(dy) g(dx) n_s(j) Q(j, l),  g(t) = exp(-t^2 / 2 theta_gamma^2)
                = n_s(i) * sum_{|dy| <= r} g(dy) R(i + dy W, l),
    R(j, l)     = sum_{|dx| <= r} g(dx) n_s(j + dx) Q(j + dx, l)             (the Gaussian is separable)
    Q'(i, l)    = softmax_l(-U(i, l) + w1 m_bil(i, l) + w2 m_sp(i, l))
    S(v_k(i), l) += b_k(i) n_b(i) Q'(i, l)                           (splat, for the next iteration)

then ``V = blur_d(... blur_0(S))`` with ``blur_a(x)_m = x_m + (x_{m + e_a} + x_{m - e_a}) / 2``.

* ``_lattice_step_kernel`` — one launch fuses the slice, the spatial message, the Potts
  compatibility, the unary, the softmax and the splat of the new marginals (atomic adds into
  the lattice). The spatial message is the exact Gaussian over r = ``ceil(4 theta_gamma)``
  (the same 1-D table the PyTorch filter convolves with), either as the whole (2r + 1)^2
  window in the step, or, where the window is large (:func:`separable_spatial`: DeepLab-v1's
  625 taps, not DeepLab-v2's 81), as its column pass (2r + 1 taps) over R;
* ``_spatial_rows_kernel`` — R, the row pass of the separable route (2r + 1 taps).
* ``_lattice_blur_kernel`` — one launch per lattice axis (d + 1 = 6 for the 5-D
  position + colour features): each axis reads the whole previous one, so they cannot
  share a launch without a grid-wide barrier.

The lattice itself (vertices, simplex corners, barycentric weights, blur neighbours) is
built once per image in PyTorch (:class:`deeplab_edge.crf.PermutohedralLattice`, on the
same device); so are the normalisers. The splat's atomic adds sum in a nondeterministic
order on a GPU, so two runs can differ in the last bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .device import bucket, check_runnable, label_pad, launch
from .indexing import check_pixels, plane_offsets, row_offsets

__all__ = ["crf_lattice", "lattice_step", "step_configs", "blur_configs", "INTERPRET_STEP", "INTERPRET_BLUR"]


def step_configs() -> list[triton.Config]:
    """Pixels per program of the fused step (labels padded to a power of two in-register)."""
    return [triton.Config({"BLOCK": b}, num_warps=w, num_stages=2) for b, w in [(64, 2), (64, 4), (128, 4), (256, 8)]]


def blur_configs() -> list[triton.Config]:
    """Lattice vertices per program of a blur pass."""
    return [triton.Config({"BLOCK": b}, num_warps=w, num_stages=2) for b, w in [(32, 2), (64, 4), (128, 8)]]


#: Under ``TRITON_INTERPRET=1``: few, large programs keep the CPU tests fast.
INTERPRET_STEP = {"BLOCK": 1024}
INTERPRET_BLUR = {"BLOCK": 1024}


@triton.jit
def _lattice_step_kernel(
    q_out_ptr,  # [L, N] fp32: the new marginals
    q_ptr,  # [L, N] fp32: the current marginals (2-D spatial window)
    rows_ptr,  # [L, N] fp32: R, their row pass (``_spatial_rows_kernel``; read when SEPARABLE)
    unary_ptr,  # [L, N] fp32: -log P
    vert_ptr,  # [M + 1, L] fp32: blurred lattice values of the current marginals (row M is zero)
    splat_ptr,  # [M + 1, L] fp32, zeroed: the new marginals are splatted here (atomic adds)
    corner_ptr,  # [D1, N] int32: lattice vertex of each simplex corner
    bary_ptr,  # [D1, N] fp32: barycentric weight of each corner
    norm_b_ptr, norm_s_ptr,  # [N] fp32: symmetric normalisers of the bilateral and spatial kernels
    gauss_ptr,  # [2 R + 1] fp32: exp(-t^2 / 2 theta_gamma^2), t = -R..R (the spatial weight is a product)
    H, W, L, R,  # R: spatial window radius
    w1_alpha, w2,  # w1 * alpha (slicing weight), w2
    HW_BUCKET,  # bucket(H * W): the autotuning key (unused in the body)
    D1: tl.constexpr, L_PAD: tl.constexpr, BLOCK: tl.constexpr, MESSAGES: tl.constexpr, SPLAT: tl.constexpr,
    SEPARABLE: tl.constexpr,
):
    hw = H * W
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hw
    lab = tl.arange(0, L_PAD)
    mask_l = lab < L
    m2 = mask_l[:, None] & mask[None, :]
    # int64 offsets wherever a product can pass 2^31: label planes (L x H x W) and lattice rows
    # (vertices x L); tiles are [labels, pixels], pixels contiguous
    plane = plane_offsets(L_PAD, hw)
    nb = tl.load(norm_b_ptr + offs, mask=mask, other=0.0)
    # One accumulator for -U + w1 m_bil + w2 m_sp: the per-pixel factors are folded into the weights.
    e = -tl.load(unary_ptr + plane + offs[None, :], mask=m2, other=0.0)
    if MESSAGES:
        scale_b = w1_alpha * nb
        for k in range(D1):
            v = row_offsets(tl.load(corner_ptr + k * hw + offs, mask=mask, other=0), L)
            b = scale_b * tl.load(bary_ptr + k * hw + offs, mask=mask, other=0.0)
            e += b[None, :] * tl.load(vert_ptr + v[None, :] + lab[:, None], mask=m2, other=0.0)
        y = offs // W
        scale_s = w2 * tl.load(norm_s_ptr + offs, mask=mask, other=0.0)
        if SEPARABLE:
            for dy in range(-R, R + 1):  # the column pass over the rows' sums
                yy = y + dy
                inside = mask & (yy >= 0) & (yy < H)
                k_sp = tl.where(inside, tl.load(gauss_ptr + dy + R) * scale_s, 0.0)
                e += k_sp[None, :] * tl.load(rows_ptr + plane + (offs + dy * W)[None, :],
                                             mask=mask_l[:, None] & inside[None, :], other=0.0)
        else:
            x = offs % W
            for dy in range(-R, R + 1):  # the whole (2R + 1)^2 window
                yy = y + dy
                row_in = mask & (yy >= 0) & (yy < H)
                g_y = tl.load(gauss_ptr + dy + R)
                for dx in range(-R, R + 1):
                    xx = x + dx
                    inside = row_in & (xx >= 0) & (xx < W)
                    j = yy * W + xx
                    k_sp = (g_y * tl.load(gauss_ptr + dx + R)) * scale_s
                    k_sp = tl.where(inside, k_sp * tl.load(norm_s_ptr + j, mask=inside, other=0.0), 0.0)
                    e += k_sp[None, :] * tl.load(q_ptr + plane + j[None, :], mask=mask_l[:, None] & inside[None, :],
                                                 other=0.0)
    e = tl.where(mask_l[:, None], e, float("-inf"))
    e = e - tl.max(e, 0)[None, :]
    p = tl.exp(e)
    p = p / tl.sum(p, 0)[None, :]
    tl.store(q_out_ptr + plane + offs[None, :], p, mask=m2)
    if SPLAT:
        pn = p * nb[None, :]
        for k in range(D1):
            v = row_offsets(tl.load(corner_ptr + k * hw + offs, mask=mask, other=0), L)
            b = tl.load(bary_ptr + k * hw + offs, mask=mask, other=0.0)
            tl.atomic_add(splat_ptr + v[None, :] + lab[:, None], b[None, :] * pn, mask=m2, sem="relaxed")


@triton.jit
def _spatial_rows_kernel(
    rows_ptr,  # [L, N] fp32 out: R(j, l) = sum_dx g(dx) n_s(j + dx) Q(j + dx, l), within the row
    q_ptr,  # [L, N] fp32: the current marginals
    norm_s_ptr, gauss_ptr,  # [N], [2 R + 1] fp32
    H, W, L, R,
    HW_BUCKET,  # bucket(H * W): the autotuning key (unused in the body)
    L_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    hw = H * W
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hw
    lab = tl.arange(0, L_PAD)
    mask_l = lab < L
    plane = plane_offsets(L_PAD, hw)
    x = offs % W
    acc = tl.zeros((L_PAD, BLOCK), dtype=tl.float32)
    for dx in range(-R, R + 1):
        xx = x + dx
        inside = mask & (xx >= 0) & (xx < W)
        j = offs + dx
        k = tl.load(gauss_ptr + dx + R) * tl.load(norm_s_ptr + j, mask=inside, other=0.0)
        acc += k[None, :] * tl.load(q_ptr + plane + j[None, :], mask=mask_l[:, None] & inside[None, :], other=0.0)
    tl.store(rows_ptr + plane + offs[None, :], acc, mask=mask_l[:, None] & mask[None, :])


@triton.jit
def _lattice_blur_kernel(
    out_ptr, in_ptr,  # [M + 1, L] fp32 (row M is zero in both and never written)
    plus_ptr, minus_ptr,  # [M] int32: neighbour along +e_a / -e_a, M where missing
    M, L,
    M_BUCKET,  # bucket(M): the autotuning key (unused in the body)
    L_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < M
    lab = tl.arange(0, L_PAD)
    m2 = mask[:, None] & (lab < L)[None, :]
    up = row_offsets(tl.load(plus_ptr + rows, mask=mask, other=0), L)
    down = row_offsets(tl.load(minus_ptr + rows, mask=mask, other=0), L)
    here = row_offsets(rows, L)[:, None] + lab[None, :]  # vertices x L can pass 2^31
    c = tl.load(in_ptr + here, mask=m2, other=0.0)
    a = tl.load(in_ptr + up[:, None] + lab[None, :], mask=m2, other=0.0)
    b = tl.load(in_ptr + down[:, None] + lab[None, :], mask=m2, other=0.0)
    tl.store(out_ptr + here, c + 0.5 * (a + b), mask=m2)


# Keyed on size buckets, not on H, W and the vertex count M (which differs for every image): every
# new key costs configs x (warm-up + repetitions) of tuning.
_step_autotuned = triton.autotune(configs=step_configs(),
                                  key=["HW_BUCKET", "L_PAD", "R", "MESSAGES", "SPLAT", "SEPARABLE"],
                                  reset_to_zero=["splat_ptr"])(_lattice_step_kernel)
_blur_autotuned = triton.autotune(configs=blur_configs(), key=["M_BUCKET", "L_PAD"])(_lattice_blur_kernel)
_rows_autotuned = triton.autotune(configs=step_configs(), key=["HW_BUCKET", "L_PAD", "R"])(_spatial_rows_kernel)


# ----------------------------------------------------------------------------- host side

#: Ridge point (FLOP per DRAM byte, fp32 CUDA cores) of the targets, rounded: H100 SXM ~67 TFLOP/s
#: over 3.35 TB/s = 20; Jetson AGX Orin ~5.3 TFLOP/s over 204 GB/s = 26. Datasheet figures.
RIDGE_FLOP_PER_BYTE = 24


def separable_spatial(radius: int, labels: int) -> bool:
    """Whether the spatial message should take the separable route (a row pass, then 2R + 1 taps
    in the step) rather than the (2R + 1)^2 window in the step. The row pass costs one more write
    and read of the [L, N] marginals in DRAM (8 L + 4 bytes per pixel); it saves
    ((2R + 1)^2 - 2 (2R + 1)) taps per pixel, each 2 + 2 L FLOPs and a gather of L values through
    L1/L2 (on-chip traffic that a DRAM roofline does not see). Separable where the saved work per
    extra DRAM byte exceeds the ridge point: DeepLab-v1's theta_gamma = 3 (R = 12, 625 taps;
    147 FLOP/B with 21 labels), not DeepLab-v2's theta_gamma = 1 (R = 4, 81 taps; 16 FLOP/B).
    A heuristic from datasheet figures, to be checked by timing both on a GPU."""
    side = 2 * radius + 1
    saved = (side * side - 2 * side) * (2 + 2 * labels)
    return saved > RIDGE_FLOP_PER_BYTE * (8 * labels + 4)


class _Launcher:
    """The lattice of one image in the layouts the kernels read, and their launches.

    ``setup``: what :func:`deeplab_edge.crf.lattice_setup` builds for the image (the lattice with
    ``offset``, ``bary``, ``neighbours``, ``num_vertices`` and ``alpha``; the normalisers
    ``bil_norm`` and ``sp_norm``; the spatial Gaussian's taps ``gauss``); ``params``: the CRF
    weights ``w1`` and ``w2``. Nothing here imports the CRF package."""

    def __init__(self, setup, h: int, w: int, labels: int, params) -> None:
        lattice = setup.lattice
        if labels > 256:
            raise ValueError(f"expected at most 256 labels, got {labels}")
        self.h, self.w, self.labels, self.m = h, w, labels, lattice.num_vertices
        self.d1 = lattice.offset.shape[1]
        self.corner = lattice.offset.t().to(torch.int32).contiguous()  # [D1, N]
        self.bary = lattice.bary.t().float().contiguous()  # [D1, N]
        self.neighbours = lattice.neighbours.to(torch.int32).contiguous()  # [D1, 2, M]
        self.nb = setup.bil_norm.reshape(-1).float().contiguous()
        self.ns = setup.sp_norm.reshape(-1).float().contiguous()
        self.gauss = setup.gauss.float().contiguous()
        self.scalars = (h, w, labels, self.gauss.numel() // 2, float(params.w1 * lattice.alpha), float(params.w2),
                        bucket(h * w))
        self.l_pad = label_pad(labels)
        self.device = self.corner.device
        self.separable = separable_spatial(self.gauss.numel() // 2, labels)

    def _pixel_grid(self, meta) -> tuple[int]:
        """One program per ``BLOCK`` pixels (the step and the row pass)."""
        return (triton.cdiv(self.h * self.w, meta["BLOCK"]),)

    def _vertex_grid(self, meta) -> tuple[int]:
        """One program per ``BLOCK`` lattice vertices (a blur pass)."""
        return (triton.cdiv(self.m, meta["BLOCK"]),)

    def rows(self, out, q) -> torch.Tensor:
        """The spatial message's row pass of ``q`` into ``out``."""
        h, w, labels, r = self.scalars[:4]
        args = (out, q, self.ns, self.gauss, h, w, labels, r, self.scalars[-1])
        launch(_spatial_rows_kernel, _rows_autotuned, self._pixel_grid, self.device, *args, L_PAD=self.l_pad,
               interpret=INTERPRET_STEP)
        return out

    def step(self, q_out, q, rows, unary, vert, splat, messages: bool, do_splat: bool) -> None:
        """The fused step from marginals ``q``; ``rows``: their row pass (read when ``self.separable``)."""
        args = (q_out, q, rows, unary, vert, splat, self.corner, self.bary, self.nb, self.ns, self.gauss,
                *self.scalars)
        const = {"D1": self.d1, "L_PAD": self.l_pad, "MESSAGES": messages, "SPLAT": do_splat,
                 "SEPARABLE": self.separable}
        launch(_lattice_step_kernel, _step_autotuned, self._pixel_grid, self.device, *args, **const,
               interpret=INTERPRET_STEP)

    def blur(self, splat, a, b) -> torch.Tensor:
        """Blur ``splat`` along every lattice axis, ping-ponging between ``a`` and ``b``; returns the result."""
        src, dst = splat, a
        for axis in range(self.d1):
            args = (dst, src, self.neighbours[axis, 0], self.neighbours[axis, 1], self.m, self.labels, bucket(self.m))
            launch(_lattice_blur_kernel, _blur_autotuned, self._vertex_grid, self.device, *args, L_PAD=self.l_pad,
                   interpret=INTERPRET_BLUR)
            src, dst = dst, (b if dst is a else a)
        return src


def lattice_step(setup, unary: torch.Tensor, q: torch.Tensor, params) -> torch.Tensor:
    """One mean-field update from marginals ``q`` [L, H, W] (splat, blur, then the fused
    step) on the image's ``setup`` (see :class:`_Launcher`). For testing against PyTorch."""
    check_runnable(q)
    labels, h, w = q.shape
    check_pixels(h, w, setup.lattice.offset.shape[1], "lattice_step")
    run = _Launcher(setup, h, w, labels, params)
    q, unary = q.float().reshape(labels, -1).contiguous(), unary.float().reshape(labels, -1).contiguous()
    bufs = [torch.zeros(run.m + 1, labels, device=q.device) for _ in range(3)]
    # the splat of q alone: a step without messages on -log q reproduces q and splats it
    seed = torch.empty_like(q)
    run.step(seed, q, seed, -torch.log(q.clamp_min(1e-30)), bufs[0], bufs[0], messages=False, do_splat=True)
    vert = run.blur(bufs[0], bufs[1], bufs[2])
    out = torch.empty_like(q)
    rows = run.rows(torch.empty_like(q), q) if run.separable else q
    run.step(out, q, rows, unary, vert, bufs[0], messages=True, do_splat=False)
    return out.reshape(labels, h, w)


def crf_lattice(setup, unary: torch.Tensor, params) -> torch.Tensor:
    """All ``params.iterations`` of the lattice mean-field on the image's ``setup`` (see
    :class:`_Launcher`); ``unary``: [L, H, W] -log P, on one CUDA device (or CPU tensors under
    ``TRITON_INTERPRET=1``)."""
    check_runnable(unary)
    labels, h, w = unary.shape
    check_pixels(h, w, setup.lattice.offset.shape[1], "crf_lattice")  # d + 1 corner planes
    run = _Launcher(setup, h, w, labels, params)
    u = unary.float().reshape(labels, -1).contiguous()
    q, spare = torch.empty_like(u), torch.empty_like(u)
    rows = torch.empty_like(u) if run.separable else q
    splat, a, b = (torch.zeros(run.m + 1, labels, device=u.device) for _ in range(3))
    iters = params.iterations
    run.step(q, q, q, u, splat, splat, messages=False, do_splat=iters > 0)  # Q0 = softmax(-U), splatted
    for t in range(iters):
        vert = run.blur(splat, a, b)
        if run.separable:
            run.rows(rows, q)
        if t + 1 < iters:
            splat.zero_()
        run.step(spare, q, rows, u, vert, splat, messages=True, do_splat=t + 1 < iters)
        q, spare = spare, q
    return q.reshape(labels, h, w)
