"""INT8 PTQ methods side by side (issue #17): this project's recipes, ONNX Runtime's ``quantize_static`` and,
given its environment, NVIDIA ModelOpt's ONNX quantizer, on one FP32 export, the same calibration images and
the same held-out evaluation images, every quantized model emulated the same way (ONNX Runtime CPU, graph
optimizations off: exact fake-quant arithmetic, so the figures do not depend on the CPU's instruction set).

:func:`compare_methods` is the study; ``bench/experiments/ptq_compare.py`` runs it by hand. With ``folds`` K
one labelled folder is split by image index (:func:`fold_splits`: i % K): each fold is evaluated by models
calibrated on the other folds, and the confusion matrices of all folds are pooled, so every image is scored by
a model that never saw it. Besides mIoU, each method's pixel agreement with the FP32 model's argmax is
reported: over many pixels it is far less noisy than an mIoU on a few images. ModelOpt runs in its own
environment (``bench/experiments/modelopt_compare.py quantize``), given the very calibration tensors the
others get.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from deeplab_edge.calibration.cpu_int8 import calibration_reader, cpu_features, quantize_cpu_int8
from deeplab_edge.calibration.pipeline import Calibrator, Recipe
from deeplab_edge.calibration.qdq import tag_quantized
from deeplab_edge.data.datasets import SegmentationDataset, open_dataset
from deeplab_edge.data.preprocess import Preprocess
from deeplab_edge.errors import DeepLabEdgeError
from deeplab_edge.export import read_metadata
from deeplab_edge.inference import Segmenter
from deeplab_edge.metrics import ConfusionMatrix
from deeplab_edge.runtime.onnx import OnnxRunner

from .env import environment
from .harness import fold_indices

__all__ = ["OURS", "PARTS", "CORRECTED", "ORT", "MODELOPT", "recipe_of", "fold_splits", "score", "compare_methods"]

OURS = ("entropy", "minmax", "mse", "percentile", "search")
# diagnostics: only the weights, or only the activations (mse thresholds) quantized: where the loss comes from
PARTS = ("mse-weights-only", "mse-activations-only")
# with empirical bias correction of the weights' mean error (what `calibrate` does by default)
CORRECTED = ("mse-bc", "minmax-bc", "entropy-bc", "search-bc")
ORT = ("ort-qdq-s8", "ort-u8s8", "ort-u8s8-7bit", "ort-u8s8-entropy")
MODELOPT = ("modelopt-entropy", "modelopt-max")


def recipe_of(label: str, percentile: float = 99.99) -> Recipe | None:
    """This project's :class:`~deeplab_edge.calibration.pipeline.Recipe` behind a method label (None for
    ONNX Runtime's and ModelOpt's)."""
    if label in OURS:
        return Recipe(label, percentile, bias_correction=False)
    if label in PARTS:
        return Recipe("mse", percentile, bias_correction=False, parts=label.split("-")[1])
    if label in CORRECTED:
        return Recipe(label.split("-")[0], percentile, bias_correction=True)
    return None


def fold_splits(ds: SegmentationDataset, k: int) -> list[tuple[SegmentationDataset, SegmentationDataset]]:
    """(calibration, evaluation) pairs: fold f evaluates the images i with i % k == f, calibrated on the others."""
    return [(ds.take(cal), ds.take(scored)) for cal, scored in fold_indices(len(ds), k)]


def score(model_path: Path, ds, fp32_preds: dict[str, np.ndarray] | None, num_classes: int,
          on_image: Callable[[], None] | None = None,
          optimize: bool = False) -> tuple[np.ndarray, int, int, dict[str, np.ndarray]]:
    """(confusion matrix, pixels equal to ``fp32_preds``, pixels compared, predictions) of an ONNX model on
    ``ds`` (graph optimizations off unless ``optimize``: the exact arithmetic)."""
    seg = Segmenter(OnnxRunner(model_path, optimize=optimize))
    cm = ConfusionMatrix(num_classes)
    same = total = 0
    preds = {}
    for sid, image, label in ds:
        pred = np.asarray(seg.predict(image))
        cm.update(pred, label)
        preds[sid] = pred
        if fp32_preds is not None:
            same += int((fp32_preds[sid] == pred).sum())
            total += pred.size
        if on_image:
            on_image()
    return cm.mat.copy(), same, total, preds


def _ort_quantize(fp32: Path, out: Path, inputs, method: str) -> dict | None:
    """ONNX Runtime's quantizers: the CPU INT8 model (with the settings for this CPU unless ``-7bit``), or
    ``ort-qdq-s8``, TensorRT-style symmetric s8 with ORT's own placement."""
    if method != "ort-qdq-s8":
        return quantize_cpu_int8(fp32, out, inputs, "entropy" if method.endswith("entropy") else "minmax",
                                 reduce_range=True if method.endswith("7bit") else None)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(str(fp32), str(out), calibration_reader(fp32, inputs), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"ActivationSymmetric": True})
    return None


@dataclass
class _Tally:
    """Every method's pooled confusion matrix, FP32 agreement, per-fold mIoU and quantization time."""

    methods: list[str]
    classes: int
    pooled: dict[str, np.ndarray] = field(default_factory=dict)
    agree: dict[str, list[int]] = field(default_factory=dict)
    per_fold: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    kernels: dict[str, dict[str, Any]] = field(default_factory=dict)  # CPU INT8 models through this CPU's kernels
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for m in ["fp32", *self.methods]:
            self.pooled[m] = np.zeros((self.classes, self.classes), np.int64)
            self.per_fold[m] = []
        for m in self.methods:
            self.agree[m], self.seconds[m] = [0, 0], 0.0

    def add(self, m: str, cm: np.ndarray, same: int = 0, total: int = 0) -> float:
        self.pooled[m] += cm
        if m != "fp32":
            self.agree[m][0] += same
            self.agree[m][1] += total
        self.per_fold[m].append(ConfusionMatrix.summarize(cm)["miou"])
        return self.per_fold[m][-1]

    def add_kernels(self, m: str, cm: np.ndarray, same: int, total: int) -> None:
        k = self.kernels.setdefault(m, {"cm": np.zeros_like(cm), "same": 0, "total": 0})
        k["cm"] += cm
        k["same"] += same
        k["total"] += total

    def rows(self) -> dict[str, dict[str, Any]]:
        fp = ConfusionMatrix.summarize(self.pooled["fp32"])["miou"]
        rows = {}
        for m in self.methods:
            s = ConfusionMatrix.summarize(self.pooled[m])
            rows[m] = {"miou": s["miou"], "drop_points": 100 * (s["miou"] - fp),
                       "fp32_agreement": self.agree[m][0] / self.agree[m][1], "per_fold_miou": self.per_fold[m],
                       "quantize_s": self.seconds[m]}
            if m in self.kernels:
                k = self.kernels[m]
                rows[m].update(settings=self.settings[m], kernels_miou=ConfusionMatrix.summarize(k["cm"])["miou"],
                               kernels_vs_emulation_agreement=k["same"] / k["total"])
        return rows


@dataclass(frozen=True)
class _Study:
    """What one comparison runs: the FP32 export, the method labels, the percentile of the percentile method,
    and ModelOpt's python and script (``bench/experiments/modelopt_compare.py``) when ModelOpt takes part."""

    fp32: Path
    methods: tuple[str, ...]
    percentile: float = 99.99
    modelopt_python: str | None = None
    modelopt_script: Path | None = None


def _quantize(study: _Study, m: str, cal: Calibrator, path: Path, work: Path, fold: int) -> dict | None:
    """Method ``m``'s INT8 model of this fold at ``path``; returns ONNX Runtime's CPU settings where it has them."""
    recipe = recipe_of(m, study.percentile)
    if recipe is not None:
        onnx.save(cal.qdq(recipe, cal.thresholds(recipe)), str(path))
    elif m in ORT:
        return _ort_quantize(study.fp32, path, cal.inputs, m)
    elif m in MODELOPT:
        if not study.modelopt_python:
            raise DeepLabEdgeError(f"{m} needs --modelopt-python (ModelOpt's own environment)")
        if not study.modelopt_script:
            raise DeepLabEdgeError(f"{m} needs modelopt_script (bench/experiments/modelopt_compare.py)")
        npy = work / f"calib_{fold}.npy"
        if not npy.exists():
            np.save(npy, np.stack([x.numpy() for x in cal.inputs]).astype(np.float32))
        subprocess.run([study.modelopt_python, str(study.modelopt_script), "quantize", str(study.fp32), str(npy),
                        m.split("-", 1)[1], str(path)], check=True, capture_output=True, text=True)
    else:
        raise DeepLabEdgeError(f"unknown method {m!r}")
    return None


def _run_fold(study: _Study, model, tally: _Tally, f: int, of: int, cal_ds, held, pre: Preprocess, work: Path,
              log: Callable[[str], None]) -> None:
    assert not {s.image for s in cal_ds.samples} & {s.image for s in held.samples}, \
        "calibration and evaluation images overlap"
    cal = Calibrator(model, [pre(cal_ds.load(i)[1])[0] for i in range(len(cal_ds))])
    log(f"fold {f + 1}/{of}: calibrating on {len(cal.inputs)} images, evaluating {len(held)}")
    cm, _, _, fp32_preds = score(study.fp32, held, None, tally.classes)
    fp32_miou = tally.add("fp32", cm)
    for m in study.methods:
        t = time.perf_counter()
        path = work / f"{m}_{f}.onnx"
        settings = _quantize(study, m, cal, path, work, f)
        if settings:
            tally.settings[m] = {k: v for k, v in settings.items() if k != "cpu"}
        tally.seconds[m] += time.perf_counter() - t
        q = onnx.load(str(path))  # the FP32 export's deeplab-edge metadata (preprocessing, classes) on it
        tag_quantized(q, "int8-qdq-tensorrt", like=model)
        onnx.save(q, str(path))
        cm, same, total, preds = score(path, held, fp32_preds, tally.classes)
        if m in tally.settings:  # the same model through this CPU's int8 kernels (graph optimizations on)
            tally.add_kernels(m, *score(path, held, preds, tally.classes, optimize=True)[:3])
        miou = tally.add(m, cm, same, total)
        log(f"  {m:18s} fold mIoU {100 * miou:.2f}% (FP32 {100 * fp32_miou:.2f}%), "
            f"agreement with FP32 {100 * same / total:.3f}%")


def compare_methods(fp32: Path, eval_dir: str, out: Path, *, calib_dir: str | None, num: int, folds: int,
                    methods: list[str], modelopt_python: str | None = None, modelopt_script: Path | None = None,
                    percentile: float = 99.99, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every method of ``methods`` on the held-out images (``calib_dir``'s first ``num`` images calibrate, or
    ``folds`` > 1 folds of ``eval_dir``); writes the result document to ``out`` and returns it."""
    study = _Study(Path(fp32), tuple(methods), percentile, modelopt_python, modelopt_script)
    env = environment()  # the code as it starts: later edits to the tree do not reach this run
    model = onnx.load(str(study.fp32))
    meta = read_metadata(model)
    pre = Preprocess.from_dict(meta["preprocess"])
    ev = open_dataset(eval_dir)
    splits = fold_splits(ev, folds) if folds > 1 else [(open_dataset(calib_dir).subset(num), ev)]
    tally = _Tally(list(methods), ev.num_classes)
    with tempfile.TemporaryDirectory() as work:
        for f, (cal_ds, held) in enumerate(splits):
            _run_fold(study, model, tally, f, len(splits), cal_ds, held, pre, Path(work), log)
    rows = tally.rows()
    fp = ConfusionMatrix.summarize(tally.pooled["fp32"])["miou"]
    result = {"fp32": study.fp32.name, "checkpoint_sha256": meta.get("checkpoint_sha256"),
              "output_stride": meta.get("config", {}).get("output_stride"), "fp32_miou": fp,
              "fp32_per_fold_miou": tally.per_fold["fp32"],
              "calibration": calib_dir if folds <= 1 else f"{eval_dir}: {folds} folds (i % {folds}), the others",
              "evaluation": eval_dir, "folds": folds, "calibration_images": [len(c) for c, _ in splits],
              "evaluation_images": sum(len(h) for _, h in splits), "held_out": True,
              "emulation": "ONNX Runtime CPU, graph optimizations off", "methods": rows,
              "cpu_features": cpu_features(), "environment": env}
    out.write_text(json.dumps(result, indent=1, default=str))
    log(f"FP32 {100 * fp:.2f}% on {result['evaluation_images']} held-out images")
    for m, r in rows.items():
        log(f"{m:18s} {100 * r['miou']:.2f}% ({r['drop_points']:+.2f}), agreement {100 * r['fp32_agreement']:.3f}%"
            + (f"; this CPU's kernels {100 * r['kernels_miou']:.2f}% ({100 * r['kernels_vs_emulation_agreement']:.3f}% "
               "of pixels as emulated)" if "kernels_miou" in r else ""))
    return result

