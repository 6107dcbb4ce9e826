"""Precision names and the torch dtypes they stand for: the one table.

``--precision`` (:class:`~deeplab_edge.runtime.pytorch.TorchRunner`), ``kernels check``,
``kernels compile`` and the kernel benchmark all name dtypes ``fp32`` / ``fp16`` / ``bf16``;
Triton names them the same (``*fp16`` pointers in a compile signature). It imports only torch,
so the runtime, the benchmarks and :mod:`.compile` (which imports without Triton) can all read it.
"""

from __future__ import annotations

import torch

__all__ = ["DTYPES"]

#: Precision name -> torch dtype, in the order the CLI and error messages list them.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
