"""INT8 post-training calibration (imported as ``deeplab_edge.calibration``).

``calibrate`` (:mod:`.workflow`) turns an exported FP32 ONNX model and real images into:

1. ``calibration.cache`` — TensorRT's calibration cache (TensorRT 8.5-10, implicit INT8),
2. ``model_qdq.onnx`` — the TensorRT QDQ model (symmetric s8; TensorRT 10+/11's only INT8 route),
   whose accuracy is measured here by exact fake-quant emulation (ONNX Runtime, graph
   optimisations off),
3. ``model_cpu_int8.onnx`` — the CPU INT8 model (u8 activations / s8 weights) for ONNX Runtime, its
   settings chosen for this CPU and its kernels checked against its exact arithmetic (``cpu_int8.py``),
4. ``ranges.json`` — every tensor's max|x| and chosen threshold.

The stages (histograms -> thresholds -> bias correction -> QDQ) are :mod:`.pipeline`'s, shared with the PTQ
comparison (``deeplab_edge.bench.ptq``) and QAT (:mod:`.qat`). :data:`METHODS` is plain data
(:mod:`.methods`); the other names load their modules (and onnx) on first use, so that the CLI can list the
methods without importing onnx or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .methods import METHODS

# public name -> the submodule that defines it
_LAZY = {"calibrate": "workflow", "CalibrationConfig": "workflow", "check_keep_float": "workflow",
         "Calibrator": "pipeline", "Recipe": "pipeline",
         "read_trt_cache": "cache", "write_trt_cache": "cache", "check_cache_against_onnx": "cache",
         "check_trt_version": "cache", "insert_qdq": "qdq", "conv_nodes": "qdq"}

__all__ = ["METHODS", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
