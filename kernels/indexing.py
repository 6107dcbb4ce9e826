"""Index arithmetic shared by the CRF kernels, in int64 wherever a product can pass 2^31.

``L x H x W`` passes 2^31 at 256 labels and 8.4 M pixels; lattice rows ``vertices x L`` sooner
(up to about ``(d + 1) x H x W`` vertices). Products of that kind go through these helpers, so
one test at the boundary (under ``TRITON_INTERPRET=1``, small blocks) covers every kernel that
uses them. Pixel counts themselves stay int32: :func:`check_pixels` refuses images whose
``planes x H x W`` would not fit (the CRF kernels' colour and corner planes; the ASPP kernel's
channels, whose offsets inside one image are int32).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["plane_offsets", "row_offsets", "check_pixels", "INT32_MAX"]

INT32_MAX = 2 ** 31 - 1


@triton.jit
def plane_offsets(L_PAD: tl.constexpr, hw):
    """[L_PAD, 1] int64 offsets of label planes of ``hw`` elements each."""
    return tl.arange(0, L_PAD)[:, None].to(tl.int64) * hw


@triton.jit
def row_offsets(rows, width):
    """int64 ``rows * width`` (lattice vertex rows of ``width`` labels)."""
    return rows.to(tl.int64) * width


def check_pixels(h: int, w: int, planes: int, what: str, unit: str = "planes") -> None:
    """Refuse an image whose ``planes`` int32-indexed planes of H x W would overflow (the colour
    image's 3 planes, the lattice's d + 1 corner planes, an ASPP feature map's channels)."""
    if planes * h * w > INT32_MAX:
        raise ValueError(f"{what}: {h}x{w} pixels x {planes} {unit} pass the kernels' int32 pixel indices "
                         f"(2^31); split the image into tiles of under {INT32_MAX // planes:,} pixels")
