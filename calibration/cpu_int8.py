"""The CPU INT8 model: ONNX Runtime's own static quantization (``quantize_static``), with
unsigned 8-bit activations and signed 8-bit per-channel weights — the combination ONNX
Runtime's x86/ARM int8 kernels run fast (symmetric s8 activations hit int16 saturation in its
AVX2 kernels). Fed the same preprocessed calibration images as everything else."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from deeplab_edge.outputs import atomic_path

__all__ = ["quantize_cpu_int8"]


def quantize_cpu_int8(fp32_path: str | Path, out_path: str | Path, inputs: list[torch.Tensor],
                      method: str = "minmax") -> Path:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(inputs)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {name: x[None].numpy()}

    cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
          "percentile": CalibrationMethod.Percentile}.get(method, CalibrationMethod.MinMax)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as work, atomic_path(out_path) as tmp:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cm,
                        op_types_to_quantize=["Conv", "Add", "Concat", "Mul"])
        # carry deeplab-edge's metadata over
        src, q = onnx.load(str(fp32_path)), onnx.load(str(tmp))
        del q.metadata_props[:]
        for p in src.metadata_props:
            e = q.metadata_props.add()
            e.key, e.value = p.key, p.value if p.key != "deeplab_edge.precision" else '"int8-cpu"'
        onnx.save(q, str(tmp))
    return out_path
