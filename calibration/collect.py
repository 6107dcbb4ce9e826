"""Calibration data and activation statistics, collected with ONNX Runtime.

Calibration images go through the model's own :class:`~deeplab_edge.data.Preprocess` (the one
shared implementation), in the dataset's sorted order, so the same inputs and method give
byte-identical outputs. Every float activation of the graph (the input and each node's
output) is exposed as an extra graph output; ONNX Runtime runs with graph optimisations off
so that every tensor keeps the name TensorRT will see in the same ONNX file. Two passes: the
first finds max|x| per tensor, the second fills 2048-bin histograms of |x| over [0, max].
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from deeplab_edge.data.datasets import SegmentationDataset, open_dataset
from deeplab_edge.data.preprocess import Preprocess
from deeplab_edge.errors import CalibrationError, DataError
from deeplab_edge.export import ort_session

from .alerts import DegenerateCalibrationWarning, FewImagesWarning
from .histograms import NUM_BINS

__all__ = ["calibration_inputs", "activation_tensors", "collect_histograms", "is_blank", "MIN_IMAGES",
           "DEGENERATE", "as_dataset"]

MIN_IMAGES = 1


def as_dataset(data: str | Path | SegmentationDataset) -> SegmentationDataset:
    """Calibration data given as a dataset (e.g. the folds of a benchmark) or as a folder."""
    return data if isinstance(data, SegmentationDataset) else open_dataset(data)


def calibration_inputs(data: str | Path | SegmentationDataset, preprocess: Preprocess, num: int) -> list[torch.Tensor]:
    """The first ``num`` images of a dataset or folder, preprocessed; warns when there are fewer."""
    try:
        ds = as_dataset(data)
    except DataError as e:
        raise CalibrationError(f"calibration data: {e}") from e
    if isinstance(data, SegmentationDataset):
        data = f"{ds.root} ({len(ds)} of its images)"
    n = len(ds)
    if n < MIN_IMAGES:
        raise CalibrationError(f"{data}: no calibration images; pass a folder with images")
    if n < num:
        warnings.warn(f"{data} has {n} images, fewer than --num {num}: calibrating on all {n}", FewImagesWarning,
                      stacklevel=2)
    inputs, blank, digests = [], [], set()
    for i in range(min(n, num)):
        image = ds.load(i)[1]
        if is_blank(image):
            blank.append(ds.samples[i].image)
        digests.add(hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest())
        inputs.append(preprocess(image)[0])
    if len(blank) == len(inputs):
        what = "the calibration image is" if len(blank) == 1 else f"all {len(blank)} calibration images are"
        raise CalibrationError(f"{data}: {what} blank (one flat colour, e.g. {blank[0].name}): the activation ranges "
                               "would collapse and the INT8 model predict nothing useful; calibrate on real images of "
                               "the scenes the model will see")
    if blank:
        warnings.warn(f"{DEGENERATE}: {len(blank)} of the {len(inputs)} calibration images are blank (one flat "
                      f"colour, e.g. {blank[0].name}) and narrow the activation ranges; leave them out of --data",
                      DegenerateCalibrationWarning, stacklevel=2)
    if len(inputs) > 1 and len(digests) == 1:
        warnings.warn(f"{DEGENERATE}: the {len(inputs)} calibration images of {data} are all the same picture, so "
                      "the ranges come from one image; calibrate on different images of the scenes the model will "
                      "see", DegenerateCalibrationWarning, stacklevel=2)
    return inputs


#: The start of every warning about calibration images or ranges that cannot represent real inputs.
DEGENERATE = "degenerate calibration"

#: An image whose pixels span at most this many levels (of 255) in every channel is blank: a flat colour,
#: give or take JPEG noise.
BLANK_LEVELS = 4


def is_blank(image: np.ndarray) -> bool:
    """Whether an image (uint8 H x W x C) is one flat colour, within :data:`BLANK_LEVELS` levels."""
    a = np.asarray(image)
    a = a.reshape(-1, a.shape[-1]) if a.ndim == 3 else a.reshape(-1, 1)
    return bool(a.size == 0 or (a.max(axis=0).astype(np.int64) - a.min(axis=0)).max() <= BLANK_LEVELS)


def activation_tensors(model) -> list[str]:
    """Names of the graph input and of every float, 4-D node output."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    info = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output) +
            list(inferred.graph.input)}
    names = []
    for name in [model.graph.input[0].name] + [o for n in model.graph.node for o in n.output]:
        v = info.get(name)
        if v is None:
            continue
        t = v.type.tensor_type
        if t.elem_type == onnx.TensorProto.FLOAT and len(t.shape.dim) == 4 and name not in names:
            names.append(name)
    return names


def _session_with_outputs(model, names: list[str]):
    import onnx


    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    for name in names:
        if name not in existing:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort_session(m.SerializeToString(), optimize=False, providers=["CPUExecutionProvider"])


def collect_histograms(model, inputs: list[torch.Tensor], names: list[str] | None = None,
                       progress: Callable[[], None] | None = None,
                       means_out: dict[str, np.ndarray] | None = None) -> dict[str, tuple[np.ndarray, float]]:
    """name -> (2048-bin histogram of |x| over [0, amax], amax) over all calibration inputs; ``means_out``,
    when given, receives each tensor's per-channel mean (of the per-image means) from the same pass."""
    names = names or activation_tensors(model)
    sess = _session_with_outputs(model, names)
    in_name = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]
    idx = [outs.index(n) for n in names]

    def run(x: torch.Tensor) -> Iterable[tuple[str, np.ndarray]]:
        feeds = {in_name: x[None].numpy()}
        res = sess.run(None, feeds)
        for n, i in zip(names, idx):
            yield n, feeds[in_name] if n == in_name else res[i]

    amax = dict.fromkeys(names, 0.0)
    sums: dict[str, np.ndarray] = {}
    for x in inputs:
        for n, a in run(x):
            amax[n] = max(amax[n], float(np.abs(a).max()))
            if means_out is not None:
                sums[n] = sums.get(n, 0) + a.astype(np.float64).mean(axis=(0, 2, 3))
        if progress:
            progress()
    if means_out is not None:
        means_out.update({n: v / len(inputs) for n, v in sums.items()})
    hists = {n: np.zeros(NUM_BINS, np.int64) for n in names}
    for x in inputs:
        for n, a in run(x):
            if amax[n] > 0:
                hists[n] += np.histogram(np.abs(a), bins=NUM_BINS, range=(0.0, amax[n]))[0]
        if progress:
            progress()
    return {n: (hists[n], amax[n]) for n in names}

