"""INT8 PTQ methods side by side in one run (issue #17): this project's calibrators, ONNX Runtime's
``quantize_static`` and, given its environment, NVIDIA ModelOpt's ONNX quantizer, on one FP32
export, the same calibration images and the same held-out evaluation images, every quantized
model emulated the same way (ONNX Runtime CPU, graph optimizations off: exact fake-quant
arithmetic, so the figures do not depend on the CPU's instruction set).

    python -m deeplab_edge.bench.ptq_compare FP32.onnx --calib TRAIN --eval VAL [--num 100] \
        [--modelopt-python /path/to/modelopt-venv/bin/python] -o results.json
    python -m deeplab_edge.bench.ptq_compare FP32.onnx --folds 3 --eval VOC_SAMPLES -o results.json

With ``--folds K`` one labelled folder is split by image index (i % K): each fold is evaluated by
models calibrated on the other folds, and the confusion matrices of all folds are pooled, so every
image is scored by a model that never saw it. Besides mIoU, each method's pixel agreement with
the FP32 model's argmax is reported: over many pixels it is far less noisy than an mIoU on a few
images. ModelOpt runs in its own environment (``bench/modelopt_compare.py quantize``), given
the very calibration tensors the others get.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

OURS = ("entropy", "minmax", "mse", "percentile", "search")
# diagnostics: only the weights, or only the activations (mse thresholds) quantized: where the loss comes from
PARTS = ("mse-weights-only", "mse-activations-only")
# with empirical bias correction of the weights' mean error (what `calibrate` does by default)
CORRECTED = ("mse-bc", "minmax-bc", "entropy-bc", "search-bc")
ORT = ("ort-qdq-s8", "ort-u8s8", "ort-u8s8-7bit", "ort-u8s8-entropy")
MODELOPT = ("modelopt-entropy", "modelopt-max")


def _tag(fp32_model, quantized_path: Path, precision: str) -> None:
    """The FP32 export's deeplab-edge metadata (preprocessing, classes) on a quantized model."""
    import onnx

    from deeplab_edge.calibration.qdq import tag_quantized

    m = onnx.load(str(quantized_path))
    tag_quantized(m, precision, like=fp32_model)
    onnx.save(m, str(quantized_path))


def _ort_qdq(fp32: Path, out: Path, inputs, method: str) -> dict | None:
    if method != "ort-qdq-s8":  # the CPU INT8 model: by default with the settings for this CPU
        from deeplab_edge.calibration.cpu_int8 import quantize_cpu_int8

        return quantize_cpu_int8(fp32, out, inputs, "entropy" if method.endswith("entropy") else "minmax",
                                 reduce_range=True if method.endswith("7bit") else None)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from deeplab_edge.calibration.cpu_int8 import calibration_reader

    # TensorRT-style: symmetric s8 activations and per-channel s8 weights, ORT's own placement
    quantize_static(str(fp32), str(out), calibration_reader(fp32, inputs), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"ActivationSymmetric": True})
    return None


def _score(runner_path: Path, ds, fp32_preds: dict[str, np.ndarray] | None, num_classes: int,
           on_image: Callable[[], None] | None = None,
           optimize: bool = False) -> tuple[np.ndarray, int, int, dict[str, np.ndarray]]:
    from deeplab_edge.inference import Segmenter
    from deeplab_edge.metrics import ConfusionMatrix
    from deeplab_edge.runtime.onnx import OnnxRunner

    seg = Segmenter(OnnxRunner(runner_path, optimize=optimize))
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


def run(fp32: Path, eval_dir: str, out: Path, *, calib_dir: str | None, num: int, folds: int,
        methods: list[str], modelopt_python: str | None, percentile: float = 99.99,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    import onnx

    from deeplab_edge.bench.env import environment
    from deeplab_edge.calibration import insert_qdq
    from deeplab_edge.calibration.collect import activation_tensors, collect_histograms
    from deeplab_edge.calibration.qdq import bias_corrections
    from deeplab_edge.calibration.cpu_int8 import cpu_features
    from deeplab_edge.calibration.search import thresholds
    from deeplab_edge.data.datasets import open_dataset
    from deeplab_edge.data.preprocess import Preprocess
    from deeplab_edge.export import read_metadata
    from deeplab_edge.metrics import ConfusionMatrix

    env = environment()  # the code as it starts: later edits to the tree do not reach this run
    model = onnx.load(str(fp32))
    pre = Preprocess.from_dict(read_metadata(model)["preprocess"])
    ev = open_dataset(eval_dir)
    if folds > 1:
        splits = [([i for i in range(len(ev)) if i % folds != f], [i for i in range(len(ev)) if i % folds == f])
                  for f in range(folds)]
        splits = [(ev.take(c), ev.take(e)) for c, e in splits]
    else:
        splits = [(open_dataset(calib_dir).subset(num), ev)]
    names = activation_tensors(model)
    classes = ev.num_classes
    pooled = {m: np.zeros((classes, classes), np.int64) for m in ["fp32", *methods]}
    agree = {m: [0, 0] for m in methods}
    per_fold: dict[str, list[float]] = {m: [] for m in ["fp32", *methods]}
    seconds = {m: 0.0 for m in methods}
    kernels: dict[str, dict[str, Any]] = {}  # CPU INT8 models through this CPU's int8 kernels too
    settings: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for f, (cal, held) in enumerate(splits):
            cal_ids = {s.image for s in cal.samples}
            assert not cal_ids & {s.image for s in held.samples}, "calibration and evaluation images overlap"
            inputs = [pre(cal.load(i)[1])[0] for i in range(len(cal))]
            log(f"fold {f + 1}/{len(splits)}: calibrating on {len(inputs)} images, evaluating {len(held)}")
            cm, _, _, fp32_preds = _score(fp32, held, None, classes)
            pooled["fp32"] += cm
            per_fold["fp32"].append(ConfusionMatrix.summarize(cm)["miou"])
            stats, means = None, {}
            for m in methods:
                t = time.perf_counter()
                path = work / f"{m}_{f}.onnx"
                if m in OURS or m in PARTS or m in CORRECTED:
                    if stats is None:
                        stats = collect_histograms(model, inputs, names, means_out=means)
                    amax = thresholds(model, inputs, stats, m.split("-")[0], percentile)
                    parts = m.split("-")[1] if m in PARTS else "both"
                    shift = bias_corrections(model, means) if m in CORRECTED else None
                    onnx.save(insert_qdq(model, amax, parts=parts, bias_shift=shift), str(path))
                elif m in ORT:
                    got = _ort_qdq(fp32, path, inputs, m)
                    if got:
                        settings[m] = {k: v for k, v in got.items() if k != "cpu"}
                elif m in MODELOPT:
                    if not modelopt_python:
                        raise SystemExit(f"{m} needs --modelopt-python (ModelOpt's own environment)")
                    npy = work / f"calib_{f}.npy"
                    if not npy.exists():
                        np.save(npy, np.stack([x.numpy() for x in inputs]).astype(np.float32))
                    script = Path(__file__).with_name("modelopt_compare.py")
                    subprocess.run([modelopt_python, str(script), "quantize", str(fp32), str(npy),
                                    m.split("-", 1)[1], str(path)], check=True, capture_output=True, text=True)
                else:
                    raise SystemExit(f"unknown method {m!r}")
                seconds[m] += time.perf_counter() - t
                _tag(model, path, "int8-qdq-tensorrt")
                cm, same, total, preds = _score(path, held, fp32_preds, classes)
                if m in settings:  # the same model through this CPU's int8 kernels (graph optimizations on)
                    k = kernels.setdefault(m, {"cm": np.zeros_like(pooled[m]), "same": 0, "total": 0})
                    cmk, samek, totk, _ = _score(path, held, preds, classes, optimize=True)
                    k["cm"] += cmk
                    k["same"] += samek
                    k["total"] += totk
                pooled[m] += cm
                agree[m][0] += same
                agree[m][1] += total
                per_fold[m].append(ConfusionMatrix.summarize(cm)["miou"])
                log(f"  {m:18s} fold mIoU {100 * per_fold[m][-1]:.2f}% (FP32 {100 * per_fold['fp32'][-1]:.2f}%), "
                    f"agreement with FP32 {100 * same / total:.3f}%")
    fp = ConfusionMatrix.summarize(pooled["fp32"])["miou"]
    rows = {}
    for m in methods:
        s = ConfusionMatrix.summarize(pooled[m])
        rows[m] = {"miou": s["miou"], "drop_points": 100 * (s["miou"] - fp), "fp32_agreement": agree[m][0] / agree[m][1],
                   "per_fold_miou": per_fold[m], "quantize_s": seconds[m]}
        if m in kernels:
            k = kernels[m]
            rows[m].update(settings=settings[m], kernels_miou=ConfusionMatrix.summarize(k["cm"])["miou"],
                           kernels_vs_emulation_agreement=k["same"] / k["total"])
    meta = read_metadata(model)
    result = {"fp32": fp32.name, "checkpoint_sha256": meta.get("checkpoint_sha256"),
              "output_stride": meta.get("config", {}).get("output_stride"), "fp32_miou": fp,
              "fp32_per_fold_miou": per_fold["fp32"],
              "calibration": calib_dir if folds <= 1 else f"{eval_dir}: {folds} folds (i % {folds}), the others",
              "evaluation": eval_dir, "folds": folds, "calibration_images": [len(c) for c, _ in splits],
              "evaluation_images": sum(len(h) for _, h in splits), "held_out": True,
              "emulation": "ONNX Runtime CPU, graph optimizations off", "methods": rows,
              "cpu_features": cpu_features(),
              "environment": env}
    out.write_text(json.dumps(result, indent=1, default=str))
    log(f"FP32 {100 * fp:.2f}% on {result['evaluation_images']} held-out images")
    for m, r in rows.items():
        log(f"{m:18s} {100 * r['miou']:.2f}% ({r['drop_points']:+.2f}), agreement {100 * r['fp32_agreement']:.3f}%"
            + (f"; this CPU's kernels {100 * r['kernels_miou']:.2f}% ({100 * r['kernels_vs_emulation_agreement']:.3f}% "
               "of pixels as emulated)" if "kernels_miou" in r else ""))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fp32", type=Path)
    p.add_argument("--eval", required=True, help="labelled evaluation folder")
    p.add_argument("--calib", help="calibration folder (not with --folds)")
    p.add_argument("--num", type=int, default=100, help="calibration images (the first NUM of --calib)")
    p.add_argument("--folds", type=int, default=1, help="split --eval into K folds, calibrate on the others")
    p.add_argument("--methods", default=",".join(OURS + ORT),
                   help="comma separated: " + ", ".join(OURS + PARTS + CORRECTED + ORT + MODELOPT))
    p.add_argument("--modelopt-python", help="python of an environment with nvidia-modelopt[onnx]")
    p.add_argument("-o", "--output", type=Path, required=True)
    a = p.parse_args(argv)
    if (a.folds > 1) == bool(a.calib) or a.folds < 1 or a.num < 1:
        p.error("give either --calib (a separate calibration folder) or --folds K >= 2, and --num >= 1")
    if a.output.exists():
        p.error(f"{a.output} exists; pass a new path")
    methods = [m for m in a.methods.split(",") if m]
    if a.modelopt_python and not any(m in MODELOPT for m in methods):
        methods += list(MODELOPT)
    run(a.fp32, a.eval, a.output, calib_dir=a.calib, num=a.num, folds=a.folds, methods=methods,
        modelopt_python=a.modelopt_python)


if __name__ == "__main__":
    main(sys.argv[1:])
