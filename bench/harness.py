"""``deeplab-edge bench``: accuracy against speed for every backend x CRF option, in one run.

For each backend that can run here (the rest are listed with the reason they cannot):

1. **Artefacts** are built once and shared: the FP32 ONNX export (with its parity check), the
   calibration (TensorRT QDQ model and ONNX Runtime CPU INT8 model), held out by default
   (:func:`plan_calibration`: the train split, else folds of the benchmark's images pooled).
2. **Accuracy pass**: every image of the dataset through the shared preprocessing, the model
   and the argmax (exactly what ``deeplab-edge eval`` does) and, on the same logits, each CRF
   option; one confusion matrix per (backend, CRF) cell. Data loading, preprocessing,
   post-processing and CRF times are recorded per image, apart from the model.
3. **Latency pass**, per batch size: the model alone on preprocessed real images, after warm-up
   calls, each call synchronised (CUDA events for PyTorch on a GPU, a wall clock around a
   synchronised call elsewhere); p50/p90/p99 and throughput; peak memory (CUDA allocator on a
   GPU, the process's peak resident set, reset per backend, elsewhere); on a Jetson, the mean
   power over the pass (jetson-stats, else tegrastats) and the energy per image.

A cell's latency (the Pareto axis) is the model's p50 at batch 1 plus the CRF's median per
image; harness overhead is reported beside it, never inside it. The TensorRT QDQ model
runs here only as exact fake-quant emulation: its accuracy is the INT8 engine's, its time
is not INT8 speed, so it is kept off the Pareto front and the plot.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from deeplab_edge.checkpoint import load_checkpoint
from deeplab_edge.crf import METHODS as CRF_METHODS, PRESETS, TRITON_METHODS, CRFStage
from deeplab_edge.calibration.collect import as_dataset
from deeplab_edge.data.datasets import SegmentationDataset, open_dataset
from deeplab_edge.data.overlap import image_digests, shared_images
from deeplab_edge.engine import tensorrt_unavailable
from deeplab_edge.errors import DeepLabEdgeError
from deeplab_edge.export import LABEL_DTYPES, dynamic_axes, export_onnx, with_label_output
from deeplab_edge.hostinfo import cpu_flags
from deeplab_edge.inference import Segmenter, evaluate
from deeplab_edge.kernels.device import triton_unavailable
from deeplab_edge.metrics import ConfusionMatrix
from deeplab_edge.models import count_flops, count_params
from deeplab_edge.runtime import live_runners, open_runner, resolve_device
from deeplab_edge.runtime.openvino import openvino_unavailable

from .env import environment
from .power import sampling
from .report import FORMAT, mark_pareto
from .stats import latency_summary, percentile, time_calls

__all__ = ["Backend", "BACKENDS", "CRF_CHOICES", "select_backends", "run_bench", "peak_rss_reset", "peak_rss_mb"]

CRF_CHOICES = ("none", *CRF_METHODS)

#: The kinds of calibration warning bench shows (calibration.alerts.KINDS; the others, e.g. few_images, are
#: expected there). By kind, not wording: rewording a message cannot silence it.
SHOWN_CALIBRATION_WARNINGS = ("kernel_disagreement", "degenerate")
#: the backends whose INT8 models bench calibrates itself (a TensorRT engine comes built, its calibration in it)
CALIBRATED = {("ort", "int8"), ("qdq", "int8"), ("ov", "int8")}
#: the backends that also run a label model (the ONNX graph with the arg-max in it) with --emit labels; a
#: TensorRT engine is built one way or the other (`build --emit labels`) and its rows say which
LABEL_FAMILIES = ("ort", "qdq", "ov")


@dataclass(frozen=True)
class Backend:
    name: str
    family: str  # torch | compile | triton | ort | qdq | ov | litert | trt
    precision: str
    description: str


BACKENDS: dict[str, Backend] = {b.name: b for b in [
    Backend("torch-fp32", "torch", "fp32", "PyTorch eager"),
    Backend("torch-fp16", "torch", "fp16", "PyTorch eager, half precision"),
    Backend("torch-bf16", "torch", "bf16", "PyTorch eager, bfloat16"),
    Backend("compile-fp32", "compile", "fp32", "torch.compile (Inductor)"),
    Backend("compile-fp16", "compile", "fp16", "torch.compile (Inductor), half precision"),
    Backend("triton-fp32", "triton", "fp32", "PyTorch with the fused Triton ASPP"),
    Backend("triton-fp16", "triton", "fp16", "PyTorch with the fused Triton ASPP, half precision"),
    Backend("ort-fp32", "ort", "fp32", "ONNX Runtime, FP32 export"),
    Backend("ort-int8", "ort", "int8", "ONNX Runtime CPU INT8 (u8 activations, s8 per-channel weights)"),
    Backend("ov-fp32", "ov", "fp32", "OpenVINO CPU, FP32 export (precision hint f32)"),
    Backend("ov-bf16", "ov", "bf16", "OpenVINO CPU, FP32 export run in bf16 (precision hint bf16; CPUs with "
                                     "native bf16)"),
    Backend("ov-int8", "ov", "int8", "OpenVINO CPU running the TensorRT QDQ model as is: its quantized Convs in "
                                     "real int8 (the rest f32)"),
    Backend("litert-int8", "litert", "int8", "LiteRT (XNNPACK) running a quantized .tflite model (--tflite): "
                                             "Google's own runtime for its models"),
    Backend("qdq-int8", "qdq", "int8", "TensorRT QDQ model (s8), exact fake-quant emulation in ONNX Runtime: "
                                       "accuracy of the INT8 engine, not its speed"),
    Backend("trt-fp32", "trt", "fp32", "TensorRT engine, FP32"),
    Backend("trt-fp16", "trt", "fp16", "TensorRT engine, FP16"),
    Backend("trt-int8", "trt", "int8", "TensorRT engine, INT8 from the QDQ model (FP16 for layers left in float)"),
]}


# ----------------------------------------------------------------------------- what can run here

def _cannot_run(b: Backend, device: torch.device) -> str | None:
    """Why ``b`` cannot run on this machine at all (None when it can)."""
    cuda = device.type == "cuda"
    if b.family == "triton":
        return triton_unavailable(device, timing=True)
    if b.family in ("torch", "compile") and b.precision == "fp16" and not cuda:
        return "PyTorch has no fp16 convolutions on the CPU; needs a CUDA GPU"
    if b.family == "compile" and not cuda and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH"
    if b.family == "litert" and importlib.util.find_spec("ai_edge_litert") is None:
        return "ai-edge-litert is not installed (pip install 'deeplab-edge[litert]')"
    if b.family == "litert" and device.type == "cuda":
        return "LiteRT runs on the CPU; a GPU run would time it beside GPU backends"
    if b.family == "ov":
        reason = openvino_unavailable()
        if reason:
            return reason
        if device.type == "cuda":
            return "OpenVINO runs on the CPU here; a GPU run would time it beside GPU backends"
        if b.precision == "bf16" and not {"avx512_bf16", "amx_bf16"} & cpu_flags():
            return "this CPU has no native bf16 (avx512_bf16 / amx_bf16): OpenVINO would not run bf16 on it"
    if b.family in ("ort", "qdq", "ov") and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'deeplab-edge[onnx]')"
    if b.family == "trt":
        return tensorrt_unavailable()
    return None


def _not_by_default(b: Backend, device: torch.device) -> str | None:
    """Why ``auto`` leaves a runnable backend out (it still runs when named in --backends)."""
    if b.precision == "bf16" and device.type == "cpu" and not {"avx512_bf16", "amx_bf16"} & cpu_flags():
        return "this CPU has no native bf16 (avx512_bf16 / amx_bf16): PyTorch emulates it, many times slower " \
               "than fp32; name torch-bf16 in --backends to measure it anyway"
    if b.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no native bf16"
    if b.family == "compile" and b.precision == "fp32" and device.type == "cuda":
        return "on a GPU, auto times torch.compile in fp16 (compile-fp16)"
    if b.family == "triton" and b.precision == "fp32":
        return "auto times the Triton kernels in fp16 (triton-fp16)"
    if b.family == "ort" and b.precision == "int8" and device.type == "cuda":
        return "ONNX Runtime's INT8 model is a CPU deployment target; on a GPU the TensorRT INT8 engine is"
    return None


def select_backends(requested: str, device: torch.device, *, tflite: bool = False
                    ) -> tuple[list[Backend], list[dict[str, str]]]:
    """Backends to run and the ones left out, each with its reason. ``requested``: ``auto`` (what
    this machine runs well), ``all``, or a comma-separated list of names; ``tflite``: a .tflite
    model was given (the LiteRT backend runs it)."""
    if requested in ("auto", "all"):
        names = list(BACKENDS)
    else:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        bad = [n for n in names if n not in BACKENDS]
        if bad or not names:
            raise DeepLabEdgeError(f"unknown backend {', '.join(bad) or repr(requested)}; choose from auto, all, "
                                   f"{', '.join(BACKENDS)}")
    run, skipped = [], []
    for n in dict.fromkeys(names):
        b = BACKENDS[n]
        reason = _cannot_run(b, device) or (_not_by_default(b, device) if requested == "auto" else None)
        if not reason and b.family == "litert" and not tflite:
            reason = "no .tflite model given; pass --tflite FILE (e.g. the file the checkpoint was imported from)"
        if reason:
            skipped.append({"backend": n, "reason": reason})
        else:
            run.append(b)
    return run, skipped


# ----------------------------------------------------------------------------- memory

def peak_rss_reset() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_mb() -> float | None:
    """Peak resident set of this process since the last :func:`peak_rss_reset`, in MB."""
    return _status_mb("VmHWM")


# ----------------------------------------------------------------------------- where INT8 calibrates

@dataclass(frozen=True)
class CalibrationPlan:
    """Where a benchmark's INT8 models are calibrated and which of its images each one scores: ``sources`` (a
    folder or a dataset per model) and ``scored`` (indices into the benchmark's images, per model); ``how`` is
    ``given`` (--calib-data), ``train-split``, ``folds`` or ``eval-images`` (--calib-on-eval), ``says`` the line
    that tells the user."""

    how: str
    sources: tuple[Any, ...]
    scored: tuple[tuple[int, ...], ...]
    says: str


def fold_indices(n: int, k: int) -> list[tuple[list[int], list[int]]]:
    """(calibration, scored) image indices of ``k`` folds: fold f scores the images i with i % k == f."""
    return [([i for i in range(n) if i % k != f], [i for i in range(n) if i % k == f]) for f in range(k)]


def _train_split(dataset):
    """The train split of the benchmark's own dataset (VOC, Cityscapes, CamVid layouts), when it has one that
    shares no image with the benchmark's."""
    if dataset.kind not in ("voc", "cityscapes", "camvid") or getattr(dataset, "split", None) == "train":
        return None
    try:
        train = open_dataset(dataset.root, dataset.kind, "train")
    except DeepLabEdgeError:
        return None
    return None if {s.image for s in train.samples} & {s.image for s in dataset.samples} else train


def plan_calibration(dataset, calib_data: Path | None = None, folds: int = 3, on_eval: bool = False) -> CalibrationPlan:
    """Held out by default: ``calib_data`` when given; else the dataset's train split; else ``folds`` folds of
    the benchmark's images, each scored by models calibrated on the others. ``on_eval`` (the old behaviour,
    flagged in the result) calibrates on the scored images themselves."""
    every = tuple(range(len(dataset)))
    if calib_data is not None:
        return CalibrationPlan("given", (Path(calib_data),), (every,), f"INT8 calibrated on --calib-data {calib_data}")
    if on_eval:
        return CalibrationPlan("eval-images", (dataset,), (every,), "INT8 calibrated on the benchmark's own images "
                               "(--calib-on-eval): its accuracy is not held out")
    train = _train_split(dataset)
    if train is not None:
        return CalibrationPlan("train-split", (train,), (every,), f"INT8 calibrated on the train split of "
                               f"{dataset.root} ({len(train)} images), none of them scored")
    k = min(folds, len(dataset))
    if k < 2:
        raise DeepLabEdgeError(f"{dataset.root}: {len(dataset)} image{'s' if len(dataset) != 1 else ''} and no train "
                               "split: INT8 cannot be calibrated on other images than it is scored on; pass "
                               "--calib-data DIR (e.g. the train split), --calib-folds 2 or more, or --calib-on-eval")
    idx = fold_indices(len(dataset), k)
    return CalibrationPlan("folds", tuple(dataset.take(c) for c, _ in idx), tuple(tuple(e) for _, e in idx),
                           f"no --calib-data and no train split beside {dataset.root}: {k} folds (image i in fold "
                           f"i % {k}), each scored by INT8 models calibrated on the other folds, pooled")


# ----------------------------------------------------------------------------- artefacts

def build_artifacts(loaded, weights: Path, dataset, work: Path, backends: list[Backend], *, batches: list[int],
                    plan: CalibrationPlan, calib_num: int, calib_method: str,
                    log: Callable[[str], None], weight_bits: int = 8) -> dict[str, Any]:
    """The FP32 ONNX export and the INT8 models the chosen backends need, in ``work``; what ``work`` already
    holds is reused only when its stamp says it was made from the same weights, settings and images."""
    families = {(b.family, b.precision) for b in backends}
    if not any(f in ("ort", "qdq", "ov", "trt") for f, _ in families):
        return {}
    export_key, info = _export_artifact(loaded, weights, dataset, work, max(batches) > 1, log)
    art = {"onnx_fp32": info}
    if CALIBRATED & families:
        art["calibration"] = _calibrations(work, export_key, dataset, plan, calib_num, calib_method, log,
                                           weight_bits)
    return art


def label_models(art: dict[str, Any], dtype: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Beside every ONNX model of ``art`` (the FP32 export, each calibration's QDQ and CPU INT8 models), the
    same graph with the arg-max inside (``export --emit labels``): ``<name>_labels.onnx``, made afresh from the
    model beside it. Returns {"dtype", "models": {logit model: label model}}."""
    import onnx

    sources = [art["onnx_fp32"]["path"]]
    cal = art.get("calibration") or {}
    for c in [cal, *(cal.get("folds") or [])]:
        sources += [c[k] for k in ("qdq_onnx", "cpu_int8_onnx") if c.get(k)]
    models = {}
    for src in dict.fromkeys(sources):
        dst = Path(src).with_name(Path(src).stem + "_labels.onnx")
        onnx.save(with_label_output(onnx.load(src), dtype), str(dst))
        models[src] = str(dst)
    log(f"label models ({dtype}, the arg-max in the graph) beside {len(models)} ONNX model(s)")
    return {"dtype": dtype, "models": models}


def _calibrations(work: Path, export_key: str, dataset, plan: CalibrationPlan, calib_num: int, calib_method: str,
                  log: Callable[[str], None], weight_bits: int = 8) -> dict[str, Any]:
    """Every INT8 model of ``plan`` (one, or one per fold in ``work/foldK``): the first one's record at the top
    (its models time the INT8 backends), with how it was planned and, for folds, each fold's models and images."""
    log(plan.says)
    models = []
    for k, (source, scored) in enumerate(zip(plan.sources, plan.scored)):
        where = work if len(plan.sources) == 1 else work / f"fold{k}"
        where.mkdir(parents=True, exist_ok=True)
        models.append(_calibration_artifact(where, work / "model_fp32.onnx", export_key, dataset.take(scored), source,
                                            calib_num, calib_method, log, given=plan.how == "given",
                                            weight_bits=weight_bits))
    info = {**models[0], "how": plan.how, "says": plan.says,
            "overlap_images": sum(m["overlap_images"] for m in models),
            "held_out": all(m["held_out"] for m in models)}
    if len(models) > 1:
        info["folds"] = [{"qdq_onnx": m["qdq_onnx"], "cpu_int8_onnx": m["cpu_int8_onnx"], "scored": list(scored),
                          "calibration_images": m.get("images"), "held_out": m["held_out"]}
                         for m, scored in zip(models, plan.scored)]
    return info


def _export_artifact(loaded, weights: Path, dataset, work: Path, batch: bool, log: Callable[[str], None]
                     ) -> tuple[str, dict[str, Any]]:
    """(the export's stamp, its record): ``work/model_fp32.onnx`` exported, or reused when its stamp matches."""
    fp32 = work / "model_fp32.onnx"
    sha = loaded.meta.get("sha256")
    dynamic = dynamic_axes(loaded.meta, batch=batch)
    # what the export is made from and with (weights, config such as the output stride, preprocessing and input
    # size, dynamic axes): an ONNX in --artifacts is reused only when bench itself exported it so
    export_key = json.dumps({"checkpoint_sha256": sha, "config": loaded.model.config,
                             "preprocess": loaded.meta.get("preprocess"), "dynamic": sorted(dynamic)},
                            sort_keys=True, default=str)
    export_stamp = work / "export.stamp"
    if sha and fp32.is_file() and export_stamp.is_file() and export_stamp.read_text() == export_key:
        log(f"reusing {fp32}")
        return export_key, {"path": str(fp32), "reused": True}
    (work / "calibration.stamp").unlink(missing_ok=True)  # the INT8 models derive from this export
    export_stamp.unlink(missing_ok=True)
    log(f"exporting {weights.name} to ONNX (parity check on 2 images)")
    t = time.perf_counter()
    images = [dataset.load(i)[1] for i in range(min(2, len(dataset)))]
    rep = export_onnx(loaded, fp32, images, dynamic=dynamic)
    export_stamp.write_text(export_key)
    return export_key, {"path": str(fp32), "seconds": time.perf_counter() - t,
                        "parity_agreement": rep.parity["agreement"], "parity_max_abs_diff": rep.parity["max_abs_diff"]}


def _calibration_artifact(work: Path, fp32: Path, export_key: str, scored, src, calib_num: int, calib_method: str,
                          log: Callable[[str], None], given: bool = True, weight_bits: int = 8) -> dict[str, Any]:
    """The QDQ and CPU INT8 models in ``work`` calibrated on ``src`` (a folder or a dataset; reused for the same
    export, method and images by content), with how many of the ``scored`` images calibrated them."""
    from deeplab_edge.calibration.workflow import calibrate

    qdq, cpu, stamp = work / "model_qdq.onnx", work / "model_cpu_int8.onnx", work / "calibration.stamp"
    calib_ds = as_dataset(src)
    calib_images = [smp.image for smp in calib_ds.subset(calib_num).samples]
    data = str(Path(src).resolve()) if not isinstance(src, SegmentationDataset) else str(Path(calib_ds.root).resolve())
    # the calibration images by content (a folder whose images changed is calibrated again)
    key = json.dumps({"export": export_key, "data": data, "images_sha1": image_digests(calib_images),
                      "num": calib_num, "method": calib_method, "weight_bits": weight_bits}, sort_keys=True)
    if qdq.is_file() and cpu.is_file() and stamp.is_file() and stamp.read_text() == key:
        log(f"reusing the calibration in {work}")
        info: dict[str, Any] = {"reused": True}
    else:
        log(f"calibrating ({calib_method}, up to {calib_num} images of {data})")
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # recorded in the report, shown below by kind
            rep = calibrate(fp32, src, work, num=calib_num, method=calib_method, weight_bits=weight_bits)
        stamp.write_text(key)
        info = {"seconds": time.perf_counter() - t, "images": rep["images"], "warnings": rep["warnings"],
                "cpu_int8": rep.get("cpu_int8")}
    info.update({"method": calib_method, "weight_bits": weight_bits, "data": data, "qdq_onnx": str(qdq), "cpu_int8_onnx": str(cpu),
                 "cache": str(work / "calibration.cache")})
    shared = shared_images(calib_images, [smp.image for smp in scored.samples])
    info["overlap_images"] = len(shared)
    info["held_out"] = not shared
    if shared:
        why = ("--calib-on-eval: calibrated on the benchmark's own images" if not given else
               f"{len(shared)} of the {len(calib_images)} calibration images are also evaluated "
               f"(e.g. {shared[0][1].name})")
        info["note"] = (f"{why}: the INT8 accuracy is not held out and is optimistic by however much calibration "
                        "overfits; pass --calib-data with other images (e.g. the train split)")
        log(f"WARNING: {info['note']}")
    for w in info.get("warnings", []):
        if w["kind"] in SHOWN_CALIBRATION_WARNINGS:
            log(f"WARNING: {w['message']}")
    return info


# ----------------------------------------------------------------------------- runners

def _make_runner(b: Backend, weights: Path, arch: str | None, device: torch.device, art: dict[str, Any],
                 threads: int | None, engines: dict[str, Path], tflite: Path | None = None,
                 output_stride: int | None = None, output: str = "logits"):
    """(runner, file the model came from, extra info) for backend ``b``, through the runtime's one factory.
    ``output_stride``: the PyTorch backends run the checkpoint's weights at it (the ONNX and INT8 models
    were exported at it already); ``output`` ``labels``: an ONNX backend runs its label model
    (:func:`label_models`)."""
    if b.family in ("torch", "compile", "triton"):
        path, kw = weights, {"backend": b.family, "precision": b.precision, "device": device, "arch": arch,
                             "output_stride": output_stride}
    elif b.family in ("ort", "qdq", "ov"):
        path = Path(art["onnx_fp32"]["path"]) if b.precision != "int8" else Path(
            art["calibration"]["cpu_int8_onnx" if b.family == "ort" else "qdq_onnx"])
        if output == "labels":
            path = Path(art["labels"]["models"][str(path)])
        kw = {"backend": "onnxruntime"} if b.family != "ov" else {
            "backend": "openvino", "precision": "bf16" if b.precision == "bf16" else "fp32"}
    elif b.family == "litert":
        if tflite is None:
            raise DeepLabEdgeError(f"{b.name}: no .tflite model; pass --tflite FILE (e.g. the file the checkpoint "
                                   "was imported from)")
        path, kw = tflite, {"backend": "litert"}
    elif b.family == "trt":
        path = engines.get(b.precision)
        if path is None:
            raise DeepLabEdgeError(f"{b.name}: no engine; pass --engine {b.precision}=FILE (build one with "
                                   f"`deeplab-edge build`)")
        kw = {"backend": "tensorrt", "device": device if device.type == "cuda" else "auto"}
    else:
        raise AssertionError(b.family)
    runner = open_runner(path, threads=threads, **kw)
    keep = ("provider", "ort_graph_optimizations", "engine", "output_stride", "output", "precision_hint",
            "runtime_precisions", "openvino", "int8_saturation")
    return runner, path, {k: v for k, v in runner.info.items() if k in keep}


def _sync(runner) -> None:
    s = getattr(runner, "synchronize", None)
    if s is not None:
        s()


# ----------------------------------------------------------------------------- the run

def _ms_summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "mean": float(np.mean(values))}


@dataclass(frozen=True)
class BenchConfig:
    """What ``run_bench`` measures: the ``backends`` (from :func:`select_backends`) x ``crf_methods`` (with
    ``crf_preset``'s parameters, or ``crf_params``), latency at each of ``batches`` (``warmup`` untimed calls, then ``iters``);
    the model options (``device``, ``arch``, ``threads``, ``output_stride``, test-time ``scales`` and ``flip``,
    ``engines`` by precision, a ``tflite`` model); the calibration (``calib_num`` images, ``calib_method``; where:
    ``calib_data``, else held out by :func:`plan_calibration` with ``calib_folds``, or ``calib_on_eval``);
    ``settings`` recorded with the result."""

    backends: tuple[Backend, ...]
    crf_methods: tuple[str, ...] = ("none",)
    crf_preset: str = "deeplab-v2"
    crf_params: Any = None  # CRFParams (e.g. from `crf tune`) in place of the preset's
    batches: tuple[int, ...] = (1,)
    warmup: int = 5
    iters: int = 30
    device: str = "auto"
    arch: str | None = None
    threads: int | None = None
    calib_data: Path | None = None
    calib_num: int = 256
    calib_method: str = "mse"
    calib_weight_bits: int = 8  # 7: the QDQ model's weights within +-63 (OpenVINO on x86 without VNNI)
    calib_folds: int = 3
    calib_on_eval: bool = False
    engines: Mapping[str, Path] = field(default_factory=dict)
    tflite: Path | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    output_stride: int | None = None
    emit: tuple[str, ...] = ("logits",)  # "labels": the ONNX backends also run with the arg-max in the graph
    labels_dtype: str = "int32"
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("backends", "crf_methods", "scales", "emit"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "batches", tuple(sorted(set(self.batches))))
        object.__setattr__(self, "engines", dict(self.engines or {}))
        object.__setattr__(self, "settings", dict(self.settings or {}))
        if self.calib_on_eval and self.calib_data is not None:
            raise DeepLabEdgeError("--calib-on-eval calibrates on the benchmark's own images; drop it or --calib-data")
        if self.calib_folds < 2:
            raise DeepLabEdgeError(f"--calib-folds must be >= 2 (calibrate on the others, score each), got "
                                   f"{self.calib_folds}")
        if self.calib_weight_bits not in (8, 7):
            raise DeepLabEdgeError(f"--weight-bits {self.calib_weight_bits!r}: use 8 or 7")
        if self.crf_preset not in PRESETS:
            raise DeepLabEdgeError(f"unknown CRF preset {self.crf_preset!r}; choose one of {', '.join(PRESETS)}")
        if not self.backends:
            raise DeepLabEdgeError("no backend given to run; pass backends from select_backends()")
        if not self.emit or set(self.emit) - {"logits", "labels"}:
            raise DeepLabEdgeError(f"--emit takes logits and/or labels, got {', '.join(self.emit) or 'nothing'}")
        if self.labels_dtype not in LABEL_DTYPES:
            raise DeepLabEdgeError(f"--labels-dtype must be one of {', '.join(LABEL_DTYPES)}, got {self.labels_dtype!r}")
        if self.warmup < 0 or self.iters < 1:
            raise DeepLabEdgeError(f"--warmup must be >= 0 and --iters >= 1, got {self.warmup} and {self.iters}")

    @property
    def crf(self):
        """The CRF's parameters: ``crf_params``, else the preset's."""
        return self.crf_params if self.crf_params is not None else PRESETS[self.crf_preset]

    @property
    def msc(self) -> bool:
        """Test-time scales or flip: the model runs at other input sizes."""
        return self.scales != (1.0,) or self.flip


@dataclass
class _Run:
    """One benchmark run's shared state: what every backend's pass reads."""

    config: BenchConfig
    weights: Path
    dataset: Any
    dev: torch.device
    loaded: Any
    art: dict[str, Any]
    stages: dict[str, Any]        # CRF option -> its Segmenter stage ("none" has none)
    crfs: list[str]
    power: Any
    progress: Callable[[str, int], Callable[[str], None]] | None
    log: Callable[[str], None] = lambda s: None
    preds: Path = Path(".")  # where the accuracy pass saves label maps for the agreement between rows

    def tick(self, desc: str, total: int):
        return self.progress(desc, total) if self.progress else None


def run_bench(weights: Path, dataset, config: BenchConfig | None = None, *, work: Path, power: Any = None,
              skipped: list[dict[str, str]] | None = None,
              progress: Callable[[str, int], Callable[[str], None]] | None = None,
              log: Callable[[str], None] = lambda s: None, **options: Any) -> dict[str, Any]:
    """Run the matrix of ``config`` (or the :class:`BenchConfig` fields in ``options``); returns the complete
    result document (what ``bench -o`` writes and :func:`~deeplab_edge.bench.report.load_result` reads): the
    format, the machine, the data and settings, the rows, what was skipped (``skipped``: backends left out
    before the run) and the artefacts."""
    config = dataclasses.replace(config, **options) if config is not None else BenchConfig(**options)
    dev = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    loaded = checked_model(weights, dataset, config)
    work.mkdir(parents=True, exist_ok=True)
    skipped = list(skipped or [])
    backends = list(config.backends)
    if config.msc:  # before the artefacts: nothing exported or calibrated for backends that cannot take other sizes
        fixed = [b for b in backends if b.family not in ("torch", "compile", "triton")]
        skipped += [{"backend": b.name, "reason": "--scales/--flip run the model at other input sizes; this "
                                                  "backend's model has a fixed input"} for b in fixed]
        backends = [b for b in backends if b not in fixed]
        if not backends:
            raise DeepLabEdgeError("--scales/--flip need a PyTorch backend (torch-*, compile-*, triton-*); the "
                                   "selected ones all have fixed inputs")
    int8 = CALIBRATED & {(b.family, b.precision) for b in backends}
    plan = plan_calibration(dataset, config.calib_data, config.calib_folds, config.calib_on_eval) if int8 else None
    art = build_artifacts(loaded, weights, dataset, work, backends, batches=list(config.batches), plan=plan,
                          calib_num=config.calib_num, calib_method=config.calib_method, log=log,
                          weight_bits=config.calib_weight_bits)
    labels = "labels" in config.emit and any(b.family in LABEL_FAMILIES for b in backends)
    if labels:
        art["labels"] = label_models(art, config.labels_dtype, log)
    stages, skipped_crf = _crf_stages(config, dev)
    crfs = ["none", *stages] if "none" in config.crf_methods else list(stages)
    if not crfs:
        raise DeepLabEdgeError("no CRF option can run here (" + "; ".join(f"{s['crf']}: {s['reason']}"
                                                                     for s in skipped_crf) + "); add --crf none")
    run = _Run(config, weights, dataset, dev, loaded, art, stages, crfs, power, progress, log, work / "predictions")
    shutil.rmtree(run.preds, ignore_errors=True)  # a previous run's label maps never compared with this run's
    rows: list[dict[str, Any]] = []
    try:
        for b in backends:
            outputs = [o for o in config.emit if o == "logits" or b.family in LABEL_FAMILIES] or ["logits"]
            for output in outputs:
                got = _bench_backend(run, b, output)
                if isinstance(got, str):
                    skipped.append({"backend": b.name + (" (labels)" if output == "labels" else ""), "reason": got})
                else:
                    rows += got
                    if got and got[0].get("int8_saturation"):
                        log(f"WARNING: {b.name}: {got[0]['int8_saturation']}")
        base = next((r for r in rows if r["crf"] == "none" and r["output"] == "logits"), rows[0]) if rows else None
        if base is not None:
            _agreements(run, rows, base)
    finally:
        shutil.rmtree(run.preds, ignore_errors=True)
    if labels and any(c != "none" for c in crfs):
        skipped_crf.append({"crf": "/".join(c for c in crfs if c != "none") + " on the label models",
                            "reason": "a label model outputs no scores for the CRF to refine; its rows are CRF none"})
    if not rows:
        raise DeepLabEdgeError("every selected backend failed to start: " +
                               "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped))
    for r in rows:
        r["miou_delta_points"] = 100 * (r["miou"] - base["miou"])
        r["speedup"] = (base["latency_ms"] / r["latency_ms"]
                        if r["latency_is_speed"] and r["latency_ms"] and base["latency_ms"] else None)
    info = model_info(loaded, weights, rows[0]["input_size"])
    for r in rows:
        r.update(model=info["name"], model_info=info, variant=variant_label(info["output_stride"], config.scales, config.flip),
                 output_stride=info["output_stride"], scales=list(config.scales), flip=config.flip)
    mark_pareto(rows)
    return {**_document(run, backends, rows, base, skipped, skipped_crf), "model": info}


def model_info(loaded, weights: Path, input_size) -> dict[str, Any]:
    """What a row says of its model: name (the file's stem), file, architecture, output stride, ASPP rates,
    parameters and GFLOPs of one forward pass at ``input_size`` (H, W: what the model is fed)."""
    m = loaded.model
    h, w = (int(v) for v in input_size)
    return {"name": Path(weights).stem, "file": str(weights), "arch": m.config.get("arch"),
            "output_stride": m.config.get("output_stride"), "aspp_rates": m.config.get("aspp_rates"),
            "params": count_params(m), "gflops": count_flops(m, h, w) / 1e9, "input_size": [h, w],
            "sha256": loaded.meta.get("sha256")}


def variant_label(output_stride: int | None, scales: Iterable[float], flip: bool) -> str:
    """A run's test-time setting in a few characters: ``OS16``, ``OS8 MSC 0.5-1.75 +flip`` (no ``OS`` part
    for an output stride not known yet: None)."""
    scales = tuple(scales)
    parts = [f"OS{output_stride}"] if output_stride else []
    if scales != (1.0,):
        parts.append(f"MSC {min(scales):g}-{max(scales):g}" if len(scales) > 1 else f"x{scales[0]:g}")
    if flip:
        parts.append("+flip")
    return " ".join(parts) or "single scale"


def checked_model(weights: Path, dataset, config: BenchConfig):
    """The checkpoint at the config's output stride, refused when it does not fit the labelled ``dataset``."""
    loaded = load_checkpoint(weights, arch=config.arch, output_stride=config.output_stride)
    if dataset.num_classes != loaded.model.num_classes:
        raise DeepLabEdgeError(f"the model predicts {loaded.model.num_classes} classes but {dataset.kind} has "
                               f"{dataset.num_classes}; use a model trained for this dataset")
    if not dataset.has_labels:
        raise DeepLabEdgeError(f"{dataset.root}: has no labels, and bench measures mIoU; pass a labelled VOC, "
                               "Cityscapes or CamVid folder")
    return loaded


def _crf_stages(config: BenchConfig, dev: torch.device) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The CRF options that can run here as Segmenter stages, and the others with the reason."""
    skipped_crf, stages = [], {}
    for m in config.crf_methods:
        if m == "none":
            continue
        reason = triton_unavailable(dev, timing=True) if m in TRITON_METHODS else None
        if reason:
            skipped_crf.append({"crf": m, "reason": reason})
            continue
        try:
            stages[m] = CRFStage(m, config.crf, "cpu" if m == "pydensecrf" else dev)
        except DeepLabEdgeError as e:
            skipped_crf.append({"crf": m, "reason": str(e)})
    return stages, skipped_crf


def _bench_backend(run: _Run, b: Backend, output: str = "logits") -> list[dict[str, Any]] | str:
    """Backend ``b``'s rows (one per CRF option; ``output`` ``labels``: its label model, one row without a
    CRF), or why it could not start. The first call (compilation, engine set-up, lazy initialisation) is
    reported, never timed as latency; the accuracy pass is eval's one loop, every CRF option on the same
    network outputs; then the latency pass per batch size. Each row says what the model hands the host per
    frame (bytes) and the host's work from there to the label map (arg-max, restoring the image's size)."""
    cfg, dev, dataset = run.config, run.dev, run.dataset
    peak_rss_reset()
    rss0 = _status_mb("VmRSS")
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        runner, source, extra = _make_runner(b, run.weights, cfg.arch, dev, run.art, cfg.threads, dict(cfg.engines),
                                             cfg.tflite, output_stride=cfg.output_stride, output=output)
    except DeepLabEdgeError as e:
        return str(e)
    n_cls = run.loaded.model.num_classes
    if runner.num_classes != n_cls:
        return f"{source}: predicts {runner.num_classes} classes, the checkpoint {n_cls}; give the matching model"
    x0 = runner.preprocess(dataset.load(0)[1])[0][None]  # the checkpoint's, or what the exported file carries
    t = time.perf_counter()
    y0 = runner(x0)
    _sync(runner)
    first_call_s = time.perf_counter() - t
    seg = Segmenter(runner, scales=cfg.scales, flip=cfg.flip)
    if seg.labels and "none" not in run.crfs:
        return "a label model's only row is without a CRF, and --crf has no none; add it (--crf none,...)"
    crfs = run.crfs if not seg.labels else ["none"]
    itemsize = getattr(runner, "output_itemsize", None) or y0.element_size()
    out_info = {"output": "labels" if seg.labels else "logits", "output_bytes_per_frame": int(y0[0].numel() * itemsize)}
    ev = _accuracy_pass(run, b, seg, crfs, output)
    latency = _latency_pass(run, b, runner, seg)
    mem = {"peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0}
    if dev.type == "cuda" and b.family in ("torch", "compile", "triton"):
        mem["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    rows = _rows(run, b, ev, latency, crfs, {"first_call_s": first_call_s, "memory": mem, "file": str(source),
                                             "file_mb": Path(source).stat().st_size / 1e6,
                                             "input_size": list(x0.shape[-2:]), **extra, **out_info})
    del runner
    return rows


def _accuracy_pass(run: _Run, b: Backend, seg, crfs: list[str], output: str = "logits") -> dict[str, Any]:
    """Every image through eval's one loop, every CRF option on the same network outputs. With calibration
    folds, an INT8 backend scores each fold with the models calibrated on the other folds (fold 0's is ``seg``)
    and the confusion matrices are pooled: no image is scored by a model that calibrated on it."""
    tick = run.tick(f"{b.name}: accuracy", len(run.dataset))
    options = {c: run.stages.get(c) for c in crfs}
    keep = _prediction_keeper(run, _row_key(b.name, output)) if crfs[0] == "none" else None
    folds = (run.art.get("calibration") or {}).get("folds")
    if not folds or b.family not in ("ort", "qdq", "ov") or b.precision != "int8":
        return evaluate(seg, run.dataset, on_image=tick, options=options, on_prediction=keep)
    key = "cpu_int8_onnx" if b.family == "ort" else "qdq_onnx"
    kw = {"backend": "openvino"} if b.family == "ov" else {"backend": "onnxruntime"}
    evs = []
    for k, fold in enumerate(folds):
        path = fold[key] if output == "logits" else run.art["labels"]["models"][fold[key]]
        s = seg if k == 0 else Segmenter(open_runner(Path(path), threads=run.config.threads, **kw))
        evs.append(evaluate(s, run.dataset.take(fold["scored"]), on_image=tick, options=options, on_prediction=keep))
    return _pooled(evs)


# ----------------------------------------------------------------------------- pixel agreement between rows

def _row_key(backend: str, output: str) -> str:
    return backend + (" (labels)" if output == "labels" else "")


def _prediction_keeper(run: _Run, key: str) -> Callable[[str, np.ndarray], None]:
    """Saves each image's label map without a CRF under the run's work folder (compressed: a label map packs
    to a few KB), for :func:`_agreements`."""
    folder = run.preds / key
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    def keep(sid: str, pred: np.ndarray) -> None:
        np.savez_compressed(folder / (sid.replace("/", "__").replace("\\", "__") + ".npz"),
                            p=np.asarray(pred, dtype=np.uint8 if int(pred.max(initial=0)) < 256 else np.int32))
    return keep


def _agreement(a: Path, b: Path) -> float | None:
    """The share of pixels on which two rows' saved label maps agree, over the images both scored."""
    same = total = 0
    for f in sorted(a.glob("*.npz")):
        g = b / f.name
        if not g.is_file():
            return None
        with np.load(f) as x, np.load(g) as y:
            p, q = x["p"], y["p"]
        if p.shape != q.shape:
            return None
        same, total = same + int((p.astype(np.int64) == q).sum()), total + p.size
    return same / total if total else None


def _agreements(run: _Run, rows: list[dict[str, Any]], base: dict[str, Any]) -> None:
    """Each row without a CRF gets ``pixel_agreement``: the share of its pixels labelled as the baseline row
    labels them (the first backend, no CRF) and, for OpenVINO's INT8 row, as the emulated QDQ model's
    (``qdq-int8``, the same file) — the same images, predictions saved in the accuracy pass."""
    ref = _row_key(base["backend"], base["output"])  # run.preds holds only this run's folders (cleared before it)
    for r in rows:
        key = _row_key(r["backend"], r["output"])
        if r["crf"] != "none" or not (run.preds / key).is_dir():
            continue
        against = {ref: run.preds / ref}
        if r["backend"] == "ov-int8" and ref != "qdq-int8":  # a qdq-int8 baseline is that comparison already
            against["qdq-int8"] = run.preds / _row_key("qdq-int8", r["output"])
        r["pixel_agreement"] = {name: _agreement(run.preds / key, d) for name, d in against.items()
                                if d.name != key and d.is_dir()}
        r["pixel_agreement_baseline"] = ref


def _pooled(evs: list[dict[str, Any]]) -> dict[str, Any]:
    """One evaluation of several disjoint parts: each option's confusion matrices summed, the per-image times
    joined."""
    pooled: dict[str, Any] = {"options": {}, "samples_ms": {}}
    for name in evs[0]["options"]:
        cm = ConfusionMatrix(len(evs[0]["options"][name]["confusion"]))
        cm.mat = sum(np.asarray(e["options"][name]["confusion"], dtype=np.int64) for e in evs)
        pooled["options"][name] = {**cm.compute(), "confusion": cm.mat.tolist()}
    for e in evs:
        for k, v in e["samples_ms"].items():
            pooled["samples_ms"].setdefault(k, []).extend(v)
    return pooled


def _latency_pass(run: _Run, b: Backend, runner, seg) -> list[dict[str, Any]]:
    """The model alone (or the multi-scale forward) on preprocessed real images, per batch size, with the
    mean power over the pass where a sampler reads it."""
    cfg, dataset = run.config, run.dataset
    # one backend timed at a time: no other runner alive (an earlier backend's ONNX Runtime session would spin its
    # threads after each call, an OpenVINO or LiteRT one hold its pool), the fold runners of the accuracy pass gone
    others = [r for r in live_runners() if r is not runner]
    if others:  # the caller's own (a notebook's runner, say): timed anyway, said in the row and the log
        run.log(f"WARNING: {b.name}: timed while {len(others)} other runner(s) are alive "
                f"({', '.join(sorted({type(r).__name__ for r in others}))}); their threads may take cores")
    latency = []
    for bs in cfg.batches:
        xb = torch.stack([runner.preprocess(dataset.load(i % len(dataset))[1])[0] for i in range(bs)])
        lt = run.tick(f"{b.name}: latency, batch {bs}", 1)
        with sampling(run.power) as reading:  # tegrastats / jtop stopped however the timing ends
            dev_r = getattr(runner, "device", None)  # PyTorch runners on a GPU: CUDA events
            cuda = dev_r if isinstance(dev_r, torch.device) and dev_r.type == "cuda" else None
            xr = xb.to(cuda) if cuda is not None else xb
            ms = time_calls(functools.partial(seg.forward if cfg.msc else runner, xr), cfg.warmup, cfg.iters,
                            cuda_device=cuda, sync=getattr(runner, "synchronize", None))
        summary = latency_summary(ms, bs)
        summary.update(warmup_calls=cfg.warmup, other_runners_alive=len(others))
        if reading.watts is not None:
            summary["power_w"] = reading.watts
            summary["energy_mj_per_image"] = reading.watts * summary["mean_ms"] / bs
        latency.append(summary)
        if lt:
            lt(f"batch {bs}")
    return latency


def _rows(run: _Run, b: Backend, ev: dict[str, Any], latency: list[dict[str, Any]], crfs: list[str],
          extra: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per CRF option: its accuracy, the model's p50 at batch 1 plus the CRF's median as its latency;
    without a CRF, the host's post-processing median (``host_postprocess_ms``: model output to label map at the
    image's size; with a CRF that work is the CRF's, in ``crf_ms``)."""
    samples = ev["samples_ms"]
    model_p50 = latency[0]["p50_ms"] if latency[0]["batch"] == 1 else None
    harness = {k: _ms_summary(samples.get(k, [])) for k in ("load", "preprocess", "postprocess", "restore_logits")
               if samples.get(k)}
    params = run.config.crf
    rows = []
    post = _ms_summary(samples.get("postprocess", []))
    for c in crfs:
        res = ev["options"][c]
        c_ms = _ms_summary(samples[f"crf:{c}"]) if c != "none" else None
        row = {"backend": b.name, "family": b.family, "precision": b.precision, "description": b.description,
               "crf": c, "miou": res["miou"], "pixel_acc": res["pixel_acc"], "mean_acc": res["mean_acc"],
               "class_iou": dict(zip(run.loaded.classes, res["class_iou"])), "images": len(run.dataset),
               "model_ms_p50": model_p50, "crf_ms": c_ms,
               "latency_ms": (model_p50 + (c_ms["p50"] if c_ms else 0.0)) if model_p50 is not None else None,
               "latency_is_speed": b.family != "qdq",
               "batches": latency, "accuracy_pass_model_ms": _ms_summary(samples["model"]),
               "harness_ms": harness, "host_postprocess_ms": post["p50"] if post and c == "none" else None, **extra}
        if c != "none":
            row["crf_params"] = params.as_dict()
        rows.append(row)
    return rows


def _document(run: _Run, backends: list[Backend], rows: list[dict[str, Any]], base: dict[str, Any],
              skipped: list[dict[str, str]], skipped_crf: list[dict[str, str]]) -> dict[str, Any]:
    cfg, dataset = run.config, run.dataset
    settings = dict(cfg.settings)
    return {"format": FORMAT, "environment": environment(), "data": str(dataset.root), "dataset": dataset.kind,
            "split": settings.get("split"), "images": len(dataset), "weights": str(run.weights),
            "device": str(run.dev),
            "settings": {"backends": [b.name for b in backends], "crf": list(cfg.crf_methods),
                         "crf_preset": cfg.crf_preset if cfg.crf_params is None else None,
                         "crf_params": cfg.crf.as_dict(), "batches": list(cfg.batches), "iters": cfg.iters,
                         "warmup": cfg.warmup, "threads": cfg.threads or torch.get_num_threads(),
                         "calib_method": cfg.calib_method, "calib_weight_bits": cfg.calib_weight_bits,
                         "calibration": (run.art.get("calibration") or {}).get("how"),
                         "scales": list(cfg.scales), "flip": cfg.flip, "emit": list(cfg.emit),
                         "labels_dtype": cfg.labels_dtype if "labels" in cfg.emit else None,
                         "output_stride": run.loaded.model.config.get("output_stride"), **settings},
            "power": getattr(run.power, "source", None), "baseline": {"backend": base["backend"], "crf": base["crf"]},
            "rows": rows, "skipped": skipped, "skipped_crf": skipped_crf, "artifacts": run.art}
