"""Run an exported (or quantized) deeplab-edge ONNX model with ONNX Runtime as a runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.preprocess import Preprocess
from ..errors import DeepLabEdgeError
from ..export import ort_session, read_metadata

__all__ = ["OnnxRunner", "OnnxInputError", "check_image_input", "check_segmenter_metadata"]

_FLOAT_INPUTS = ("tensor(float)", "tensor(float16)")


class OnnxInputError(DeepLabEdgeError, RuntimeError):
    """An ONNX model whose inputs are not one image batch (N x 3 x H x W, float): it cannot run as a segmenter."""


def _describe(inp) -> str:
    dims = "x".join(str(d) if isinstance(d, int) else (d or "?") for d in inp.shape)
    return f"{inp.name!r} {dims or 'scalar'} {inp.type.removeprefix('tensor(').removesuffix(')')}"


def check_image_input(path: Path, inputs) -> None:
    """Refuse a model whose graph inputs are not exactly one float image batch N x 3 x H x W."""
    found = ", ".join(_describe(i) for i in inputs) or "none"
    fix = "export the segmentation model with `deeplab-edge export` (one input, N x 3 x H x W float)"
    if len(inputs) != 1:
        raise OnnxInputError(f"{path}: {len(inputs)} inputs ({found}), not one image input N x 3 x H x W; {fix}")
    shape = inputs[0].shape
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3) or inputs[0].type not in _FLOAT_INPUTS:
        raise OnnxInputError(f"{path}: its input is {found}, not an image batch N x 3 x H x W of floats; {fix}")


def check_segmenter_metadata(path: Path, meta: dict) -> dict:
    """``meta`` (an ONNX file's deeplab-edge metadata), refused when it lacks what a runner needs to segment:
    the class count and the preprocessing."""
    if "num_classes" not in meta or "preprocess" not in meta:
        raise DeepLabEdgeError(f"{path}: no deeplab-edge metadata (classes, preprocessing); export it with "
                               "`deeplab-edge export`")
    return meta


class OnnxRunner:
    """``optimize=False`` disables ONNX Runtime's graph optimisations, which runs QDQ models as
    exact fake-quant arithmetic instead of fusing them into ORT's own int8 kernels; the default
    does that for TensorRT QDQ models (metadata precision ``int8-qdq-tensorrt``) only."""

    def __init__(self, path: str | Path, *, optimize: bool | None = None, threads: int | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise DeepLabEdgeError(f"{path}: ONNX model not found; create one with `deeplab-edge export`")
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise DeepLabEdgeError("running .onnx models needs onnxruntime; pip install onnxruntime") from e

        try:
            meta = read_metadata(path)
            if optimize is None:  # TensorRT QDQ models: exact fake-quant arithmetic, not ORT's int8 kernels
                optimize = meta.get("precision") != "int8-qdq-tensorrt"
            self.optimize = optimize
            self.session = ort_session(path, optimize=optimize, threads=threads)
        except DeepLabEdgeError:
            raise
        except Exception as e:
            raise DeepLabEdgeError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:160]}); pass a file "
                                   "from `deeplab-edge export` or `calibrate`") from e
        check_segmenter_metadata(path, meta)
        check_image_input(path, self.session.get_inputs())
        self.meta = meta
        self.num_classes = int(meta["num_classes"])
        self.classes = list(meta.get("classes") or [])
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        #: a model from `export --emit labels`: it returns label maps [N, H, W], not logits
        self.outputs_labels = meta.get("output") == "labels"
        #: bytes per element of what the model hands the host (float32 logits, int32 or uint8 labels...)
        self.output_itemsize = _ITEMSIZE.get(self.session.get_outputs()[0].type)
        self.info = {"backend": "onnxruntime", "onnx": str(path), "arch": meta.get("arch"),
                     "provider": self.session.get_providers()[0], "precision": meta.get("precision"),
                     "ort_graph_optimizations": self.optimize, "calibration": _calibration_summary(meta.get("calibration")),
                     "output": "labels" if self.outputs_labels else "logits"}

    def synchronize(self) -> None:
        """ONNX Runtime's run() returns when its outputs are ready."""

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits [N, C, H, W] (float32), or for a label model its label maps [N, H, W] (int64)."""
        x = batch.float().numpy().astype(self.input_dtype)
        if self.fixed_batch is not None and x.shape[0] != self.fixed_batch:
            out = np.concatenate([self.session.run(None, {self.input_name: x[i:i + 1]})[0] for i in range(x.shape[0])])
        else:
            out = self.session.run(None, {self.input_name: x})[0]
        return torch.from_numpy(out.astype(np.int64 if self.outputs_labels else np.float32, copy=False))


_ITEMSIZE = {"tensor(float)": 4, "tensor(float16)": 2, "tensor(double)": 8, "tensor(int64)": 8, "tensor(int32)": 4,
             "tensor(uint8)": 1, "tensor(int8)": 1, "tensor(uint16)": 2, "tensor(int16)": 2}


def _calibration_summary(cal: dict | None) -> dict | None:
    """The model's calibration record with its image digests counted, not listed (``eval`` compares them)."""
    if not cal:
        return cal
    out = {k: v for k, v in cal.items() if k != "images_sha1"}
    if "images_sha1" in cal:
        out["images"] = len(cal["images_sha1"])
    return out
