"""Run a serialized TensorRT engine from ``deeplab-edge build`` as a runner (TensorRT 8.5-11).

The manifest beside the engine is checked against the GPU it is to run on before TensorRT sees
the engine; the engine code itself is TensorRT's tensor-name API (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) on torch CUDA buffers. Everything — the TensorRT
runtime, the execution context, the stream and the buffers — lives on that one device
(``device``: ``cuda:N``; by default the current CUDA device), whichever device is current when
the runner is called.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import file_sha256
from ..data.preprocess import Preprocess
from ..engine import (check_compatibility, engine_device_index, import_tensorrt, manifest_path, read_manifest,
                      this_machine)
from ..errors import EngineError

__all__ = ["EngineRunner"]


class EngineRunner:
    """A serialized TensorRT engine as a runner: float32 NCHW batch -> NCHW logits (torch CUDA), or the NHW
    label map of an engine built with ``--emit labels``.

    The manifest beside the engine (``<engine>.json``) gives the preprocessing and classes and
    is checked against the GPU ``device`` (``cuda:N``, ``cuda`` or ``auto``/None: the current
    CUDA device) before TensorRT deserializes the engine there."""

    def __init__(self, path: str | Path, device: str | int | torch.device | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{path}: engine not found; build one with `deeplab-edge build`")
        self.manifest = read_manifest(manifest_path(path))
        if (self.manifest.get("engine") or {}).get("sha256") not in (None, file_sha256(path)):
            raise EngineError(f"{path}: the engine does not match its manifest (sha256); rebuild both with "
                              "`deeplab-edge build`")
        index = engine_device_index(device)
        problems = check_compatibility(self.manifest, this_machine(index), device=index)
        if problems:
            raise EngineError(f"{path}: cannot run here: {problems[0]}")
        trt = import_tensorrt()
        self.trt = trt
        self.device = torch.device("cuda", index)
        with torch.cuda.device(self.device):  # TensorRT takes the current CUDA device for all of these
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise EngineError(f"{path}: TensorRT could not deserialize the engine; rebuild it on this machine")
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{path}: TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"{path}: expected one input and one output tensor, got {inputs} -> {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(self.input_name)))).dtype
        self.output_dtype = torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(self.output_name)))).dtype
        #: an engine built with `build --emit labels` outputs the label map [N, H, W] (integers), not logits
        self.outputs_labels = not self.output_dtype.is_floating_point
        self.output_itemsize = self.output_dtype.itemsize  # what the engine hands the host per element
        self.stream = torch.cuda.Stream(device=self.device)
        self.preprocess = Preprocess.from_dict(self.manifest["preprocess"])
        self.num_classes = int(self.manifest["num_classes"])
        self.classes = list(self.manifest.get("classes") or [])
        m = self.manifest
        self.info = {"backend": "tensorrt", "engine": str(path), "arch": m.get("arch"), "tensorrt": m.get("tensorrt"),
                     "gpu": (m.get("gpu") or {}).get("name"), "precision": m.get("precision"), "device": str(self.device)}

    def synchronize(self) -> None:
        self.stream.synchronize()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.device):
            x = batch.to(self.device, self.input_dtype, non_blocking=True).contiguous()
            ctx = self.context
            if not ctx.set_input_shape(self.input_name, tuple(x.shape)):
                raise EngineError(f"input shape {tuple(x.shape)} is outside the engine's optimization profile "
                                  f"(manifest: {(self.manifest.get('input') or {}).get('shapes')})")
            out = torch.empty(tuple(ctx.get_tensor_shape(self.output_name)), dtype=self.output_dtype,
                              device=self.device)
            ctx.set_tensor_address(self.input_name, x.data_ptr())
            ctx.set_tensor_address(self.output_name, out.data_ptr())
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the copy of the input
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise EngineError("TensorRT failed to run the engine (execute_async_v3 returned False)")
            self.stream.synchronize()
            return out.long() if self.outputs_labels else out.float()
