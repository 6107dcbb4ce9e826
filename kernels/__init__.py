"""Triton kernels (imported as ``deeplab_edge.kernels``).

* :mod:`~deeplab_edge.kernels.aspp` — fused ASPP (DeepLab-v2 sum, DeepLab-v3 branches and
  projection), :func:`fuse_aspp` to swap them into a model, and the PyTorch references.
* :mod:`~deeplab_edge.kernels.crf_lattice` — the permutohedral-lattice dense CRF (``--crf triton``:
  the PyTorch lattice's math, one fused launch per mean-field iteration plus one per blur axis).
* :mod:`~deeplab_edge.kernels.crf_window` — the truncated-window dense CRF (``--crf triton-window``:
  one launch per iteration) and its PyTorch reference.
* :mod:`~deeplab_edge.kernels.compile` — compile every kernel config for sm_87 / sm_90 on
  a machine without a GPU and read registers, spills, shared memory and occupancy.

Triton is imported when one of these is first used, so importing the package is cheap.
Set ``TRITON_INTERPRET=1`` before that to run the kernels on CPU tensors (tests).
"""

from __future__ import annotations

from typing import Any

__all__ = ["fuse_aspp", "FusedASPP", "FusedASPPSum"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import aspp

        return getattr(aspp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
