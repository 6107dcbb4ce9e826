"""The CPU INT8 model: ONNX Runtime's own static quantization (``quantize_static``), with
unsigned 8-bit activations and signed 8-bit per-channel weights — the combination ONNX
Runtime's x86/ARM int8 kernels run fast (symmetric s8 activations hit int16 saturation in its
AVX2 kernels). Fed the same preprocessed calibration images as everything else.

Its accuracy must not depend on the CPU, and ONNX Runtime's int8 kernels do not all compute the
same thing:

* x86 without VNNI multiplies u8 x s8 pairs with VPMADDUBSW, which adds two products into a
  *saturating* int16 (255 * 127 * 2 > 32767). 7-bit weights (``reduce_range``) cannot saturate,
  so they are chosen there; VNNI's VPDPBUSD (and AMX) accumulate in int32 and keep 8 bits.
* Some builds mis-run int8 convolutions on particular CPUs (onnxruntime#16105 on AVX2 AMD,
  onnxruntime#26324 on AVX-512 VNNI + AMX Xeons with 1.23). No setting avoids a kernel bug, so
  :func:`kernel_agreement` runs the model through this CPU's kernels and through the exact
  arithmetic (graph optimizations off) and ``calibrate``/``bench`` report the agreement, warning
  when they part.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeplab_edge.export import ort_session
from deeplab_edge.hostinfo import VNNI_FLAGS, cpu_flags
from deeplab_edge.interrupts import temp_dir
from deeplab_edge.outputs import atomic_path

from .qdq import tag_quantized

__all__ = ["quantize_cpu_int8", "calibration_reader", "cpu_features", "int8_settings", "kernel_agreement", "ORT_METHODS"]

# this project's --method -> ONNX Runtime's calibrator for the CPU model (it has no MSE or search)
ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "mse": "MinMax",
               "search": "MinMax"}


def cpu_features(cpuinfo: str | None = None, machine: str | None = None) -> dict[str, Any]:
    """The int8-relevant instruction sets of this CPU (Linux /proc/cpuinfo flags)."""
    machine = machine or platform.machine()
    flags = cpu_flags(cpuinfo)
    x86 = machine.lower() in ("x86_64", "amd64", "i686", "x86")
    return {"machine": machine, "x86": x86, "known": bool(flags), "avx2": "avx2" in flags,
            **{f: f in flags for f in sorted(VNNI_FLAGS)}}


def int8_settings(features: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime quantization settings for a CPU: 7-bit weights where u8 x s8 products can saturate."""
    vnni = any(features[f] for f in VNNI_FLAGS)
    if features["x86"] and not features["known"]:
        return {"reduce_range": True, "why": "x86 CPU of unknown instruction set: 7-bit weights, safe without VNNI"}
    if features["x86"] and not vnni:
        return {"reduce_range": True, "why": "x86 without VNNI: VPMADDUBSW's int16 sums of u8 x s8 pairs saturate "
                                             "with 8-bit weights; 7-bit weights cannot"}
    return {"reduce_range": False, "why": "VNNI/AMX (int32 accumulation)" if features["x86"] else
            f"{features['machine']}: int8 dot products accumulate in int32"}


def calibration_reader(onnx_path: str | Path, inputs: list[torch.Tensor]):
    """ONNX Runtime's CalibrationDataReader over preprocessed images (C, H, W), one per batch."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(inputs)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x[None].numpy()}

    return Reader()


def quantize_cpu_int8(fp32_path: str | Path, out_path: str | Path, inputs: list[torch.Tensor],
                      method: str = "minmax", reduce_range: bool | None = None) -> dict[str, Any]:
    """Write the CPU INT8 model; returns its settings (the ONNX Runtime calibrator, ``reduce_range``
    and why: chosen for this CPU when None)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in ORT_METHODS:
        raise ValueError(f"expected method in {tuple(ORT_METHODS)}, got {method!r}")
    features = cpu_features()
    settings = int8_settings(features) if reduce_range is None else {"reduce_range": reduce_range, "why": "asked"}
    cm = getattr(CalibrationMethod, ORT_METHODS[method])
    out_path = Path(out_path)
    with temp_dir(redirect=True) as work, atomic_path(out_path) as tmp:  # ORT's quantizer makes temp files too
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(tmp), calibration_reader(fp32_path, inputs), quant_format=QuantFormat.QDQ,
                        per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cm,
                        reduce_range=settings["reduce_range"], op_types_to_quantize=["Conv", "Add", "Concat", "Mul"])
        q = onnx.load(str(tmp))
        # its weight bits recorded, as the QDQ model's are: OpenVINO's runner reads them (saturation on x86 without VNNI)
        tag_quantized(q, "int8-cpu", {"method": method, "weight_bits": 7 if settings["reduce_range"] else 8},
                      like=onnx.load(str(fp32_path), load_external_data=False))
        onnx.save(q, str(tmp))
    return {"ort_calibration": ORT_METHODS[method], **settings, "cpu": features}


def kernel_agreement(model_path: str | Path, inputs: list[torch.Tensor]) -> float:
    """Fraction of output pixels whose argmax is the same through this CPU's ONNX Runtime int8 kernels
    (graph optimizations on) as through the model's exact arithmetic (optimizations off)."""
    fast, exact = ort_session(model_path, optimize=True), ort_session(model_path, optimize=False)
    name = fast.get_inputs()[0].name
    same = total = 0
    for x in inputs:
        feed = {name: x[None].numpy()}
        a, b = fast.run(None, feed)[0].argmax(1), exact.run(None, feed)[0].argmax(1)
        same += int(np.sum(a == b))
        total += a.size
    return same / max(total, 1)
