"""Every Triton kernel against its PyTorch reference on one device, for each dtype: what a GPU
must show before any of its times mean something (``deeplab-edge kernels check``).

On a CUDA GPU the kernels are compiled for it (not interpreted) and run at DeepLab's real
sizes: the four head shapes of ``kernel_bench.SHAPES`` and the CRFs at 513 x 513 with 21
labels. On a CPU under ``TRITON_INTERPRET=1`` the same code runs at small sizes (``tiny``).
References: ``F.conv2d`` in float64 from the same dtype-rounded inputs (ASPP), the PyTorch
window and lattice mean-field steps in fp32 (CRF). Tolerances are the test suite's.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import torch

from deeplab_edge.crf import PRESETS, lattice_setup, lattice_step_reference
from deeplab_edge.errors import KernelUnavailableError
from deeplab_edge.kernels.device import triton_unavailable
from deeplab_edge.kernels.dtypes import DTYPES
from deeplab_edge.testing import KERNEL_TOLERANCES

from .kernel_bench import SHAPES, HeadShape

__all__ = ["check_kernels", "TINY_SHAPES", "CRF_TOLERANCE"]

#: Small stand-ins for the interpreter: same kinds, ragged sizes, every branch.
TINY_SHAPES = {s.name: s for s in [
    HeadShape("v2-tiny", "v2", 24, 9, 7, (1, 2, 3, 4), 21),
    HeadShape("v3-tiny", "v3", 32, 7, 9, (1, 2, 3), 24),
    HeadShape("v3-mobilenet-tiny", "v3", 20, 5, 5, (), 16),
]}

#: (atol, rtol) on probabilities: fp32 sums in another order (atomic splat, 2-D window).
CRF_TOLERANCE = (1e-5, 1e-4)

def _row(kernel: str, shape: str, dtype: str, got: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float,
         seconds: float) -> dict[str, Any]:
    diff = (got.double() - ref.double()).abs()
    allowed = atol + rtol * ref.double().abs()
    return {"kernel": kernel, "shape": shape, "dtype": dtype, "max_abs_err": float(diff.max()),
            "worst_ratio": float((diff / allowed).max()), "atol": atol, "rtol": rtol,
            "ok": bool((diff <= allowed).all()), "seconds": seconds}


def _aspp_rows(shape: HeadShape, dtype: str, dev: torch.device, gen: torch.Generator) -> list[dict[str, Any]]:
    from deeplab_edge.kernels import aspp as A

    dt = DTYPES[dtype]
    atol, rtol = KERNEL_TOLERANCES[dt]
    x = torch.randn(1, shape.cin, shape.height, shape.width, generator=gen).to(dev, dt)
    k = 3
    if shape.kind == "v2":
        ws = [(torch.randn(shape.cout, shape.cin, k, k, generator=gen) / (shape.cin * 9) ** 0.5).to(dev, dt)
              for _ in shape.rates]
        bs = [torch.randn(shape.cout, generator=gen).to(dev) for _ in shape.rates]
        t = time.perf_counter()
        got = A.aspp_sum(x, A.pack_weights(ws), torch.stack(bs).sum(0), shape.rates)
        _sync(dev)
        dt_s = time.perf_counter() - t
        ref = A.aspp_sum_reference(x.double(), [w.double() for w in ws], [b.double() for b in bs], shape.rates)
        return [_row("aspp.sum", shape.name, dtype, got, ref, atol, rtol, dt_s)]
    ws = [(torch.randn(shape.cout, shape.cin, 1, 1, generator=gen) / shape.cin ** 0.5).to(dev, dt)]
    ws += [(torch.randn(shape.cout, shape.cin, k, k, generator=gen) / (shape.cin * 9) ** 0.5).to(dev, dt)
           for _ in shape.rates]
    bs = [torch.randn(shape.cout, generator=gen).to(dev) for _ in ws]
    t = time.perf_counter()
    got = A.aspp_branches(x, A.pack_weights(ws), torch.cat(bs), shape.rates, shape.cout)
    _sync(dev)
    dt_s = time.perf_counter() - t
    ref = A.aspp_branches_reference(x.double(), [w.double() for w in ws], [b.double() for b in bs], shape.rates)
    return [_row("aspp.branches", shape.name, dtype, got, ref, atol, rtol, dt_s)]


def _crf_inputs(h: int, w: int, labels: int, dev: torch.device, gen: torch.Generator):
    """A smooth image with edges (so the bilateral weights vary) and marginals that are not the
    unary's softmax (so the messages matter)."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    img = torch.stack([(xx * 7 + yy * 3) % 256, 128 + 100 * torch.sin(xx / 9) * (yy > h / 2),
                       (yy * 5) % 256], -1).clamp(0, 255).to(torch.uint8)
    unary = -torch.log_softmax(torch.randn(labels, h, w, generator=gen) * 2, 0)
    q = torch.softmax(-unary + 2.0 * torch.randn(labels, h, w, generator=gen), 0)
    return img.to(dev), unary.to(dev), q.to(dev)


def _crf_rows(h: int, w: int, labels: int, dev: torch.device, gen: torch.Generator) -> list[dict[str, Any]]:
    from deeplab_edge.kernels import crf_lattice as KL
    from deeplab_edge.kernels import crf_window as KW

    atol, rtol = CRF_TOLERANCE
    img, unary, q = _crf_inputs(h, w, labels, dev, gen)
    name = f"{h}x{w}x{labels}"
    rows = []
    for preset in ("deeplab-v1", "deeplab-v2"):  # the separable spatial route (v1's large window) and the 2-D one
        p = PRESETS[preset]
        ref = lattice_step_reference(img, unary, q, p)
        setup = lattice_setup(img, p)
        t = time.perf_counter()
        got = KL.lattice_step(setup, unary, q, p)
        _sync(dev)
        route = "separable" if KL.separable_spatial(setup.gauss.numel() // 2, labels) else "2-D window"
        rows.append(_row(f"crf.lattice_step ({route})", name, "fp32", got, ref, atol, rtol, time.perf_counter() - t))
    chw = img.permute(2, 0, 1).float().contiguous()
    nb, ns = KW.window_norms(chw, p)
    t = time.perf_counter()
    nb_t, ns_t = KW.window_norms_triton(chw, p)
    _sync(dev)
    dt_s = time.perf_counter() - t
    rows.append(_row("crf.window_norms", name, "fp32", torch.stack([nb_t, ns_t]), torch.stack([nb, ns]),
                     1e-6, 1e-5, dt_s))
    ref = KW.crf_step_reference(chw, unary, q, nb, ns, p)
    t = time.perf_counter()
    got = KW.crf_step(chw, unary, q, nb, ns, p)
    _sync(dev)
    rows.append(_row("crf.window_step", name, "fp32", got, ref, atol, rtol, time.perf_counter() - t))
    return rows


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def check_kernels(device: str | torch.device = "cuda", dtypes: Iterable[str] = ("fp32", "fp16", "bf16"), *,
                  tiny: bool = False, crf_size: tuple[int, int] | None = None, labels: int = 21,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every kernel against its reference; ``ok`` is True when every row is within tolerance.

    ``tiny``: small shapes (the interpreter on a CPU); otherwise DeepLab's real head shapes and
    the CRFs at ``crf_size`` (default 513 x 513). Times include the first launch (compilation
    and autotuning): this is a correctness check, not a benchmark."""
    dev = torch.device(device)
    reason = triton_unavailable(dev)
    if reason:
        raise KernelUnavailableError(reason)
    dtypes = list(dtypes)
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise ValueError(f"expected dtypes from {list(DTYPES)}, got {unknown}")
    gen = torch.Generator().manual_seed(0)
    shapes = TINY_SHAPES if tiny else SHAPES
    h, w = crf_size or ((24, 32) if tiny else (513, 513))
    rows: list[dict[str, Any]] = []
    for shape in shapes.values():
        for dtype in dtypes:
            if progress:
                progress(f"aspp {shape.name} {dtype}")
            rows += _aspp_rows(shape, dtype, dev, gen)
    if progress:
        progress(f"crf {h}x{w}")
    rows += _crf_rows(h, w, labels, dev, gen)
    return {"device": str(dev), "interpreted": dev.type == "cpu", "rows": rows, "ok": all(r["ok"] for r in rows)}
