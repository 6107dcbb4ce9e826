"""Where the Triton kernels can run: the one answer to "can Triton run here?".

Every caller asks :func:`triton_unavailable` (the CLI, the benchmarks, the CRF stage), every
kernel wrapper calls :func:`check_runnable` on its input and launches through :func:`launch`, so
the rules live in one place:

* Triton must be installed;
* under ``TRITON_INTERPRET=1`` the kernels run in Triton's interpreter on CPU tensors (tests),
  correct but far too slow to time;
* otherwise they are compiled for a CUDA GPU, need CUDA tensors and launch on their tensors'
  device.

Nothing here imports Triton, so asking is cheap.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable

import torch

from ..errors import KernelUnavailableError

__all__ = ["interpreting", "triton_unavailable", "check_runnable", "launch", "bucket", "label_pad"]


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (the kernels run in Triton's interpreter, on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable(device: str | torch.device, *, timing: bool = False) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (None when they can). With ``timing``, the
    interpreter does not count: it computes the right answer, but its times mean nothing."""
    device = torch.device(device)
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if interpreting():
        if device.type != "cpu":
            return (f"TRITON_INTERPRET=1 runs the kernels on CPU tensors, got {device}; unset it to compile them "
                    "for the GPU")
        if timing:
            return ("TRITON_INTERPRET=1 runs the kernels in Triton's interpreter, far too slow to time; unset it on "
                    "a CUDA GPU")
        return None
    if device.type != "cuda":
        return (f"the Triton kernels need a CUDA GPU (the input is on {device}); use --device cuda on a GPU machine, "
                "the torch backend, or TRITON_INTERPRET=1 to run them (slowly) on the CPU for testing")
    return None


def check_runnable(x: torch.Tensor) -> None:
    """Raise :class:`KernelUnavailableError` unless the kernels can run on ``x``'s device."""
    reason = triton_unavailable(x.device)
    if reason:
        raise KernelUnavailableError(reason)


def launch(kernel: Any, autotuned: Any, grid: Callable[[dict[str, Any]], tuple[int, ...]], device: torch.device,
           *args: Any, interpret: dict[str, Any], **kwargs: Any) -> None:
    """Launch a Triton kernel: the one place that decides how, so no wrapper can get it wrong.

    Compiled (a CUDA GPU): ``autotuned[grid](*args, **kwargs)`` inside ``torch.cuda.device(device)``.
    Triton launches on the *current* CUDA device, so without the guard a kernel given tensors on
    cuda:1 would run on cuda:0. The autotuner picks the block sizes and passes them to ``grid``
    in ``meta``.

    Interpreted (``TRITON_INTERPRET=1``, CPU tensors): the plain ``@triton.jit`` ``kernel`` on
    the fixed block sizes ``interpret`` (autotuning would only multiply the interpreter's cost),
    which may also override constexprs the interpreter needs set otherwise; no device guard.
    """
    if interpreting():
        meta = {**kwargs, **interpret}
        kernel[grid(meta)](*args, **meta)
        return
    with torch.cuda.device(device):
        autotuned[grid](*args, **kwargs)


def bucket(n: int) -> int:
    """The next power of two >= ``n`` (at least 1): what the autotuners key on instead of exact
    sizes, so a dataset of varied images tunes a handful of times, not once per image."""
    return 1 << max(int(n) - 1, 0).bit_length()


def label_pad(labels: int) -> int:
    """Labels padded to a power of two for the CRF tiles (``tl.arange`` needs one), at least 2.
    No CRF kernel uses ``tl.dot``, so there is no reason for the 16 a dot operand would need:
    21 labels use 32 lanes, 3 labels (after pruning) 4."""
    return max(2, bucket(labels))
