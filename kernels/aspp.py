"""Fused ASPP: every atrous branch of a DeepLab head in one Triton launch.

One kernel, :func:`_tap_conv_kernel`, is an implicit GEMM over a *tap table*: a list of
(weight slice, dy, dx) offsets grouped into output groups. Each program computes a
``BLOCK_M`` pixels x ``BLOCK_N`` channels tile of one group, reducing over that group's
taps x input channels into one fp32 accumulator, then adds the bias, applies ReLU and
writes its slice of the output. The same kernel gives

* DeepLab-v2's ASPP-L (sum fusion): one group holding the taps of all four 3x3 branches
  (rates 6/12/18/24), so the reduction runs over branches x taps x channels and the
  summed logits are written once with the biases summed once;
* DeepLab-v3's branches: the 1x1 branch and each atrous 3x3 branch are groups of one
  launch (grid axis 2), each writing its channel slice of the concatenated tensor in
  place (no ``torch.cat``), batch-norm folded into weights and bias, ReLU fused;
* DeepLab-v3's projection: a one-tap group whose bias is per image. The image-pooling
  branch is constant over H x W, so its path through the 1x1 projection is a per-image
  vector; it is folded into that bias and never broadcast to H x W.

Zero padding is the load mask. A tap whose offset is >= H (or W) reads only padding for
every output pixel; it is dropped on the host when the tap table for an input size is
built, so a rate larger than the feature map costs nothing. Inputs may be NCHW or
channels-last (any strides), fp32, fp16 or bf16, accumulated in fp32; the weights must be in the
input's dtype (the modules store them so: cast once with the module, never per call). Offsets inside
one image are int32: a map of over 2^31 elements (pixels x channels, in or out) is refused.

The PyTorch references of the same math (``*_reference``) sit next to the kernels; tests
and the kernel benchmark import both from here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

from ..models.fold import fold_bn
from ..models.heads import ASPP, ASPPSum
from .device import bucket, check_runnable, launch
from .dtypes import DTYPES
from .indexing import check_pixels

__all__ = ["FusedASPP", "FusedASPPSum", "TapTable", "aspp_sum", "aspp_sum_reference", "aspp_branches", "fuse_aspp",
           "aspp_branches_reference", "autotune_configs", "INTERPRET_CONFIG", "pack_weights", "tap_conv",
           "branch_specs"]


# ----------------------------------------------------------------------------- configs

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) by operand width and output width. ``wide``
# serves Cout > 32 (v3 branches and projection, 256 channels), ``narrow`` Cout <= 32
# (v2's 21 class logits). Each was compiled for sm_87 and sm_90 with
# ``deeplab-edge kernels compile``: no spills, shared memory within the block limit.
_CONFIGS = {
    ("16bit", "wide"): [(128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 64, 4, 3)],
    ("16bit", "narrow"): [(64, 32, 64, 4, 3), (128, 32, 64, 8, 3), (128, 32, 32, 4, 3)],
    ("fp32", "wide"): [(64, 64, 32, 4, 3), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (128, 128, 32, 8, 2)],
    ("fp32", "narrow"): [(64, 32, 32, 4, 3), (128, 32, 32, 4, 3), (64, 32, 64, 4, 3)],
}


def _config_class(dtype: torch.dtype | str, cout: int) -> tuple[str, str]:
    """The config table's key: operand width (``dtype`` a torch dtype or its name) and output width."""
    width = "fp32" if DTYPES.get(dtype, dtype) == torch.float32 else "16bit"
    return width, "narrow" if cout <= 32 else "wide"


def autotune_configs(dtype: torch.dtype | str | None = None, cout: int | None = None) -> list[triton.Config]:
    """GPU configs: all of them, or those for one input dtype and output width."""
    if dtype is None or cout is None:
        keys = list(_CONFIGS)
    else:
        keys = [_config_class(dtype, cout)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for key in keys for m, n, k, w, s in _CONFIGS[key]]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    keep = {(m, n, k, w, s) for m, n, k, w, s in _CONFIGS[_config_class(named_args["x_ptr"].dtype,
                                                                         named_args["Cout"])]}
    return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps,
                                   c.num_stages) in keep]


#: Block sizes under ``TRITON_INTERPRET=1``: the interpreter's cost grows with the number of
#: programs, so few big tiles keep CPU runs fast (a 320 x 33 x 33 ASPP: 34 s with 128/64/64
#: blocks, 4 s with these). Tests shrink them to cover multi-tile paths.
INTERPRET_CONFIG = {"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 128}


# ----------------------------------------------------------------------------- kernel

@triton.jit
def _tap_conv_kernel(
    y_ptr, stride_yb, stride_yc, stride_yh, stride_yw,
    x_ptr, stride_xb, stride_xc, stride_xh, stride_xw,
    w_ptr, stride_wt, stride_wk,  # [weight taps, Cin, Cout padded to 16], unit stride over Cout
    bias_ptr, stride_bias_b,  # fp32 [B or 1, groups * Cout]; stride 0 shares one row across the batch
    tap_w_ptr, tap_dy_ptr, tap_dx_ptr, group_start_ptr,  # int32; group g owns taps [start[g], start[g + 1])
    H, W, Cin, Cout,
    HW_BUCKET,  # bucket(H * W): the autotuning key (unused in the body)
    RELU: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)

    # Tiles never straddle two images: the image, its bias row and base pointers are scalars.
    hw = H * W
    tiles = tl.cdiv(hw, BLOCK_M)
    b = (pid_m // tiles).to(tl.int64)
    offs_m = (pid_m % tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < hw
    oh = offs_m // W
    ow = offs_m % W
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < Cout
    offs_k = tl.arange(0, BLOCK_K)
    x_img = x_ptr + b * stride_xb

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    t_start = tl.load(group_start_ptr + group)
    t_end = tl.load(group_start_ptr + group + 1)
    # One loop over (tap, K block) pairs, not a K loop restarted per tap: the software pipeline
    # (num_stages) then prefetches across tap boundaries instead of draining at each of them.
    k_steps = tl.cdiv(Cin, BLOCK_K)
    for it in range(t_start * k_steps, t_end * k_steps):
        t = it // k_steps
        k = (it - t * k_steps) * BLOCK_K + offs_k
        w_tap = w_ptr + tl.load(tap_w_ptr + t).to(tl.int64) * stride_wt
        ih = oh + tl.load(tap_dy_ptr + t)
        iw = ow + tl.load(tap_dx_ptr + t)
        inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_pix = ih * stride_xh + iw * stride_xw
        mask_k = k < Cin
        a = tl.load(x_img + x_pix[:, None] + k[None, :] * stride_xc, mask=inside[:, None] & mask_k[None, :],
                    other=0.0)
        w = tl.load(w_tap + k[:, None] * stride_wk + offs_n[None, :], mask=mask_k[:, None] & mask_n[None, :],
                    other=0.0)
        if UPCAST:  # bf16 under TRITON_INTERPRET, whose tl.dot mishandles bf16 operands
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)

    channel = group * Cout + offs_n
    acc += tl.load(bias_ptr + b * stride_bias_b + channel, mask=mask_n, other=0.0)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    y = y_ptr + b * stride_yb + (oh * stride_yh + ow * stride_yw)[:, None] + channel[None, :] * stride_yc
    mask = mask_m[:, None] & mask_n[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask)


_tap_conv_autotuned = triton.autotune(configs=autotune_configs(), key=["HW_BUCKET", "Cin", "Cout"],
                                      prune_configs_by={"early_config_prune": _prune})(_tap_conv_kernel)


# ----------------------------------------------------------------------------- host side

@dataclass(frozen=True)
class TapTable:
    """Taps of each output group for one input size: weight index, row and column offset.

    Built from per-group ``(kernel_size, rate)`` specs; taps whose offset reaches H or W
    (wholly in the zero padding) are left out.
    """

    tap_w: torch.Tensor
    tap_dy: torch.Tensor
    tap_dx: torch.Tensor
    group_start: torch.Tensor

    @property
    def groups(self) -> int:
        return self.group_start.numel() - 1

    @property
    def num_taps(self) -> int:
        return self.tap_w.numel()

    @staticmethod
    def build(specs: list[tuple[int, int]], height: int, width: int, device: torch.device,
              sum_groups: bool = False) -> "TapTable":
        tap_w, dy, dx, starts = [], [], [], [0]
        w_index = 0
        for size, rate in specs:
            half = size // 2
            for i in range(size):
                for j in range(size):
                    oy, ox = (i - half) * rate, (j - half) * rate
                    if abs(oy) < height and abs(ox) < width:
                        tap_w.append(w_index)
                        dy.append(oy)
                        dx.append(ox)
                    w_index += 1
            if not sum_groups:
                starts.append(len(tap_w))
        if sum_groups:
            starts.append(len(tap_w))

        def ints(v: list[int]) -> torch.Tensor:
            return torch.tensor(v, dtype=torch.int32, device=device)

        return TapTable(ints(tap_w), ints(dy), ints(dx), ints(starts))


@functools.lru_cache(maxsize=64)
def _tap_table(specs: tuple[tuple[int, int], ...], height: int, width: int, device: torch.device,
               sum_groups: bool) -> TapTable:
    return TapTable.build(list(specs), height, width, device, sum_groups)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 follows PyTorch's own choice for convolutions (cuDNN uses TF32 when allowed).
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D [B, C, H, W] input, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"expected fp32, fp16 or bf16 input, got {x.dtype}")


def tap_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, taps: TapTable, cout: int, *,
             relu: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """Run the tap-table convolution: ``y[:, g*cout:(g+1)*cout] = act(sum over group g's taps
    of x shifted by (dy, dx) @ weight[tap] + bias)``.

    ``x``: [B, Cin, H, W]; ``weight``: [weight taps, Cin, >= cout] (:func:`pack_weights`) in
    ``x``'s dtype; ``bias``: fp32 [1 or B, groups * cout]. Returns [B, groups * cout, H, W],
    channels-last.

    The GEMM's reduction axis is the channel axis, so an NCHW input is first made
    channels-last (one copy): the kernel then reads 16-byte vectors along channels, as
    ``deeplab-edge kernels compile`` assumes (without that, loads are per element and the
    tiles run out of registers).
    """
    _check_input(x)
    bsz, cin, h, w = x.shape
    if weight.dim() != 3 or weight.shape[1] != cin or weight.shape[2] < cout:
        raise ValueError(f"expected weight [taps, {cin}, >= {cout}], got {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise ValueError(f"expected weight in the input's dtype {x.dtype}, got {weight.dtype}: cast the weights "
                         "(or the module) once, not on every call")
    groups = taps.groups
    if bias.shape[-1] != groups * cout or bias.shape[0] not in (1, bsz):
        raise ValueError(f"expected bias [1 or {bsz}, {groups * cout}], got {tuple(bias.shape)}")
    check_pixels(h, w, max(cin, groups * cout), "tap_conv", "channels")  # int32 offsets inside an image
    check_runnable(x)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = weight.contiguous()
    bias = bias.float().contiguous()
    if out is None:
        out = torch.empty((bsz, groups * cout, h, w), device=x.device, dtype=x.dtype,
                          memory_format=torch.channels_last)
    if bsz * h * w == 0:
        return out
    args = (out, *out.stride(), x, *x.stride(), weight, weight.stride(0), weight.stride(1), bias,
            bias.stride(0) if bias.shape[0] > 1 else 0, taps.tap_w, taps.tap_dy, taps.tap_dx, taps.group_start,
            h, w, cin, cout, bucket(h * w))
    def grid(meta):
        return bsz * triton.cdiv(h * w, meta["BLOCK_M"]), triton.cdiv(cout, meta["BLOCK_N"]), groups

    # Triton 3.7's interpreter computes tl.dot of two bf16 tiles wrongly (a 16x16 dot of N(0,1)
    # values came out ~1e10 off); bf16 products are exact in fp32, so upcasting the tiles there
    # gives the same sums a bf16 tensor-core MMA with fp32 accumulation does.
    upcast = {"DOT_PRECISION": "ieee", "UPCAST": True} if x.dtype == torch.bfloat16 else {}
    launch(_tap_conv_kernel, _tap_conv_autotuned, grid, x.device, *args, RELU=relu,
           DOT_PRECISION=_dot_precision(x.dtype), UPCAST=False, interpret={**INTERPRET_CONFIG, **upcast})
    return out


def pack_weights(weights: list[torch.Tensor]) -> torch.Tensor:
    """[Cout, Cin, k, k] conv weights -> one [sum of k*k, Cin, Cout padded to 16] tap-major
    tensor (zero padding keeps weight rows 16-element aligned, e.g. for 21 class logits)."""
    taps = torch.cat([wt.permute(2, 3, 1, 0).reshape(-1, wt.shape[1], wt.shape[0]) for wt in weights])
    cout = taps.shape[2]
    return F.pad(taps, (0, -cout % 16)).contiguous()


def branch_specs(rates: tuple[int, ...], with_1x1: bool) -> tuple[tuple[int, int], ...]:
    """(kernel size, rate) of each ASPP branch: the 1x1 branch (v3) first, then a 3x3 per atrous rate."""
    return ((1, 1),) * with_1x1 + tuple((3, r) for r in rates)


def aspp_sum(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rates: tuple[int, ...]) -> torch.Tensor:
    """DeepLab-v2 ASPP-L in one launch: ``sum_r conv3x3_r(x)`` with the biases summed once.

    ``weight``: packed [4 * 9, Cin, classes] (see :func:`pack_weights`); ``bias``: [classes], already summed."""
    _check_input(x)
    taps = _tap_table(branch_specs(rates, False), x.shape[2], x.shape[3], x.device, True)
    return tap_conv(x, weight, bias.reshape(1, -1), taps, bias.numel(), relu=False)


def aspp_branches(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rates: tuple[int, ...],
                  channels: int) -> torch.Tensor:
    """DeepLab-v3 ASPP branches in one launch: ``cat([relu(conv1x1), relu(conv3x3_r) ...])``,
    each group writing its channel slice. ``weight``: packed [1 + 9 * len(rates), Cin, channels]."""
    _check_input(x)
    taps = _tap_table(branch_specs(rates, True), x.shape[2], x.shape[3], x.device, False)
    return tap_conv(x, weight, bias.reshape(1, -1), taps, channels, relu=True)


# ----------------------------------------------------------------------------- references

def aspp_sum_reference(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                       rates: tuple[int, ...]) -> torch.Tensor:
    """DeepLab-v2 ASPP-L with ``F.conv2d``, one branch at a time."""
    return sum(F.conv2d(x, w, b, padding=r, dilation=r) for w, b, r in zip(weights, biases, rates))


def aspp_branches_reference(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                            rates: tuple[int, ...]) -> torch.Tensor:
    """DeepLab-v3 branches with ``F.conv2d`` + ReLU + ``torch.cat``; ``weights[0]`` is the 1x1."""
    outs = [F.relu(F.conv2d(x, weights[0], biases[0]))]
    outs += [F.relu(F.conv2d(x, w, b, padding=r, dilation=r)) for w, b, r in zip(weights[1:], biases[1:], rates)]
    return torch.cat(outs, 1)


# ----------------------------------------------------------------------------- modules

def _fold_fp32(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv (+ eval-mode BN) -> weight, bias folded in fp32 (zeros where there is no bias: the kernels add one)."""
    w, b = fold_bn(conv, bn, torch.float32)
    return w, b if b is not None else torch.zeros(w.shape[0], device=w.device)


def _check_conv(conv: nn.Module, size: int, rate: int) -> nn.Conv2d:
    ok = (isinstance(conv, nn.Conv2d) and conv.kernel_size == (size, size) and conv.stride == (1, 1)
          and conv.groups == 1 and conv.dilation == (rate, rate) and conv.padding == (rate * (size // 2),) * 2
          and conv.padding_mode == "zeros")
    if not ok:
        raise ValueError(f"expected a stride-1 {size}x{size} conv with dilation {rate} and 'same' zero padding, "
                         f"got {conv}")
    return conv


def _weight_dtype(head: nn.Module) -> torch.dtype:
    """The dtype of a head's conv weights: the fused weights are folded in fp32, then stored in it."""
    p = next(head.parameters(), None)
    return p.dtype if p is not None and p.dtype in (torch.float16, torch.bfloat16) else torch.float32


class _Fused(nn.Module):
    """The packed weights follow the module's casts (``.half()``, ``.to(dtype)``): cast once, so
    a forward never casts them. Biases and the tiny image-pooling matrices (``_fp32``) follow
    its device only: they keep their fp32 values, as folded, through any cast (the kernels add
    biases in fp32)."""

    _fp32 = ("bias",)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        kept = {n: self._buffers[n] for n in self._fp32 if self._buffers.get(n) is not None}
        for name in kept:
            self._buffers[name] = None  # Module._apply skips None buffers; the key keeps its place
        try:
            super()._apply(fn, recurse)
        finally:
            for name, buf in kept.items():
                self._buffers[name] = buf
        for name, buf in kept.items():
            moved = fn(buf)  # where the cast sends it; the values come from the fp32 original
            self._buffers[name] = moved if moved.dtype == torch.float32 else buf.to(moved.device)
        return self


class FusedASPPSum(_Fused):
    """Drop-in for :class:`~deeplab_edge.models.heads.ASPPSum` (inference only)."""

    def __init__(self, aspp: nn.Module) -> None:
        super().__init__()
        self.rates = tuple(aspp.rates)
        convs = [_check_conv(c, 3, r) for c, r in zip(aspp.convs, self.rates)]
        folded = [_fold_fp32(c, None) for c in convs]
        self.register_buffer("weight", pack_weights([w for w, _ in folded]).to(_weight_dtype(aspp)))
        self.register_buffer("bias", torch.stack([b for _, b in folded]).sum(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return aspp_sum(x, self.weight, self.bias, self.rates)


class FusedASPP(_Fused):
    """Drop-in for :class:`~deeplab_edge.models.heads.ASPP` (inference only).

    Launches: branches (1), image pooling's mean + two [B, C] mat-vecs in PyTorch, projection (1).
    """

    _fp32 = ("bias", "proj_bias", "pool_weight", "pool_bias", "proj_pool_weight")

    def __init__(self, aspp: nn.Module) -> None:
        super().__init__()
        self.rates = tuple(aspp.rates)
        self.image_pooling = bool(aspp.image_pooling)
        convs = list(aspp.convs)
        first = _check_conv(convs[0][0], 1, 1)
        folded = [_fold_fp32(first, convs[0][1])]
        folded += [_fold_fp32(_check_conv(c[0], 3, r), c[1]) for c, r in zip(convs[1:1 + len(self.rates)], self.rates)]
        self.channels = first.out_channels
        dtype = _weight_dtype(aspp)
        self.register_buffer("weight", pack_weights([w for w, _ in folded]).to(dtype))
        self.register_buffer("bias", torch.cat([b for _, b in folded]))

        proj_w, proj_b = _fold_fp32(_check_conv(aspp.project[0], 1, 1), aspp.project[1])
        n_conv = (1 + len(self.rates)) * self.channels
        self.register_buffer("proj_weight", pack_weights([proj_w[:, :n_conv]]).to(dtype))  # [1, n_conv, Cout]
        self.register_buffer("proj_bias", proj_b)
        if self.image_pooling:
            pool = convs[-1]
            pw, pb = _fold_fp32(_check_conv(pool[1], 1, 1), pool[2])
            self.register_buffer("pool_weight", pw[:, :, 0, 0])  # [C, Cin]
            self.register_buffer("pool_bias", pb)
            self.register_buffer("proj_pool_weight", proj_w[:, n_conv:, 0, 0])  # [Cout, C]

    def image_bias(self, x: torch.Tensor) -> torch.Tensor:
        """Projection bias per image [B, Cout], with the pooling branch folded in (fp32)."""
        bias = self.proj_bias[None]
        if not self.image_pooling:
            return bias
        pooled = F.relu(F.linear(x.mean((2, 3), dtype=torch.float32), self.pool_weight, self.pool_bias))
        return bias + F.linear(pooled, self.proj_pool_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = aspp_branches(x, self.weight, self.bias, self.rates, self.channels)
        taps = _tap_table(((1, 1),), x.shape[2], x.shape[3], x.device, False)
        return tap_conv(feats, self.proj_weight, self.image_bias(x), taps, self.proj_bias.numel(), relu=True)


def fuse_aspp(model: nn.Module) -> nn.Module:
    """Swap every ASPP / ASPPSum in ``model`` for its fused Triton version, in place.

    The model is put in eval mode (batch-norm statistics are folded into the weights).
    Returns the model; raises ``ValueError`` when it has no ASPP module."""
    model.eval()
    swaps = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, (ASPP, ASPPSum))]
    if not swaps:
        raise ValueError(f"expected a model with an ASPP head, found none in {type(model).__name__}")
    for name, mod in swaps:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        fused = FusedASPPSum(mod) if isinstance(mod, ASPPSum) else FusedASPP(mod)
        if attr.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList)):
            parent[int(attr)] = fused
        else:
            setattr(parent, attr, fused)
    return model
