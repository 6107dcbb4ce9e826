"""A model as ``eval`` / ``predict`` / ``crf bench`` name it — one model file, how to run it, the
CRF after the network, test-time scales — as one frozen :class:`ModelSpec`, and
:func:`open_segmenter`, which turns it into a :class:`~deeplab_edge.inference.Segmenter`.

The CLI's model options fill the spec field for field (the field names are the options' names),
so a script sees the same checks and messages as the command line.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..crf import DEVICE_METHODS, PRESETS, CRFStage, load_crf_params, with_overrides
from ..data.datasets import SegmentationDataset
from ..data.overlap import recorded_overlap
from ..engine import manifest_path
from ..errors import DeepLabEdgeError
from ..export import read_metadata
from ..inference import Segmenter
from . import open_runner, resolve_device

__all__ = ["ModelSpec", "open_segmenter", "calibration_overlap"]

# backends whose model runs at any input size (what --scales / --flip need)
_RESIZABLE = ("torch", "compile", "triton")


@dataclass(frozen=True)
class ModelSpec:
    """Exactly one of ``weights`` (a checkpoint, run by ``backend``), ``tflite``, ``onnx_path`` or
    ``engine_path``, and how to run it (the fields of :func:`~deeplab_edge.runtime.open_runner`);
    ``crf_*``: the dense CRF after the network (``crf_method`` "none": plain argmax); ``scales`` and
    ``flip``: test-time augmentation (PyTorch checkpoints only). Checked when opened, not when made,
    so a command's own checks of its other options come first."""

    weights: Path | None = None
    tflite: Path | None = None
    onnx_path: Path | None = None
    engine_path: Path | None = None
    arch: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    input_size: int | None = None
    output_stride: int | None = None
    crf_method: str = "none"
    crf_preset: str = "deeplab-v2"
    crf_iterations: int | None = None
    crf_params: Path | None = None
    backend: str = "torch"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    threads: int | None = None

    def model_file(self) -> tuple[Path, str]:
        """(the one model file, the backend that runs it)."""
        onnx_backend = "openvino" if self.backend == "openvino" else "onnxruntime"
        given = [(p, b) for p, b in ((self.weights, self.backend), (self.onnx_path, onnx_backend),
                                     (self.tflite, "litert"), (self.engine_path, "tensorrt")) if p is not None]
        if len(given) != 1:
            raise DeepLabEdgeError(f"{'no model' if not given else 'several models'} given; pass exactly one of "
                                   "--weights FILE, --onnx FILE, --tflite FILE or --engine FILE")
        if self.backend == "openvino" and self.onnx_path is None:
            raise DeepLabEdgeError("--backend openvino runs an ONNX model; use it with --onnx FILE (from `deeplab-edge "
                                   "export` or `calibrate`)")
        if self.backend not in ("torch", "openvino") and self.weights is None:
            raise DeepLabEdgeError(f"--backend {self.backend} runs a PyTorch checkpoint; use it with --weights, not "
                                   "--onnx/--tflite/--engine")
        return given[0]

    @property
    def augmented(self) -> bool:
        """Whether test-time scales or flipping are asked for."""
        return self.scales != (1.0,) or self.flip


def _crf_stage(spec: ModelSpec) -> CRFStage | None:
    """The spec's CRF as a Segmenter post-processing stage (None for ``crf_method`` "none")."""
    if spec.crf_method == "none":
        for given, name in ((spec.crf_iterations, "--crf-iterations"), (spec.crf_params, "--crf-params")):
            if given is not None:
                raise DeepLabEdgeError(f"{name} needs a CRF; add --crf torch (or pydensecrf, triton, window, "
                                       "triton-window)")
        return None
    base = load_crf_params(spec.crf_params) if spec.crf_params is not None else PRESETS[spec.crf_preset]
    params = with_overrides(base, iterations=spec.crf_iterations)
    dev = resolve_device(spec.device) if spec.crf_method in DEVICE_METHODS else "cpu"
    return CRFStage(spec.crf_method, params, dev)


def open_segmenter(spec: ModelSpec, *, warn: Callable[[str], None] | None = None
                   ) -> tuple[Segmenter, list[str] | None, dict[str, Any]]:
    """(Segmenter, class names or None where the file has none, info for reports) for ``spec``.

    ``warn`` gets each warning the runner reports (e.g. an input size that TF pads differently
    from PyTorch) as soon as the model is open; without it they are Python warnings."""
    path, backend = spec.model_file()
    stage = _crf_stage(spec)
    runner = open_runner(path, backend=backend, precision=spec.precision, device=spec.device, threads=spec.threads,
                         arch=spec.arch, input_size=spec.input_size, output_stride=spec.output_stride)
    for w in runner.info.get("warnings") or []:
        if warn is None:
            warnings.warn(w, stacklevel=2)
        else:
            warn(w)
    info = {k: v for k, v in runner.info.items() if k != "warnings"}
    info.update({"crf": spec.crf_method} if stage is None
                else {"crf": spec.crf_method, "crf_params": stage.params.as_dict()})
    if spec.augmented and runner.info["backend"] not in _RESIZABLE:
        raise DeepLabEdgeError(f"--scales/--flip run the model at other input sizes; a {runner.info['backend']} "
                               "model's input is fixed, so use its PyTorch checkpoint (--weights)")
    if spec.augmented:
        info.update(scales=list(spec.scales), flip=spec.flip)
    return (Segmenter(runner, runner.preprocess, runner.num_classes, stage, scales=spec.scales, flip=spec.flip),
            runner.classes or None, info)


def calibration_overlap(spec: ModelSpec, dataset: SegmentationDataset) -> dict[str, Any] | None:
    """How many of ``dataset``'s images calibrated the INT8 model of ``spec`` (an ONNX model's metadata
    or an engine's manifest records their digests); None for models that record none."""
    recorded = None
    if spec.onnx_path is not None:
        recorded = (read_metadata(spec.onnx_path).get("calibration") or {}).get("images_sha1")
    elif spec.engine_path is not None and manifest_path(spec.engine_path).is_file():
        man = json.loads(manifest_path(spec.engine_path).read_text())
        recorded = (man.get("calibration") or {}).get("images_sha1")
    if not recorded:
        return None
    shared = recorded_overlap(recorded, [smp.image for smp in dataset.samples])
    return {"images": len(shared), "calibration_images": len(recorded),
            "example": shared[0].name if shared else None}
