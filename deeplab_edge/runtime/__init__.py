"""One path from a model file to something that runs: :func:`open_runner`.

A *runner* maps a preprocessed float32 NCHW batch to NCHW logits at the same height and width,
whatever runs it. Every runner carries what is needed around it:

* ``preprocess`` — the model's :class:`~deeplab_edge.data.Preprocess` (from the checkpoint, the
  ONNX metadata, the TFLite graph or the engine manifest),
* ``num_classes`` and ``classes`` (class names; empty where the file has none),
* ``info`` — what it is, for reports (backend, file, precision, device...),
* ``synchronize()`` — wait for queued device work (a no-op on the CPU).

Backends: ``torch`` (eager), ``compile`` (``torch.compile``), ``triton`` (PyTorch with the fused
Triton ASPP) for checkpoints; ``onnxruntime`` for ``.onnx`` exports (QDQ models run as exact
fake-quant arithmetic); ``openvino`` for the same ``.onnx`` files on OpenVINO's CPU plugin (a QDQ model's
Convs in real int8); ``litert`` for ``.tflite`` models; ``tensorrt`` for engines from
``deeplab-edge build``. ``auto`` picks by the file's suffix.

:mod:`.spec` holds a whole model as the CLI names it (the file, the CRF after the network,
test-time scales) in one :class:`~.spec.ModelSpec`, and opens it as a Segmenter.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any, Protocol

import torch

from ..checkpoint import load_checkpoint
from ..data.preprocess import Preprocess
from ..errors import DeepLabEdgeError
from ..kernels.device import triton_unavailable
from .litert import TFLiteRunner
from .onnx import OnnxRunner
from .openvino import OpenVinoRunner
from .pytorch import TorchRunner
from .tensorrt import EngineRunner

__all__ = ["Runner", "open_runner", "live_runners", "resolve_device", "backend_for", "BACKENDS", "SUFFIXES"]

#: every runner open_runner made that is still alive (its sessions, thread pools and device memory with it)
_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()


def live_runners() -> list[Any]:
    """The runners :func:`open_runner` made that are still alive, after a garbage collection (a runner kept
    only by a reference cycle is released first). A benchmark times one of them at a time: another live
    ONNX Runtime session spins its threads after each call and takes the cores from the one being timed."""
    gc.collect()
    return list(_LIVE)

BACKENDS = ("torch", "compile", "triton", "onnxruntime", "openvino", "litert", "tensorrt")
SUFFIXES = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".tflite": "litert", ".engine": "tensorrt",
            ".plan": "tensorrt"}
_TORCH_FAMILY = ("torch", "compile", "triton")


class Runner(Protocol):
    preprocess: Preprocess
    num_classes: int
    classes: list[str]
    info: dict[str, Any]

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...

    def synchronize(self) -> None: ...


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> the CUDA GPU if there is one, else the CPU; a CUDA device without CUDA is an error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeepLabEdgeError(f"device {name!r} asked for, but this PyTorch has no CUDA GPU; use --device cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise DeepLabEdgeError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from e
    if dev.type not in ("cpu", "cuda"):  # mps, xpu, meta...: devices PyTorch names but this toolkit does not run on
        raise DeepLabEdgeError(f"device {name!r} is not supported; use cpu, cuda or cuda:N (or auto)")
    return dev


def backend_for(path: str | Path) -> str:
    """The backend that runs a model file, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise DeepLabEdgeError(f"{path}: unknown model file type {suffix or '(none)'!r}; give a checkpoint (.pt/.pth), "
                               "an ONNX export (.onnx), a TFLite model (.tflite) or a TensorRT engine (.engine)")
    return SUFFIXES[suffix]


def open_runner(path: str | Path, *, backend: str = "auto", precision: str = "fp32",
                device: str | torch.device = "auto", threads: int | None = None, arch: str | None = None,
                input_size: int | None = None, output_stride: int | None = None) -> Runner:
    """A runner for the model file at ``path``.

    ``precision`` applies to the PyTorch backends and is OpenVINO's float precision hint (``fp32``, ``bf16``;
    other exported models and engines carry their own);
    ``device`` to the PyTorch backends and to engines (the GPU an engine runs on; ``auto``: the current
    one); ``threads`` to PyTorch's and ONNX Runtime's intra-op pools and LiteRT;
    ``arch`` names the architecture of a plain state dict; ``input_size`` overrides a checkpoint's
    input side (resize long side + pad); ``output_stride`` runs a checkpoint's weights at another
    output stride (``models.restride_config``)."""
    runner = _open_runner(Path(path), backend, precision, device, threads, arch, input_size, output_stride)
    _LIVE.add(runner)
    return runner


def _open_runner(path: Path, backend: str, precision: str, device, threads, arch, input_size, output_stride):
    backend = backend_for(path) if backend == "auto" else backend
    if backend not in BACKENDS:
        raise DeepLabEdgeError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    expected = "torch" if backend in _TORCH_FAMILY else "onnxruntime" if backend == "openvino" else backend
    if path.suffix.lower() in SUFFIXES and SUFFIXES[path.suffix.lower()] != expected:
        raise DeepLabEdgeError(f"{path}: a {path.suffix} file cannot run on the {backend} backend; give the "
                               f"{', '.join(s for s, b in SUFFIXES.items() if b == expected)} file it needs")
    if backend not in _TORCH_FAMILY:
        if input_size is not None:
            raise DeepLabEdgeError(f"--input-size cannot change a {backend} model's fixed input; re-export it "
                                   "with the size you need")
        if precision != "fp32" and not (backend == "openvino" and precision == "bf16"):
            raise DeepLabEdgeError(f"a {backend} model's precision is fixed when it is made; drop --precision"
                                   + (" (OpenVINO takes bf16 as its float precision hint)" if backend == "openvino"
                                      else ""))
        if output_stride is not None:
            raise DeepLabEdgeError(f"a {backend} model's output stride is fixed when it is made; export it with "
                                   "--output-stride instead")
    if backend in _TORCH_FAMILY:
        return _torch_runner(path, backend, precision, device, threads, arch, input_size, output_stride)
    if backend == "onnxruntime":
        return OnnxRunner(path, threads=threads)
    if backend == "openvino":
        return OpenVinoRunner(path, precision=precision, threads=threads)
    if backend == "litert":
        return TFLiteRunner(path, num_threads=threads)
    return EngineRunner(path, device=None if str(device) == "auto" else device)  # the engine's GPU


def _torch_runner(path: Path, backend: str, precision: str, device, threads, arch, input_size, output_stride=None):
    dev = resolve_device(device)
    if backend == "triton":
        reason = triton_unavailable(dev)
        if reason:
            raise DeepLabEdgeError(f"--backend triton: {reason}")
    if threads:
        torch.set_num_threads(threads)
    loaded = load_checkpoint(path, arch=arch, output_stride=output_stride)
    pre = dict(loaded.meta.get("preprocess") or {})
    warnings = []
    if input_size is not None:
        pre.update(size=input_size, resize="long_side", pad=True)
        stride = loaded.model.config.get("output_stride", 16)
        if (loaded.meta.get("source") or {}).get("format") == "tflite" and (input_size - 1) % stride:
            good = ((input_size - 1) // stride) * stride + 1
            warnings.append(f"--input-size {input_size} is not k x {stride} + 1: TF's SAME padding of the imported "
                            f"weights differs from PyTorch's there (e.g. use {good})")
    model = loaded.model
    if backend == "triton":
        from ..kernels.aspp import fuse_aspp  # imports triton

        try:
            model = fuse_aspp(model)
        except ValueError as e:
            raise DeepLabEdgeError(f"--backend triton: {e}") from e
    runner = TorchRunner(model, dev, precision, preprocess=Preprocess.from_dict(pre), classes=loaded.classes)
    if backend == "compile":
        runner.model = torch.compile(runner.model)
    runner.info.update(backend=backend, weights=str(path), arch=loaded.model.config["arch"],
                       output_stride=loaded.model.config.get("output_stride"),
                       sha256=loaded.meta.get("sha256"), warnings=warnings)
    return runner
