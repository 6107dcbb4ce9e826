"""Run a deeplab-edge ONNX model (FP32 export or TensorRT QDQ model, unchanged) with OpenVINO's CPU plugin.

OpenVINO reads the QDQ pairs of the TensorRT model as its own INT8 recipe (FakeQuantize) and runs the
quantized Convs in int8 on x86; the rest runs at the precision hint (``f32``, or ``bf16`` where the CPU has it).
What it really ran is read back from the compiled model's runtime graph (each node's ``runtimePrecision``) and
reported in ``info["runtime_precisions"]``, so a model that fell back to float says so.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..data.preprocess import Preprocess
from ..errors import DeepLabEdgeError
from ..export import read_metadata
from ..hostinfo import cpu_flags, int8_saturates
from .onnx import check_image_input, check_segmenter_metadata

__all__ = ["OpenVinoRunner", "openvino_unavailable", "HINTS"]

#: the bench's precision names -> OpenVINO's INFERENCE_PRECISION_HINT
HINTS = {"fp32": "f32", "bf16": "bf16"}
#: node types that carry no arithmetic worth counting (inputs, constants, layout changes, outputs)
_PLUMBING = {"Input", "Parameter", "Const", "Constant", "Output", "Result", "Reorder", "Reshape"}


def openvino_unavailable() -> str | None:
    """Why OpenVINO cannot run here, or None."""
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'deeplab-edge[openvino]')"
    return None


class OpenVinoRunner:
    """``precision``: ``fp32`` (hint f32: every float op in float32) or ``bf16`` (hint bf16; refused where the CPU
    has no native bf16). A QDQ model's quantized ops run in int8 either way. ``threads``: OpenVINO's
    inference threads (default: its own choice, all cores)."""

    def __init__(self, path: str | Path, *, precision: str = "fp32", threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise DeepLabEdgeError(f"{path}: ONNX model not found; create one with `deeplab-edge export`")
        reason = openvino_unavailable()
        if reason:
            raise DeepLabEdgeError(f"running {path.name} with OpenVINO: {reason}")
        if precision not in HINTS:
            raise DeepLabEdgeError(f"OpenVINO precision {precision!r}: use {' or '.join(HINTS)}")
        import openvino as ov

        try:
            meta = read_metadata(path)
        except Exception as e:  # onnx's DecodeError and the like for a file that is no ONNX model
            raise DeepLabEdgeError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:160]}); pass a file "
                                   "from `deeplab-edge export` or `calibrate`") from e
        check_segmenter_metadata(path, meta)
        core = ov.Core()
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision == "bf16" and "BF16" not in caps:
            raise DeepLabEdgeError("this CPU has no native bf16 for OpenVINO (OPTIMIZATION_CAPABILITIES "
                                   f"{', '.join(caps)}); use ov-fp32")
        config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:  # OpenVINO raises plain RuntimeErrors for models it cannot read or compile
            raise DeepLabEdgeError(f"{path}: OpenVINO could not compile it ({_reason(e)[:160]})") from e
        check_image_input(path, [_Port(i) for i in self.compiled.inputs])
        if len(self.compiled.outputs) != 1:
            raise DeepLabEdgeError(f"{path}: {len(self.compiled.outputs)} outputs, not one; export it with "
                                   "`deeplab-edge export`")
        self.request = self.compiled.create_infer_request()
        self.meta = meta
        self.num_classes = int(meta["num_classes"])
        self.classes = list(meta.get("classes") or [])
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        self.outputs_labels = meta.get("output") == "labels"
        out_type = self.compiled.outputs[0].get_element_type()
        self.output_itemsize = out_type.size
        self.runtime_precisions = runtime_precisions(self.compiled)
        weight_bits = (meta.get("calibration") or {}).get("weight_bits", 8)
        # a quantized model (its recorded precision) whose convolutions run int8: an FP32 model's runtime graph may
        # hold an i8/u8 node or two (input conversions) and is never at risk
        int8 = str(meta.get("precision", "")).startswith("int8") and \
            any(p in ("i8", "u8") for p in self.runtime_precisions)
        #: why this model's int8 results may be off on this CPU (None where they are not)
        cpu = "an x86 CPU without VNNI" if cpu_flags() else "an x86 CPU whose flags are unknown (VNNI not confirmed)"
        self.saturation = (f"{path.name} runs int8 Convs with {weight_bits}-bit weights on {cpu}: "
                           "their int16 pair sums can saturate (OpenVINO's saturation issue) and cost accuracy; "
                           "for OpenVINO here, calibrate with --weight-bits 7") \
            if int8 and weight_bits == 8 and int8_saturates() else None
        self.info = {"backend": "openvino", "onnx": str(path), "arch": meta.get("arch"),
                     "precision": meta.get("precision"), "precision_hint": HINTS[precision],
                     "threads": self.compiled.get_property("INFERENCE_NUM_THREADS"),
                     "openvino": ov.__version__, "runtime_precisions": self.runtime_precisions,
                     "int8_saturation": self.saturation,
                     "output": "labels" if self.outputs_labels else "logits"}

    def synchronize(self) -> None:
        """A synchronous infer() returns when its outputs are ready."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits [N, C, H, W] (float32), or for a label model its label maps [N, H, W] (int64)."""
        x = np.ascontiguousarray(batch.float().numpy())
        out = self.request.infer({0: x})[self.compiled.outputs[0]]
        return torch.from_numpy(np.asarray(out).astype(np.int64 if self.outputs_labels else np.float32))


#: OpenVINO element types -> ONNX Runtime's type names (what check_image_input reads)
_ONNX_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "i64": "tensor(int64)",
               "i32": "tensor(int32)", "u8": "tensor(uint8)", "i8": "tensor(int8)"}


def _reason(e: Exception) -> str:
    """OpenVINO's message without its source locations ("Exception from src/...", "Check '...' failed at ...")."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '"))]
    return (said or lines or [type(e).__name__])[0]


class _Port:
    """An OpenVINO input port seen as ONNX Runtime's NodeArg (name, shape with None for dynamic dims, type)."""

    def __init__(self, port) -> None:
        names = port.get_names()
        self.name = port.get_any_name() if names else "input"
        ps = port.get_partial_shape()  # of dynamic rank: no dims to list (refused as not N x 3 x H x W)
        self.shape = [d.get_length() if d.is_static else None for d in ps] if ps.rank.is_static else []
        kind = port.get_element_type().get_type_name()
        self.type = _ONNX_TYPES.get(kind, f"tensor({kind})")


def runtime_precisions(compiled) -> dict[str, int]:
    """How many arithmetic nodes of the compiled runtime graph ran at each precision (``i8``, ``u8``, ``f32``,
    ``bf16``...), from each node's ``runtimePrecision``; inputs, constants, reorders and outputs left out."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        kind = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if kind in _PLUMBING or "runtimePrecision" not in rt:
            continue
        counts[rt["runtimePrecision"].astype(str).lower()] += 1
    return dict(sorted(counts.items()))
