"""Running a segmentation model on images, and evaluating it on a dataset.

A *runner* (:mod:`deeplab_edge.runtime`) maps a float32 NCHW batch (already normalised) to
NCHW logits at the same height and width, whatever the backend. :class:`Segmenter` puts the
shared :class:`~deeplab_edge.data.Preprocess` in front and maps results back to the
original image. Time is measured separately for preprocessing, the model and
postprocessing, so harness overhead is never reported as model latency.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .data.datasets import SegmentationDataset
from .data.io import load_label
from .data.preprocess import Geometry, Preprocess
from .errors import DataError, DeepLabEdgeError
from .metrics import ConfusionMatrix

__all__ = ["Segmenter", "evaluate", "argmax_labels"]

def argmax_labels(logits: torch.Tensor) -> np.ndarray:
    """Argmax over the classes of (C, H, W) logits as a uint8 (H, W) array, the first maximum on
    ties (as ``torch.argmax``). On the CPU a running maximum over the C planes is used: ``argmax(0)``
    reduces over the outer dimension slowly there (50 ms against 19 ms for 21 x 513 x 513)."""
    if logits.ndim != 3 or logits.shape[0] > 256:
        raise ValueError(f"expected (C <= 256, H, W) logits, got {tuple(logits.shape)}")
    if logits.device.type != "cpu":
        return logits.argmax(0).to(torch.uint8).cpu().numpy()
    best = logits[0].clone()
    idx = torch.zeros(logits.shape[1:], dtype=torch.uint8)
    for c in range(1, logits.shape[0]):
        better = logits[c] > best
        best = torch.where(better, logits[c], best)
        idx[better] = c
    return idx.numpy()


@dataclass
class Timing:
    preprocess: float = 0.0
    model: float = 0.0
    postprocess: float = 0.0
    crf: float = 0.0
    model_calls: list[float] = field(default_factory=list)
    #: per image, in ms: load, preprocess, postprocess, restore_logits and crf:<option> (for medians)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.samples.setdefault(key, []).append(1e3 * seconds)

    def as_dict(self, images: int) -> dict[str, Any]:
        calls = np.asarray(self.model_calls) * 1e3
        return {"preprocess_s": self.preprocess, "model_s": self.model, "postprocess_s": self.postprocess,
                "crf_s": self.crf,
                "model_ms_p50": float(np.percentile(calls, 50)) if calls.size else None,
                "model_ms_mean": float(calls.mean()) if calls.size else None, "images": images}


class Segmenter:
    """Preprocess -> runner -> argmax (or logits) at the original image size.

    ``crf``: an optional post-processing stage called with (uint8 image, logits [C, H, W]
    at the image's size) that returns the label map (e.g. :class:`deeplab_edge.crf.CRFStage`);
    its time is reported apart from the model's. ``preprocess`` and ``num_classes`` default to the
    runner's own (every runner of :func:`deeplab_edge.runtime.open_runner` carries them)."""

    def __init__(self, runner: Callable[[torch.Tensor], torch.Tensor], preprocess: Preprocess | None = None,
                 num_classes: int | None = None,
                 crf: Callable[[np.ndarray, torch.Tensor], torch.Tensor] | None = None, *,
                 scales: tuple[float, ...] = (1.0,), flip: bool = False) -> None:
        preprocess = preprocess or getattr(runner, "preprocess", None)
        num_classes = num_classes or getattr(runner, "num_classes", None)
        if preprocess is None or num_classes is None:
            raise ValueError("expected preprocess and num_classes, or a runner that carries them (open_runner's do)")
        self.runner, self.preprocess, self.num_classes = runner, preprocess, num_classes
        if not scales or not all(math.isfinite(v) and v > 0 for v in scales):
            raise ValueError(f"expected positive scales, finite, got {scales}")
        self.scales, self.flip = tuple(scales), flip
        self.crf = crf
        #: the runner returns label maps (a model from `export --emit labels`), not logits
        self.labels = bool(getattr(runner, "outputs_labels", False))
        if self.labels and (crf is not None or self.scales != (1.0,) or flip):
            raise DeepLabEdgeError("this model outputs labels, not scores: the CRF and --scales/--flip need its "
                                   "logits; export it with --emit logits (the default) for them")
        self.timing = Timing()

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        sync = getattr(self.runner, "synchronize", None)
        t0 = time.perf_counter()
        out = self.runner(batch)
        if sync is not None:
            sync()
        dt = time.perf_counter() - t0
        self.timing.model += dt
        self.timing.model_calls.append(dt)
        if self.labels:
            if out.ndim != 3 or out.shape[-2:] != batch.shape[-2:]:
                raise DeepLabEdgeError(f"the label model returned {tuple(out.shape)} for input {tuple(batch.shape)}; "
                                       "expected N x H x W labels")
            return out
        if out.ndim != 4 or out.shape[1] != self.num_classes or out.shape[-2:] != batch.shape[-2:]:
            raise DeepLabEdgeError(f"the model returned {tuple(out.shape)} for input {tuple(batch.shape)}; expected "
                                   f"N x {self.num_classes} x H x W logits")
        return out

    def logits_batch(self, images: list[np.ndarray]) -> list[tuple[torch.Tensor, Geometry]]:
        """Logits (C, h, w) at the model's input resolution, with the geometry to restore them."""
        prepared = []
        for im in images:
            t0 = time.perf_counter()
            prepared.append(self.preprocess(im))
            self.timing.preprocess += (dt := time.perf_counter() - t0)
            self.timing.add("preprocess", dt)
        shapes = {tuple(x.shape) for x, _ in prepared}
        if len(shapes) == 1:
            out = self.forward(torch.stack([x for x, _ in prepared]))
            return [(out[i], g) for i, (_, g) in enumerate(prepared)]
        return [(self.forward(x[None])[0], g) for x, g in prepared]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a preprocessed NCHW batch; with several ``scales`` and/or ``flip`` (DeepLab's
        multi-scale inputs at test time), the mean of the logits of the batch resized to each scale
        (bilinear) and of its mirror image, each brought back to the batch's size."""
        if self.scales == (1.0,) and not self.flip:
            return self._run(batch)
        h, w = batch.shape[-2:]
        total, n = None, 0
        for s in self.scales:
            xs = batch if s == 1.0 else F.interpolate(batch, size=(max(1, round(h * s)), max(1, round(w * s))),
                                                     mode="bilinear", align_corners=False)
            for mirrored in ((False, True) if self.flip else (False,)):
                out = self._run(xs.flip(-1) if mirrored else xs)
                out = out.flip(-1) if mirrored else out
                if out.shape[-2:] != (h, w):
                    out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
                total, n = (out if total is None else total + out), n + 1
        return total / n

    def postprocess(self, image: np.ndarray, logits: torch.Tensor, geom: Geometry,
                    options: dict[str, Any]) -> dict[str, np.ndarray]:
        """Label maps at the image's size from one image's logits, for each option: None is the
        plain argmax, a CRF stage runs on the logits restored to the image's size (restored once
        for all the stages)."""
        out, full = {}, None
        for name, stage in options.items():
            t0 = time.perf_counter()
            if stage is not None and self.labels:
                raise DeepLabEdgeError("this model outputs labels, not scores: a CRF needs its logits; export it "
                                       "with --emit logits (the default)")
            if stage is None:
                labels = logits.to(torch.uint8).cpu().numpy() if self.labels else argmax_labels(logits)
                out[name] = Preprocess.restore_labels(labels, geom)
                self.timing.postprocess += (dt := time.perf_counter() - t0)
                self.timing.add("postprocess", dt)
                continue
            if full is None:
                full = Preprocess.restore_logits(logits.float(), geom)
                self.timing.postprocess += (dt := time.perf_counter() - t0)
                self.timing.add("restore_logits", dt)
                t0 = time.perf_counter()
            out[name] = stage(image, full).to(torch.uint8).cpu().numpy()
            self.timing.crf += (dt := time.perf_counter() - t0)
            self.timing.add(f"crf:{name}", dt)
        return out

    def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Label maps (H, W) uint8 at each image's original size."""
        results = self.logits_batch(images)
        return [self.postprocess(image, lg, g, {"": self.crf})[""] for image, (lg, g) in zip(images, results)]

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.predict_batch([image])[0]


def _batches(dataset: SegmentationDataset, batch_size: int, timing: Timing
             ) -> Iterable[list[tuple[str, np.ndarray, Any]]]:
    batch = []
    for i in range(len(dataset)):
        t0 = time.perf_counter()
        batch.append(dataset.load(i))
        timing.add("load", time.perf_counter() - t0)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def evaluate(segmenter: Segmenter, dataset: SegmentationDataset, *, batch_size: int = 1,
             reference_dir: str | None = None, on_image: Callable[[str], None] | None = None,
             options: dict[str, Any] | None = None,
             on_prediction: Callable[[str, np.ndarray], None] | None = None) -> dict[str, Any]:
    """mIoU, per-class IoU, pixel accuracy and per-image numbers of ``segmenter`` on ``dataset``.

    With ``reference_dir`` (a folder of ``<id>.png`` label maps, e.g. another runtime's
    predictions) the pixel agreement with those maps is reported too.

    ``options`` scores several post-processing options on the same network outputs, as
    ``{name: CRF stage, or None for the plain argmax}`` (``bench``'s cells); without it the
    segmenter's own ``crf`` is the one option. The top-level numbers are the first option's;
    with ``options``, every option's are under ``options`` and the per-image times (ms) under
    ``samples_ms``. ``on_prediction(id, label map)`` receives each image's prediction (the first option's).
    """
    if not dataset.has_labels:
        raise DataError(f"{dataset.root}: some images have no label file; eval needs labels (use predict instead)")
    opts = dict(options) if options is not None else {"": segmenter.crf}
    if not opts:
        raise ValueError("expected at least one post-processing option, got none")
    first = next(iter(opts))
    cms = {name: ConfusionMatrix(segmenter.num_classes) for name in opts}
    cm = cms[first]
    per_image, agree_num, agree_den = [], 0, 0
    segmenter.timing = Timing()
    t_start = time.perf_counter()
    for batch in _batches(dataset, batch_size, segmenter.timing):
        images = [im for _, im, _ in batch]
        logits = segmenter.logits_batch(images)
        for (sid, image, label), (lg, g) in zip(batch, logits):
            preds = segmenter.postprocess(image, lg, g, opts)
            for name, p in preds.items():
                if name != first:
                    cms[name].update(p, label)
            pred = preds[first]
            if on_prediction is not None:
                on_prediction(sid, pred)
            own = ConfusionMatrix.summarize(cm.update(pred, label))
            row = {"id": sid, "miou": own["miou"], "pixel_acc": own["pixel_acc"]}
            if reference_dir is not None:
                ref_path = Path(reference_dir) / f"{sid}.png"
                if not ref_path.is_file():
                    raise DataError(f"{ref_path}: no reference map for image {sid!r}; pass the folder of this "
                                    "dataset's reference predictions")
                ref = load_label(ref_path)
                if ref.shape != pred.shape:
                    raise DataError(f"{ref_path}: reference map is {ref.shape[1]}x{ref.shape[0]}, prediction "
                                    f"{pred.shape[1]}x{pred.shape[0]}; pass the references of this dataset")
                same = int((ref == pred).sum())
                row["agreement"] = same / pred.size
                agree_num, agree_den = agree_num + same, agree_den + pred.size
            per_image.append(row)
            if on_image is not None:
                on_image(sid)
    if not cm.mat.any():
        raise DataError(f"{dataset.root}: every label pixel of the {len(per_image)} images is 'ignore' (255 or the "
                        "dataset's void); nothing to score, so check the label files or --dataset")
    result = cm.compute()
    result.update({"images": len(per_image), "per_image": per_image, "confusion": cm.mat.tolist(),
                   "timing": segmenter.timing.as_dict(len(per_image)),
                   "wall_s": time.perf_counter() - t_start})
    if reference_dir is not None:
        result["reference_agreement"] = agree_num / agree_den if agree_den else None
    if options is not None:
        result["options"] = {name: {**c.compute(), "confusion": c.mat.tolist()} for name, c in cms.items()}
        result["samples_ms"] = {**segmenter.timing.samples, "model": [1e3 * t for t in segmenter.timing.model_calls]}
    return result
