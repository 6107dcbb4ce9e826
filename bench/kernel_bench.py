"""Kernel benchmark: eager PyTorch vs ``torch.compile`` vs the fused Triton ASPP on DeepLab's real head shapes.

On a CUDA GPU every provider is timed with CUDA events (warm-up, then the median of
``iters`` runs with p10/p90), and converted to TFLOP/s, GB/s and the fraction of the
device's roofline, from the bytes that provider's path moves. Each provider times what the
runner runs for its ``--backend``: the head cast to the dtype (the fused one fused in fp32, then
cast, as ``--backend triton`` does: its weights are cast once, not per call), fed the NCHW map
the runner passes (the fused kernels start with its copy to channels-last, counted); the same
modules on a channels-last map are timed beside it (``layout``), marked as not the runner's.
Without a GPU nothing is timed: the benchmark prints what can be known
exactly — FLOPs, the kernel launches and the bytes each path moves (eager PyTorch's counted
by running the real module on the ``meta`` device and recording every ATen op; the fused
path's from its tensors) — and, with the register / shared-memory figures of
``deeplab-edge kernels compile``, a roofline *estimate* for sm_87 and sm_90, labelled as
such until a GPU measures it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from deeplab_edge.crf import CRFParams, gaussian_radius
from deeplab_edge.errors import KernelUnavailableError
from deeplab_edge.kernels.dtypes import DTYPES
from deeplab_edge.models.heads import ASPP, ASPPSum

from .stats import percentile, time_calls

__all__ = ["SHAPES", "PROVIDERS", "DEVICES", "LAYOUTS", "RUNNER_LAYOUT", "HeadShape", "analyse", "build_head",
           "crf_estimate", "eager_traffic", "fused_traffic", "fused_module", "lattice_estimate", "run"]

PROVIDERS = ("torch", "compile", "triton")

#: Input layouts timed: ``nchw`` is what the runner feeds the head (TorchRunner passes the
#: backbone's NCHW output on; the fused kernels then copy it to channels-last), ``channels_last``
#: what a channels-last backbone would give (no copy).
LAYOUTS = ("nchw", "channels_last")
RUNNER_LAYOUT = "nchw"


@dataclass(frozen=True)
class HeadShape:
    name: str
    kind: str  # "v2" (ASPP-L sum) or "v3" (ASPP + image pooling + projection)
    cin: int
    height: int
    width: int
    rates: tuple[int, ...]
    cout: int  # v2: classes; v3: channels per branch and after the projection


#: The real head shapes (feature maps of a 513 x 513 input).
SHAPES = {s.name: s for s in [
    HeadShape("v2-resnet101-os8", "v2", 2048, 65, 65, (6, 12, 18, 24), 21),
    HeadShape("v3-resnet101-os16", "v3", 2048, 33, 33, (6, 12, 18), 256),
    HeadShape("v3-resnet101-os8", "v3", 2048, 65, 65, (12, 24, 36), 256),
    HeadShape("v3-mobilenetv2-os16", "v3", 320, 33, 33, (), 256),  # Google's head: 1x1 + pooling
]}


@dataclass(frozen=True)
class Device:
    """Peak dense throughput and DRAM bandwidth from vendor datasheets (sparsity figures halved)."""

    name: str
    cc: int
    tflops: dict[str, float]  # by dtype: fp16/bf16 tensor cores; fp32 as TF32 tensor cores (PyTorch's conv default)
    gbs: float
    source: str
    simt_fp32_tflops: float = 0.0  # CUDA-core FP32 (the CRF step's element-wise arithmetic)


DEVICES = {
    90: Device("H100 SXM5", 90, {"fp16": 989.4, "bf16": 989.4, "fp32": 494.7}, 3350.0,
               "NVIDIA H100 datasheet: FP16/BF16 1,979 and TF32 989 TFLOPS with sparsity, FP32 67 TFLOPS; HBM3 "
               "3.35 TB/s", simt_fp32_tflops=66.9),
    87: Device("Jetson AGX Orin 64GB", 87, {"fp16": 42.5, "bf16": 42.5, "fp32": 21.3}, 204.8,
               "Jetson AGX Orin datasheet: GPU 170 sparse INT8 TOPS -> 85 dense INT8 -> 42.5 dense FP16 "
               "(TF32 half of that); 2048 CUDA cores x 2 x 1.3 GHz = 5.3 FP32 TFLOPS; LPDDR5 204.8 GB/s",
               simt_fp32_tflops=5.3),
}


# ATen ops that only change a tensor's metadata or allocate: no kernel launch, no memory traffic.
_NO_WORK_OPS = {"view", "_unsafe_view", "expand", "t", "detach", "permute", "as_strided", "alias", "reshape",
                "unsqueeze", "squeeze", "transpose", "slice", "select", "empty", "empty_like", "empty_strided"}


def build_head(shape: HeadShape) -> nn.Module:
    """The deeplab-edge head for a shape, with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(0)
    if shape.kind == "v2":
        head = ASPPSum(shape.cin, shape.cout, shape.rates)
    else:
        head = ASPP(shape.cin, shape.rates, cout=shape.cout)
        for m in head.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return head.eval()


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _flatten(obj: Any) -> list[Any]:
    if isinstance(obj, (list, tuple)):
        return [y for x in obj for y in _flatten(x)]
    if isinstance(obj, dict):
        return [y for x in obj.values() for y in _flatten(x)]
    return [obj]


def _count_ops(fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` (on meta tensors) and count ATen ops that launch work, with the bytes each
    reads and writes (each tensor once per op: no cache reuse)."""
    ops: list[tuple[str, int]] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if name not in _NO_WORK_OPS:
                moved = sum(_nbytes(t) for t in _flatten((args, kwargs or {})))
                moved += sum(_nbytes(t) for t in _flatten(out))
                ops.append((name, moved))
            return out

    with torch.no_grad(), Recorder():
        fn()
    return {"launches": len(ops), "bytes": sum(b for _, b in ops), "ops": [n for n, _ in ops]}


def _flops(shape: HeadShape, batch: int) -> int:
    """Convolution FLOPs of the head (2 per multiply-accumulate, every tap, as F.conv2d computes)."""
    head = build_head(shape).to("meta")
    x = torch.empty(batch, shape.cin, shape.height, shape.width, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head(x)
    return int(counter.get_total_flops())


def eager_traffic(shape: HeadShape, batch: int, dtype: str) -> dict[str, Any]:
    """Launches and bytes of eager PyTorch, recorded from the real module on the meta device."""
    head = build_head(shape).to("meta", DTYPES[dtype])
    x = torch.empty(batch, shape.cin, shape.height, shape.width, device="meta", dtype=DTYPES[dtype])
    return _count_ops(lambda: head(x))


def fused_module(shape: HeadShape) -> nn.Module:
    """The fused head as ``--backend triton`` makes it: fused from the fp32 head (then cast by the caller)."""
    from deeplab_edge.kernels.aspp import FusedASPP, FusedASPPSum

    return (FusedASPPSum if shape.kind == "v2" else FusedASPP)(build_head(shape))


def fused_traffic(shape: HeadShape, batch: int, dtype: str, layout: str = RUNNER_LAYOUT) -> dict[str, Any]:
    """Launches and compulsory bytes of the fused path for an input in ``layout``: an NCHW map is
    first copied to channels-last (read and written once, one launch); then each Triton kernel
    reads its input, the weights of the taps it keeps (already in the dtype: no cast), bias and
    tap table once and writes its output once; the image-pooling bias (v3) is counted op by op
    like eager PyTorch."""
    from deeplab_edge.kernels.aspp import TapTable, branch_specs

    if layout not in LAYOUTS:
        raise ValueError(f"expected a layout in {LAYOUTS}, got {layout!r}")
    elt = DTYPES[dtype].itemsize
    b, c, h, w = batch, shape.cin, shape.height, shape.width
    x_bytes = b * c * h * w * elt
    copy_ops, copy_bytes = (["copy:nchw->channels_last"], 2 * x_bytes) if layout == "nchw" else ([], 0)
    pad16 = shape.cout + (-shape.cout % 16)
    if shape.kind == "v2":
        taps = TapTable.build(list(branch_specs(shape.rates, False)), h, w, torch.device("cpu"), sum_groups=True)
        w_bytes = taps.num_taps * c * pad16 * elt
        out = b * shape.cout * h * w * elt
        return {"launches": len(copy_ops) + 1, "layout": layout,
                "bytes": copy_bytes + x_bytes + w_bytes + out + 4 * shape.cout + 4 * 4 * taps.num_taps,
                "ops": [*copy_ops, "triton:aspp_sum"], "taps": taps.num_taps}
    taps = TapTable.build(list(branch_specs(shape.rates, True)), h, w, torch.device("cpu"))
    groups = 1 + len(shape.rates)
    feats = b * groups * shape.cout * h * w * elt
    w_branch = taps.num_taps * c * pad16 * elt
    w_proj = groups * shape.cout * pad16 * elt
    out = b * shape.cout * h * w * elt
    branches = x_bytes + w_branch + feats + 4 * groups * shape.cout + 4 * 4 * taps.num_taps
    projection = feats + w_proj + out + 4 * b * shape.cout + 4 * 4
    fused = fused_module(shape).to("meta", DTYPES[dtype])
    xm = torch.empty(b, c, h, w, device="meta", dtype=DTYPES[dtype])
    pool = _count_ops(lambda: fused.image_bias(xm))
    return {"launches": len(copy_ops) + 2 + pool["launches"], "layout": layout,
            "bytes": copy_bytes + branches + projection + pool["bytes"],
            "ops": [*copy_ops, "triton:aspp_branches", *pool["ops"], "triton:projection"], "taps": taps.num_taps,
            # Fusing the projection into the branch kernel would keep the concatenated
            # features on chip: at most this much traffic saved (one write, one read).
            "projection_fusion_saves_bytes": 2 * feats}


def crf_estimate(height: int = 513, width: int = 513, labels: int = 21, params: Any = None) -> dict[str, Any]:
    """FLOPs and compulsory bytes of the Triton window CRF (``--crf triton-window``: norm pass + ``iterations`` steps) and its
    roofline time per image on each device (CUDA-core fp32; exp counted as one op)."""
    from deeplab_edge.kernels.crf_window import window_taps

    p = params or CRFParams()
    taps = window_taps(p, height, width)
    n_b, n_s = len(taps["bilateral"][0]), len(taps["spatial"][0])
    px = height * width
    # per tap: bilateral weight ~15 ops (3 colour differences, squares, scale, exp, norm), spatial ~4;
    # then one FMA per label; softmax ~5 ops per label.
    step_flops = px * (n_b * (14 + 2 * labels) + n_s * (4 + 2 * labels) + 5 * labels)
    step_bytes = px * (3 * 4 * labels + 3 * 4 + 2 * 4)  # read Q and U, write Q'; image; two norms
    norm_flops, norm_bytes = px * (n_b * 14 + n_s * 4), px * (3 * 4 + 2 * 4)
    flops, nbytes = norm_flops + p.iterations * step_flops, norm_bytes + p.iterations * step_bytes
    est = {}
    for cc, dev in DEVICES.items():
        est[f"sm_{cc}"] = {"device": dev.name, "roofline_ms": 1e3 * max(flops / (dev.simt_fp32_tflops * 1e12),
                                                                          nbytes / (dev.gbs * 1e9)),
                           "launches": 1 + p.iterations,
                           "label": "estimate (roofline lower bound), not a measurement"}
    return {"height": height, "width": width, "labels": labels, "iterations": p.iterations, "bilateral_taps": n_b,
            "spatial_taps": n_s, "gflops": flops / 1e9, "mb": nbytes / 1e6, "estimates": est}


def lattice_estimate(height: int = 513, width: int = 513, labels: int = 21, params: Any = None,
                     vertices: int | None = None) -> dict[str, Any]:
    """FLOPs, compulsory DRAM bytes and launches of the Triton lattice CRF (``--crf triton``)
    for ``iterations`` mean-field steps, and the roofline time per image on each device.

    The lattice's size M (``vertices``) depends on the image's colours: pass the real count
    (``PermutohedralLattice(...).num_vertices``); without it M = H x W is assumed and said.
    Per iteration: the fused step reads U, Q, the simplex corners and weights, writes Q' and
    splats (D1 atomic adds per pixel and label, counted once as the splat buffer's bytes; their
    contention is not modelled); each of the D1 blur passes reads and writes the [M, L] values
    and two neighbour indices. Not counted: building the lattice (once per image, PyTorch)."""
    from deeplab_edge.kernels.crf_lattice import separable_spatial

    p = params or CRFParams()
    px = height * width
    m = px if vertices is None else int(vertices)
    d1, lab = 6, labels
    radius = gaussian_radius(p.theta_gamma)
    side = 2 * radius + 1
    separable = separable_spatial(radius, lab)
    if separable:  # a row pass, then the column pass inside the step
        taps = 2 * side
        rows_flops, rows_bytes = px * side * (2 + 2 * lab), px * (2 * 4 * lab + 4)  # read Q, n_s; write R
        step_taps = side
    else:  # the whole window inside the step
        taps = step_taps = side * side
        rows_flops = rows_bytes = 0
    step_flops = px * (2 * d1 * lab + step_taps * (2 + 2 * lab) + 5 * lab + 2 * d1 * lab)
    step_bytes = px * (3 * 4 * lab + 8 * d1 + 8) + 3 * 4 * m * lab  # R, U read, Q' written; + V, S, S zeroed
    blur_flops, blur_bytes = d1 * 3 * m * lab, d1 * (2 * 4 * m * lab + 8 * m)
    it = p.iterations
    flops = it * (rows_flops + step_flops + blur_flops) + px * 5 * lab  # + the first softmax and splat
    nbytes = it * (rows_bytes + step_bytes + blur_bytes) + px * (8 * lab + 8 * d1)
    launches = 1 + it * (1 + separable + d1) + max(it - 1, 0)  # first softmax/splat; [rows], step, blurs; zeroing
    # the spatial message's neighbour loads (L values per tap and pixel) through L1/L2: not DRAM
    # traffic, so not in the roofline above, but what the 2-D window's (2r + 1)^2 taps cost on chip
    gather_mb = it * px * taps * lab * 4 / 1e6
    est = {}
    for cc, dev in DEVICES.items():
        est[f"sm_{cc}"] = {"device": dev.name, "roofline_ms": 1e3 * max(flops / (dev.simt_fp32_tflops * 1e12),
                                                                          nbytes / (dev.gbs * 1e9)),
                           "label": "estimate (roofline lower bound), not a measurement"}
    return {"height": height, "width": width, "labels": labels, "iterations": it, "vertices": m,
            "vertices_assumed": vertices is None, "spatial_taps": taps, "separable": separable,
            "gflops": flops / 1e9, "mb": nbytes / 1e6, "spatial_gather_mb": gather_mb,
            "launches": launches, "estimates": est}


def roofline_ms(flops: int, nbytes: int, device: Device, dtype: str) -> float:
    return 1e3 * max(flops / (device.tflops[dtype] * 1e12), nbytes / (device.gbs * 1e9))


def analyse(shapes: Iterable[str], batches: Iterable[int], dtypes: Iterable[str],
            compile_results: list[dict] | None = None) -> list[dict[str, Any]]:
    """The exact, GPU-free part: FLOPs, launches, bytes, and the roofline estimates per device.
    ``fused_*``: the fused path as the runner feeds it (NCHW: the copy to channels-last included);
    ``fused_channels_last_*``: on a channels-last map."""
    rows = []
    for name in shapes:
        shape = SHAPES[name]
        for batch in batches:
            flops = _flops(shape, batch)
            for dtype in dtypes:
                eager, fused = eager_traffic(shape, batch, dtype), fused_traffic(shape, batch, dtype, RUNNER_LAYOUT)
                fused_cl = fused_traffic(shape, batch, dtype, "channels_last")
                row = {"shape": name, "kind": shape.kind, "batch": batch, "dtype": dtype, "gflops": flops / 1e9,
                       "eager_launches": eager["launches"], "eager_mb": eager["bytes"] / 1e6,
                       "fused_layout": RUNNER_LAYOUT, "fused_launches": fused["launches"],
                       "fused_mb": fused["bytes"] / 1e6, "fused_channels_last_launches": fused_cl["launches"],
                       "fused_channels_last_mb": fused_cl["bytes"] / 1e6,
                       "eager_ops": eager["ops"], "fused_ops": fused["ops"], "estimates": {},
                       "projection_fusion_saves_mb": fused.get("projection_fusion_saves_bytes", 0) / 1e6}
                for cc, dev in DEVICES.items():
                    est = {"device": dev.name, "roofline_ms_fused": roofline_ms(flops, fused["bytes"], dev, dtype),
                           "roofline_ms_fused_channels_last": roofline_ms(flops, fused_cl["bytes"], dev, dtype),
                           "roofline_ms_eager": roofline_ms(flops, eager["bytes"], dev, dtype),
                           "projection_fusion_saves_ms": fused.get("projection_fusion_saves_bytes", 0) / (dev.gbs * 1e9)
                           * 1e3,
                           "bound": "compute" if flops / (dev.tflops[dtype] * 1e12) > fused["bytes"] / (dev.gbs * 1e9)
                           else "memory", "label": "estimate (roofline lower bound), not a measurement"}
                    if compile_results:
                        width = "narrow" if shape.cout <= 32 else "wide"
                        variant = "v2" if width == "narrow" else "v3"
                        cands = [r for r in compile_results if r["arch"] == f"sm_{cc}" and r["dtype"] == dtype
                                 and r["kernel"].endswith(f"[{variant}]")]
                        if cands:
                            best = max(cands, key=lambda r: r["occupancy"])
                            est["best_occupancy"] = best["occupancy"]
                            est["best_occupancy_config"] = best["config"] | {"num_warps": best["num_warps"],
                                                                             "num_stages": best["num_stages"]}
                            est["all_configs_ok"] = all(r["ok"] for r in cands)
                    row["estimates"][f"sm_{cc}"] = est
                rows.append(row)
    return rows


def run(shapes: Iterable[str | HeadShape], batches: Iterable[int], dtypes: Iterable[str], providers: Iterable[str],
        warmup: int = 10, iters: int = 50, progress: Callable[[str], None] | None = None,
        device: str = "cuda", layouts: Iterable[str] = LAYOUTS) -> list[dict[str, Any]]:
    """Time every provider side by side; one row per (shape, batch, dtype, layout, provider).

    Each provider runs the module its ``--backend`` runs (:func:`_providers`); ``layout`` is the
    input's, ``runner_layout`` whether the runner feeds that one (NCHW). ``torch.compile`` is
    timed on the runner's layout only (another layout would compile again). ``mb``: the bytes
    that row's path moves (``bytes_counted`` says how they were counted), the basis of its GB/s
    and roofline. ``device="cuda"`` is the benchmark. ``device="cpu"`` only exercises the harness
    (the Triton provider then needs ``TRITON_INTERPRET=1``; its times mean nothing)."""
    providers, layouts = list(providers), list(layouts)
    unknown = [p for p in providers if p not in PROVIDERS]
    if unknown:
        raise ValueError(f"expected providers from {PROVIDERS}, got {unknown}")
    bad = [v for v in layouts if v not in LAYOUTS]
    if bad:
        raise ValueError(f"expected layouts from {LAYOUTS}, got {bad}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KernelUnavailableError("GPU timing needs a CUDA GPU; without one, `kernels bench` reports the "
                                     "analytic FLOPs / bytes / launches and roofline estimates only")
    rows = []
    peak = DEVICES.get(int("".join(map(str, torch.cuda.get_device_capability(dev))))) if dev.type == "cuda" else None
    for shape in shapes:
        shape = SHAPES[shape] if isinstance(shape, str) else shape
        for batch in batches:
            flops = _flops(shape, batch)
            for dtype in dtypes:
                dt = DTYPES[dtype]
                x = torch.randn(batch, shape.cin, shape.height, shape.width, device=dev, dtype=dt)  # NCHW
                mods = _providers(shape, providers, dev, dt)
                with torch.no_grad():
                    ref = mods["torch"][0](x).float()
                eager_bytes = eager_traffic(shape, batch, dtype)["bytes"]
                for layout in layouts:
                    inp = x if layout == "nchw" else x.contiguous(memory_format=torch.channels_last)
                    base = None
                    for provider in providers:
                        if provider == "compile" and layout != RUNNER_LAYOUT:
                            continue
                        if progress:
                            progress(f"{shape.name} b{batch} {dtype} {layout} {provider}")
                        fn = mods[provider][0 if layout == "nchw" else 1]
                        if provider == "triton":
                            nbytes = fused_traffic(shape, batch, dtype, layout)["bytes"]
                            counted = "fused kernels' compulsory traffic" + (
                                ", with the NCHW -> channels-last copy of the input" if layout == "nchw" else "")
                        elif provider == "torch":
                            nbytes, counted = eager_bytes, "eager PyTorch's ATen ops, recorded on the meta device"
                        else:
                            nbytes = fused_traffic(shape, batch, dtype, "channels_last")["bytes"]
                            counted = ("the head's compulsory traffic (the fused kernels' on channels-last): "
                                       "a lower bound")
                        with torch.no_grad():
                            err = (fn(inp).float() - ref).abs().max().item()
                            times = time_calls(lambda: fn(inp), warmup, iters,
                                               cuda_device=dev if dev.type == "cuda" else None)
                        med = percentile(times, 50)
                        row = {"shape": shape.name, "batch": batch, "dtype": dtype, "provider": provider,
                               "layout": layout, "runner_layout": layout == RUNNER_LAYOUT, "device": str(dev),
                               "median_ms": med, "p10_ms": percentile(times, 10), "p90_ms": percentile(times, 90),
                               "iters": iters, "tflops": flops / med / 1e9, "mb": nbytes / 1e6,
                               "bytes_counted": counted, "gbs": nbytes / med / 1e6, "max_abs_diff_vs_torch": err}
                        if peak is not None:
                            row["roofline_ms"] = roofline_ms(flops, nbytes, peak, dtype)
                            row["fraction_of_roofline"] = row["roofline_ms"] / med
                        if provider == "torch":
                            base = med
                        row["speedup_vs_torch"] = base / med if base else None  # against torch on this layout
                        rows.append(row)
    return rows


def _providers(shape: HeadShape, providers: list[str], dev: torch.device, dt: torch.dtype
               ) -> dict[str, tuple[Callable, Callable]]:
    """(module for an NCHW input, module for a channels-last one) of each provider, as the runner
    builds it for its backend: the head cast to ``dt`` (torch: NCHW weights, as the runner keeps
    them; channels-last weights beside it), ``torch.compile`` of that head, the fused head fused
    in fp32 and then cast (one module: it takes either layout)."""
    head = build_head(shape).to(dev, dt)
    mods: dict[str, tuple[Callable, Callable]] = {
        "torch": (head, copy.deepcopy(head).to(memory_format=torch.channels_last))}
    if "compile" in providers:
        compiled = torch.compile(head)
        mods["compile"] = (compiled, compiled)
    if "triton" in providers:
        fused = fused_module(shape).to(dev, dt)
        mods["triton"] = (fused, fused)
    return mods
