"""Dense-CRF mean-field step in one Triton launch: bilateral + spatial message passing with
weights computed on the fly from colour and position (never materialised), the Potts
compatibility, the unary and the softmax — beside its PyTorch reference.

The math (``window`` method of :mod:`deeplab_edge.crf`): for pixel i,

    m_bil(i, l) = n_b(i) * sum_{d in B} k_b(i, i+d) n_b(i+d) Q(i+d, l)
    m_sp(i, l)  = n_s(i) * sum_{d in S} k_s(i, i+d) n_s(i+d) Q(i+d, l)
    Q'(i, l)    = softmax_l(-U(i, l) + w1 m_bil(i, l) + w2 m_sp(i, l))

with B every offset within ``near_radius`` plus every ``dilation``-th offset out to
``window_radius * dilation`` (each far sample weighted by the ``dilation^2`` pixels it stands
for), S the dense ``(2 r_s + 1)^2`` offsets, ``k_b = exp(-|d|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)``,
``k_s = exp(-|d|^2 / 2 theta_gamma^2)``, zero outside the image, and ``n = (sum_d k)^-1/2``
the symmetric normalisation (computed once per image). Offsets that reach H or W are
dropped on the host; the tap tables go to the device once per window, image size and device
(cached), not in every iteration. Images are [3, H, W] (channels first) throughout.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
import triton
import triton.language as tl

from .device import bucket, check_runnable, label_pad, launch
from .indexing import check_pixels, plane_offsets

__all__ = ["crf_step", "crf_step_reference", "crf_window", "window_norms", "window_norms_triton", "window_taps",
           "autotune_configs",
           "INTERPRET_CONFIG"]


def autotune_configs() -> list[triton.Config]:
    """GPU configs (pixels per program; labels are padded to a power of two in-register)."""
    return [triton.Config({"BLOCK": b}, num_warps=w, num_stages=s)
            for b, w, s in [(64, 2, 2), (64, 4, 2), (128, 4, 2), (256, 8, 2)]]


#: Pixels per program under ``TRITON_INTERPRET=1`` (few programs keep CPU tests fast).
INTERPRET_CONFIG = {"BLOCK": 1024}


@triton.jit
def _pixels(image_ptr, hw, W, BLOCK: tl.constexpr):
    """This program's BLOCK flat pixel indices, their mask, row, column and RGB values."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hw
    r = tl.load(image_ptr + offs, mask=mask, other=0.0)
    g = tl.load(image_ptr + hw + offs, mask=mask, other=0.0)
    b = tl.load(image_ptr + 2 * hw + offs, mask=mask, other=0.0)
    return offs, mask, offs // W, offs % W, r, g, b


@triton.jit
def _neighbour(y, x, mask, H, W, dy_ptr, dx_ptr, t):
    """Flat index of pixel (y + dy_t, x + dx_t), whether it is inside the image, and |d|^2."""
    dy = tl.load(dy_ptr + t)
    dx = tl.load(dx_ptr + t)
    yy = y + dy
    xx = x + dx
    inside = mask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    return yy * W + xx, inside, (dy * dy + dx * dx).to(tl.float32)


@triton.jit
def _bilateral(image_ptr, hw, j, inside, r_i, g_i, b_i, d2, inv2_alpha, inv2_beta):
    """exp(-|d|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2) (0 outside the image)."""
    dr = r_i - tl.load(image_ptr + j, mask=inside, other=0.0)
    dg = g_i - tl.load(image_ptr + hw + j, mask=inside, other=0.0)
    db = b_i - tl.load(image_ptr + 2 * hw + j, mask=inside, other=0.0)
    return tl.where(inside, tl.exp(-d2 * inv2_alpha - (dr * dr + dg * dg + db * db) * inv2_beta), 0.0)


@triton.jit
def _crf_step_kernel(
    q_out_ptr,  # [L, H, W] fp32
    q_ptr,  # [L, H, W] fp32, current marginals
    unary_ptr,  # [L, H, W] fp32, -log P
    image_ptr,  # [3, H, W] fp32, RGB 0-255
    norm_b_ptr, norm_s_ptr,  # [H, W] fp32
    bil_dy_ptr, bil_dx_ptr, bil_w_ptr, n_bil,  # int32 offsets and fp32 sample weights of the bilateral window
    sp_dy_ptr, sp_dx_ptr, n_sp,  # int32 offsets of the spatial window
    H, W, L,
    w1, w2, inv2_alpha, inv2_beta, inv2_gamma,  # 1 / (2 theta^2)
    HW_BUCKET,  # bucket(H * W): the autotuning key (unused in the body)
    L_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    hw = H * W
    offs, mask, y, x, r_i, g_i, b_i = _pixels(image_ptr, hw, W, BLOCK)
    lab = tl.arange(0, L_PAD)
    mask_l = lab < L
    plane = plane_offsets(L_PAD, hw)  # int64: tiles are [labels, pixels], pixels contiguous

    # Both messages go to one accumulator: the per-pixel factors w * n(i) are folded into the weights.
    scale_b = w1 * tl.load(norm_b_ptr + offs, mask=mask, other=0.0)
    scale_s = w2 * tl.load(norm_s_ptr + offs, mask=mask, other=0.0)

    acc = tl.zeros((L_PAD, BLOCK), dtype=tl.float32)
    for t in range(0, n_bil):
        j, inside, d2 = _neighbour(y, x, mask, H, W, bil_dy_ptr, bil_dx_ptr, t)
        k = tl.load(bil_w_ptr + t) * _bilateral(image_ptr, hw, j, inside, r_i, g_i, b_i, d2, inv2_alpha, inv2_beta)
        k = k * scale_b * tl.load(norm_b_ptr + j, mask=inside, other=0.0)
        qj = tl.load(q_ptr + plane + j[None, :], mask=mask_l[:, None] & inside[None, :], other=0.0)
        acc += k[None, :] * qj

    for t in range(0, n_sp):
        j, inside, d2 = _neighbour(y, x, mask, H, W, sp_dy_ptr, sp_dx_ptr, t)
        k = tl.where(inside, tl.exp(-d2 * inv2_gamma) * scale_s * tl.load(norm_s_ptr + j, mask=inside, other=0.0), 0.0)
        qj = tl.load(q_ptr + plane + j[None, :], mask=mask_l[:, None] & inside[None, :], other=0.0)
        acc += k[None, :] * qj

    m2 = mask_l[:, None] & mask[None, :]
    u = tl.load(unary_ptr + plane + offs[None, :], mask=m2, other=0.0)
    e = acc - u
    e = tl.where(mask_l[:, None], e, float("-inf"))
    e = e - tl.max(e, 0)[None, :]
    p = tl.exp(e)
    p = p / tl.sum(p, 0)[None, :]
    tl.store(q_out_ptr + plane + offs[None, :], p, mask=m2)


@triton.jit
def _crf_norm_kernel(
    norm_b_ptr, norm_s_ptr,  # [H, W] fp32 out: (sum_d k)^-1/2 of each window
    image_ptr,  # [3, H, W] fp32
    bil_dy_ptr, bil_dx_ptr, bil_w_ptr, n_bil, sp_dy_ptr, sp_dx_ptr, n_sp,
    H, W, inv2_alpha, inv2_beta, inv2_gamma,
    HW_BUCKET,  # bucket(H * W): the autotuning key (unused in the body)
    BLOCK: tl.constexpr,
):
    hw = H * W
    offs, mask, y, x, r_i, g_i, b_i = _pixels(image_ptr, hw, W, BLOCK)
    sum_b = tl.zeros((BLOCK,), dtype=tl.float32)
    for t in range(0, n_bil):
        j, inside, d2 = _neighbour(y, x, mask, H, W, bil_dy_ptr, bil_dx_ptr, t)
        sum_b += tl.load(bil_w_ptr + t) * _bilateral(image_ptr, hw, j, inside, r_i, g_i, b_i, d2, inv2_alpha,
                                                     inv2_beta)
    sum_s = tl.zeros((BLOCK,), dtype=tl.float32)
    for t in range(0, n_sp):
        j, inside, d2 = _neighbour(y, x, mask, H, W, sp_dy_ptr, sp_dx_ptr, t)
        sum_s += tl.where(inside, tl.exp(-d2 * inv2_gamma), 0.0)
    tl.store(norm_b_ptr + offs, 1.0 / tl.sqrt(tl.maximum(sum_b, 1e-20)), mask=mask)
    tl.store(norm_s_ptr + offs, 1.0 / tl.sqrt(tl.maximum(sum_s, 1e-20)), mask=mask)


def norm_configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in [(128, 4), (256, 4), (512, 8)]]


# Keyed on size buckets, not H and W: every new key costs configs x (warm-up + repetitions) of tuning.
# The tap counts only change for images smaller than the window.
_crf_norm_autotuned = triton.autotune(configs=norm_configs(), key=["HW_BUCKET", "n_bil", "n_sp"])(_crf_norm_kernel)

_crf_step_autotuned = triton.autotune(configs=autotune_configs(), key=["HW_BUCKET", "L_PAD", "n_bil", "n_sp"])(
    _crf_step_kernel)


# ----------------------------------------------------------------------------- host side

@functools.lru_cache(maxsize=32)
def _taps(near: int, radius: int, dilation: int, height: int, width: int) -> tuple[tuple[float, ...], ...]:
    """(dy, dx, weight): every offset within ``near`` (weight 1), then every ``dilation``-th
    offset out to ``radius * dilation`` outside that square, weighted by the ``dilation^2``
    pixels each sample stands for."""
    taps = [(a, b, 1.0) for a in range(-near, near + 1) for b in range(-near, near + 1)]
    taps += [(a * dilation, b * dilation, float(dilation * dilation)) for a in range(-radius, radius + 1)
             for b in range(-radius, radius + 1) if max(abs(a), abs(b)) * dilation > near]
    kept = [t for t in taps if abs(t[0]) < height and abs(t[1]) < width]
    return tuple(tuple(t[i] for t in kept) for i in range(3))


def window_taps(params, height: int, width: int) -> dict[str, tuple[tuple[float, ...], ...]]:
    """(dy, dx, weight) of the bilateral (dense near + sampled far) and spatial (dense) windows
    inside an H x W image."""
    return {"bilateral": _taps(params.near_radius, params.window_radius, params.dilation, height, width),
            "spatial": _taps(params.spatial_radius, 0, 1, height, width)}


def _overlap(n: int, d: int) -> tuple[slice, slice]:
    """(destination i, source i + d) index ranges along an axis of length n where both are inside."""
    return slice(max(-d, 0), n + min(-d, 0)), slice(max(d, 0), n + min(d, 0))


def _messages(image: torch.Tensor, values: torch.Tensor, taps, inv2_pos: float, inv2_col: float | None
              ) -> torch.Tensor:
    """sum over offsets d of k(i, i + d) values(i + d), k computed from position (and colour);
    neighbours outside the image contribute nothing. Each tap adds into the overlap of the image
    with its shifted copy, on views: no zero-padded copy per tap."""
    h, w = image.shape[-2:]
    out = torch.zeros_like(values)
    for dy, dx, weight in zip(*taps):
        dy, dx = int(dy), int(dx)
        if abs(dy) >= h or abs(dx) >= w:
            continue
        (yd, ys), (xd, xs) = _overlap(h, dy), _overlap(w, dx)
        k = weight * math.exp(-(dy * dy + dx * dx) * inv2_pos)
        if inv2_col is not None:
            diff = image[..., yd, xd] - image[..., ys, xs]
            out[..., yd, xd] += (k * torch.exp(-(diff * diff).sum(0, keepdim=True) * inv2_col)) * values[..., ys, xs]
        else:
            out[..., yd, xd] += k * values[..., ys, xs]
    return out


def _check_image(image: torch.Tensor) -> None:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected image [3, H, W], got {list(image.shape)}")


def window_norms(image: torch.Tensor, params) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric normalisers ``(sum_d k)^-1/2`` of the bilateral and spatial windows, [H, W];
    ``image``: [3, H, W] RGB 0-255 (channels first, whatever its width)."""
    _check_image(image)
    img = image.float()
    h, w = img.shape[-2:]
    taps = window_taps(params, h, w)
    ones = torch.ones(1, h, w, device=img.device)
    nb = _messages(img, ones, taps["bilateral"], 0.5 / params.theta_alpha ** 2, 0.5 / params.theta_beta ** 2)
    ns = _messages(img, ones, taps["spatial"], 0.5 / params.theta_gamma ** 2, None)
    return nb[0].clamp_min(1e-20).rsqrt(), ns[0].clamp_min(1e-20).rsqrt()


@functools.lru_cache(maxsize=32)
def _device_taps(near: int, radius: int, dilation: int, spatial: int, height: int, width: int,
                 dev: torch.device) -> tuple[torch.Tensor, ...]:
    """The tap tables on ``dev``, built (one host-to-device copy each) once per key."""
    (bdy, bdx, bw), (sdy, sdx, _) = _taps(near, radius, dilation, height, width), _taps(spatial, 0, 1, height, width)
    ints = [torch.tensor(v, dtype=torch.int32, device=dev) for v in (bdy, bdx, sdy, sdx)]
    return ints[0], ints[1], torch.tensor(bw, dtype=torch.float32, device=dev), ints[2], ints[3]


def _tap_tensors(params, h: int, w: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """Bilateral dy, dx, weight and spatial dy, dx on ``dev``, cached as the ASPP tap tables are:
    per (window parameters, device) and image size, clamped to the window's reach (beyond it
    every tap is kept, so all larger images share one entry)."""
    reach = max(params.near_radius, params.window_radius * params.dilation, params.spatial_radius) + 1
    return _device_taps(params.near_radius, params.window_radius, params.dilation, params.spatial_radius,
                        min(h, reach), min(w, reach), torch.device(dev))


def _pixel_grid(pixels: int) -> Callable[[dict[str, Any]], tuple[int]]:
    """The launch grid of both kernels: one program per ``BLOCK`` pixels."""
    return lambda meta: (triton.cdiv(pixels, meta["BLOCK"]),)


def window_norms_triton(image: torch.Tensor, params) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`window_norms` in one Triton launch; ``image``: [3, H, W] float."""
    _check_image(image)
    check_runnable(image)
    h, w = image.shape[-2:]
    check_pixels(h, w, 3, "window_norms_triton")
    img = image.float().contiguous()
    bdy, bdx, bw, sdy, sdx = _tap_tensors(params, h, w, img.device)
    nb = torch.empty(h, w, device=img.device)
    ns = torch.empty_like(nb)
    args = (nb, ns, img, bdy, bdx, bw, bdy.numel(), sdy, sdx, sdy.numel(), h, w, 0.5 / params.theta_alpha ** 2,
            0.5 / params.theta_beta ** 2, 0.5 / params.theta_gamma ** 2, bucket(h * w))
    launch(_crf_norm_kernel, _crf_norm_autotuned, _pixel_grid(h * w), img.device, *args, interpret=INTERPRET_CONFIG)
    return nb, ns


def crf_step_reference(image: torch.Tensor, unary: torch.Tensor, q: torch.Tensor, norm_b: torch.Tensor,
                       norm_s: torch.Tensor, params) -> torch.Tensor:
    """One mean-field update in PyTorch. ``image``: [3, H, W] float RGB 0-255; ``unary``,
    ``q``: [L, H, W]; norms: [H, W]."""
    h, w = q.shape[-2:]
    taps = window_taps(params, h, w)
    bil = _messages(image, q * norm_b, taps["bilateral"], 0.5 / params.theta_alpha ** 2,
                    0.5 / params.theta_beta ** 2) * norm_b
    sp = _messages(image, q * norm_s, taps["spatial"], 0.5 / params.theta_gamma ** 2, None) * norm_s
    return torch.softmax(-unary + params.w1 * bil + params.w2 * sp, 0)


def crf_step(image: torch.Tensor, unary: torch.Tensor, q: torch.Tensor, norm_b: torch.Tensor, norm_s: torch.Tensor,
             params, out: torch.Tensor | None = None) -> torch.Tensor:
    """The same update as :func:`crf_step_reference`, in one Triton launch (fp32)."""
    if q.dim() != 3 or unary.shape != q.shape or image.shape != (3, *q.shape[1:]):
        raise ValueError(f"expected image [3, H, W], unary and q [L, H, W]; got {list(image.shape)}, "
                         f"{list(unary.shape)}, {list(q.shape)}")
    check_runnable(q)
    labels, h, w = q.shape
    if labels > 256:
        raise ValueError(f"expected at most 256 labels, got {labels}")
    check_pixels(h, w, 3, "crf_step")
    image, unary, q = (t.float().contiguous() for t in (image, unary, q))
    norm_b, norm_s = norm_b.float().contiguous(), norm_s.float().contiguous()
    dev = q.device
    bdy, bdx, bw, sdy, sdx = _tap_tensors(params, h, w, dev)
    out = torch.empty_like(q) if out is None else out
    args = (out, q, unary, image, norm_b, norm_s, bdy, bdx, bw, bdy.numel(), sdy, sdx, sdy.numel(), h, w, labels,
            float(params.w1), float(params.w2), 0.5 / params.theta_alpha ** 2, 0.5 / params.theta_beta ** 2,
            0.5 / params.theta_gamma ** 2, bucket(h * w))
    launch(_crf_step_kernel, _crf_step_autotuned, _pixel_grid(h * w), dev, *args, L_PAD=label_pad(labels),
           interpret=INTERPRET_CONFIG)
    return out


def crf_window(image: torch.Tensor, unary: torch.Tensor, params, use_triton: bool) -> torch.Tensor:
    """All iterations of the windowed mean-field. ``image``: uint8 [H, W, 3]; ``unary``: [L, H, W]."""
    img = image.permute(2, 0, 1).float().contiguous()
    q = torch.softmax(-unary, 0)
    if use_triton:
        norm_b, norm_s = window_norms_triton(img, params)
        spare = torch.empty_like(q)
        for _ in range(params.iterations):
            spare = crf_step(img, unary, q, norm_b, norm_s, params, out=spare)
            q, spare = spare, q
        return q
    norm_b, norm_s = window_norms(img, params)
    for _ in range(params.iterations):
        q = crf_step_reference(img, unary, q, norm_b, norm_s, params)
    return q
