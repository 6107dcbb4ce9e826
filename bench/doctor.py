"""``deeplab-edge doctor``: what this machine has and which bench backends work here."""

from __future__ import annotations

from typing import Any

import torch

from deeplab_edge.runtime import resolve_device

from .env import environment
from .harness import BACKENDS, select_backends
from .power import JtopSampler, TegrastatsSampler

__all__ = ["machine_report"]


def machine_report() -> dict[str, Any]:
    """The machine (``environment()``), PyTorch's CUDA/cuDNN, ONNX Runtime's providers, the power
    telemetry bench will use, and every bench backend with whether it works here (and why not)."""
    info: dict[str, Any] = {"environment": environment(),
                            "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                                      "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                                      else None, "cuda_available": torch.cuda.is_available()}}
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime_providers"] = None
    # bench uses jetson-stats when its service answers, else tegrastats
    info["power_telemetry"] = ("jetson-stats (installed)" if JtopSampler().available else
                               "tegrastats" if TegrastatsSampler().available else None)
    run, skipped = select_backends("all", resolve_device("auto"), tflite=True)
    status = {b.name: {"ok": True} for b in run}
    status.update({s["backend"]: {"ok": False, "reason": s["reason"]} for s in skipped})
    info["backends"] = {n: status[n] for n in BACKENDS}
    return info
