"""``deeplab-edge bench``: accuracy against speed for every backend x CRF option, in one run.

For each backend that can run here (the rest are listed with the reason they cannot):

1. **Artefacts** are built once and shared: the FP32 ONNX export (with its parity check), the
   calibration (TensorRT QDQ model and ONNX Runtime CPU INT8 model).
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

import functools
import json
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from deeplab_edge.crf import METHODS as CRF_METHODS, TRITON_METHODS
from deeplab_edge.errors import DeepLabEdgeError

from .power import sampling
from .stats import latency_summary, pareto_front, percentile, time_calls

__all__ = ["Backend", "BACKENDS", "CRF_CHOICES", "select_backends", "run_bench", "peak_rss_reset", "peak_rss_mb"]

CRF_CHOICES = ("none", *CRF_METHODS)

#: The kinds of calibration warning bench shows (calibration.alerts.KINDS; the others, e.g. few_images, are
#: expected there). By kind, not wording: rewording a message cannot silence it.
SHOWN_CALIBRATION_WARNINGS = ("kernel_disagreement", "degenerate")


@dataclass(frozen=True)
class Backend:
    name: str
    family: str  # torch | compile | triton | ort | qdq | trt
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
    Backend("litert-int8", "litert", "int8", "LiteRT (XNNPACK) running a quantized .tflite model (--tflite): "
                                             "Google's own runtime for its models"),
    Backend("qdq-int8", "qdq", "int8", "TensorRT QDQ model (s8), exact fake-quant emulation in ONNX Runtime: "
                                       "accuracy of the INT8 engine, not its speed"),
    Backend("trt-fp32", "trt", "fp32", "TensorRT engine, FP32"),
    Backend("trt-fp16", "trt", "fp16", "TensorRT engine, FP16"),
    Backend("trt-int8", "trt", "int8", "TensorRT engine, INT8 from the QDQ model (FP16 for layers left in float)"),
]}


# ----------------------------------------------------------------------------- what can run here

def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cannot_run(b: Backend, device: torch.device) -> str | None:
    """Why ``b`` cannot run on this machine at all (None when it can)."""
    import importlib.util

    cuda = device.type == "cuda"
    if b.family == "triton":
        from deeplab_edge.kernels.device import triton_unavailable

        return triton_unavailable(device, timing=True)
    if b.family in ("torch", "compile") and b.precision == "fp16" and not cuda:
        return "PyTorch has no fp16 convolutions on the CPU; needs a CUDA GPU"
    if b.family == "compile" and not cuda and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++) on PATH"
    if b.family == "litert" and importlib.util.find_spec("ai_edge_litert") is None:
        return "ai-edge-litert is not installed (pip install 'deeplab-edge[litert]')"
    if b.family == "litert" and device.type == "cuda":
        return "LiteRT runs on the CPU; a GPU run would time it beside GPU backends"
    if b.family in ("ort", "qdq") and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (pip install 'deeplab-edge[onnx]')"
    if b.family == "trt":
        from deeplab_edge.engine import tensorrt_unavailable

        return tensorrt_unavailable()
    return None


def _not_by_default(b: Backend, device: torch.device) -> str | None:
    """Why ``auto`` leaves a runnable backend out (it still runs when named in --backends)."""
    if b.precision == "bf16" and device.type == "cpu" and not {"avx512_bf16", "amx_bf16"} & _cpu_flags():
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


# ----------------------------------------------------------------------------- artefacts

def build_artifacts(loaded, weights: Path, dataset, work: Path, backends: list[Backend], *, batches: list[int],
                    calib_data: Path | None, calib_num: int, calib_method: str,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """The FP32 ONNX export and the INT8 models the chosen backends need, in ``work``."""
    families = {(b.family, b.precision) for b in backends}
    need_onnx = any(f in ("ort", "qdq", "trt") for f, _ in families)
    need_calib = ("ort", "int8") in families or ("qdq", "int8") in families or ("trt", "int8") in families
    info: dict[str, Any] = {}
    if not need_onnx:
        return info
    from deeplab_edge.export import dynamic_axes, export_onnx, read_metadata

    fp32 = work / "model_fp32.onnx"
    sha = loaded.meta.get("sha256")
    dynamic = dynamic_axes(loaded.meta, batch=max(batches) > 1)
    # what the export is made from and with (weights, config such as the output stride, preprocessing and input
    # size, dynamic axes): an ONNX in --artifacts is reused only when bench itself exported it so
    export_key = json.dumps({"checkpoint_sha256": sha, "config": loaded.model.config,
                             "preprocess": loaded.meta.get("preprocess"), "dynamic": sorted(dynamic)},
                            sort_keys=True, default=str)
    export_stamp = work / "export.stamp"
    if sha and fp32.is_file() and export_stamp.is_file() and export_stamp.read_text() == export_key:
        log(f"reusing {fp32}")
        info["onnx_fp32"] = {"path": str(fp32), "reused": True}
    else:
        (work / "calibration.stamp").unlink(missing_ok=True)  # the INT8 models derive from this export
        export_stamp.unlink(missing_ok=True)
        log(f"exporting {weights.name} to ONNX (parity check on 2 images)")
        t = time.perf_counter()
        images = [dataset.load(i)[1] for i in range(min(2, len(dataset)))]
        rep = export_onnx(loaded, fp32, images, dynamic=dynamic)
        export_stamp.write_text(export_key)
        info["onnx_fp32"] = {"path": str(fp32), "seconds": time.perf_counter() - t,
                             "parity_agreement": rep.parity["agreement"],
                             "parity_max_abs_diff": rep.parity["max_abs_diff"]}
    if need_calib:
        from deeplab_edge.calibration import calibrate

        src = calib_data or Path(dataset.root)
        qdq, cpu = work / "model_qdq.onnx", work / "model_cpu_int8.onnx"
        stamp = work / "calibration.stamp"
        from deeplab_edge.data.datasets import open_dataset as _open
        from deeplab_edge.data.overlap import image_digests

        # the calibration images by content (a folder whose images changed is calibrated again)
        digests = image_digests(smp.image for smp in _open(src).subset(calib_num).samples)
        key = json.dumps({"export": export_key, "data": str(Path(src).resolve()), "images_sha1": digests,
                          "num": calib_num, "method": calib_method}, sort_keys=True)
        if qdq.is_file() and cpu.is_file() and stamp.is_file() and stamp.read_text() == key:
            log(f"reusing the calibration in {work}")
            info["calibration"] = {"reused": True}
        else:
            log(f"calibrating ({calib_method}, up to {calib_num} images of {src})")
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # recorded in the report, shown below by kind
                rep = calibrate(fp32, src, work, num=calib_num, method=calib_method)
            stamp.write_text(key)
            info["calibration"] = {"seconds": time.perf_counter() - t, "images": rep["images"],
                                   "warnings": rep["warnings"], "cpu_int8": rep.get("cpu_int8")}
        info["calibration"].update({"method": calib_method, "data": str(src), "qdq_onnx": str(qdq),
                                    "cpu_int8_onnx": str(cpu), "cache": str(work / "calibration.cache")})
        from deeplab_edge.data.datasets import open_dataset
        from deeplab_edge.data.overlap import shared_images

        calib_images = [smp.image for smp in open_dataset(src).subset(calib_num).samples]
        shared = shared_images(calib_images, [smp.image for smp in dataset.samples])
        info["calibration"]["overlap_images"] = len(shared)
        info["calibration"]["held_out"] = not shared
        if shared:
            why = ("no --calib-data: calibrated on the benchmark's own images" if calib_data is None else
                   f"{len(shared)} of the {len(calib_images)} calibration images are also evaluated "
                   f"(e.g. {shared[0][1].name})")
            info["calibration"]["note"] = (f"{why}: the INT8 accuracy is not held out and is optimistic by however "
                                           "much calibration overfits; pass --calib-data with other images (e.g. the "
                                           "train split)")
            log(f"WARNING: {info['calibration']['note']}")
        for w in info["calibration"].get("warnings", []):
            if w["kind"] in SHOWN_CALIBRATION_WARNINGS:
                log(f"WARNING: {w['message']}")
    return info


# ----------------------------------------------------------------------------- runners

def _make_runner(b: Backend, weights: Path, arch: str | None, device: torch.device, art: dict[str, Any],
                 threads: int | None, engines: dict[str, Path], tflite: Path | None = None,
                 output_stride: int | None = None):
    """(runner, file the model came from, extra info) for backend ``b``, through the runtime's one factory.
    ``output_stride``: the PyTorch backends run the checkpoint's weights at it (the ONNX and INT8 models
    were exported at it already)."""
    from deeplab_edge.runtime import open_runner

    if b.family in ("torch", "compile", "triton"):
        path, kw = weights, {"backend": b.family, "precision": b.precision, "device": device, "arch": arch,
                             "output_stride": output_stride}
    elif b.family in ("ort", "qdq"):
        path = Path(art["onnx_fp32"]["path"]) if b.name == "ort-fp32" else Path(
            art["calibration"]["cpu_int8_onnx" if b.family == "ort" else "qdq_onnx"])
        kw = {"backend": "onnxruntime"}
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
    keep = ("provider", "ort_graph_optimizations", "engine", "output_stride")
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


def run_bench(weights: Path, dataset, *, backends: list[Backend], crf_methods: list[str], crf_preset: str = "deeplab-v2",
              batches: Iterable[int] = (1,), warmup: int = 5, iters: int = 30, device: str = "auto",
              arch: str | None = None, threads: int | None = None, work: Path, calib_data: Path | None = None,
              calib_num: int = 256, calib_method: str = "mse", engines: dict[str, Path] | None = None,
              tflite: Path | None = None, scales: tuple[float, ...] = (1.0,), flip: bool = False,
              output_stride: int | None = None, power: Any = None, skipped: list[dict[str, str]] | None = None,
              settings: dict[str, Any] | None = None,
              progress: Callable[[str, int], Callable[[str], None]] | None = None,
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the matrix; returns the complete result document (what ``bench -o`` writes and
    :func:`~deeplab_edge.bench.report.load_result` reads): the format, the machine, the data and
    settings, the rows, what was skipped (``skipped``: backends left out before the run) and the
    artefacts."""
    from deeplab_edge.bench.env import environment

    from .report import FORMAT

    from deeplab_edge.checkpoint import load_checkpoint
    from deeplab_edge.crf import PRESETS, CRFStage
    from deeplab_edge.inference import Segmenter, evaluate
    from deeplab_edge.kernels.device import triton_unavailable
    from deeplab_edge.runtime import resolve_device

    batches = sorted(set(batches))
    if not backends:
        raise DeepLabEdgeError("no backend given to run; pass backends from select_backends()")
    if warmup < 0 or iters < 1:
        raise DeepLabEdgeError(f"--warmup must be >= 0 and --iters >= 1, got {warmup} and {iters}")
    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    loaded = load_checkpoint(weights, arch=arch, output_stride=output_stride)
    if dataset.num_classes != loaded.model.num_classes:
        raise DeepLabEdgeError(f"the model predicts {loaded.model.num_classes} classes but {dataset.kind} has "
                               f"{dataset.num_classes}; use a model trained for this dataset")
    if not dataset.has_labels:
        raise DeepLabEdgeError(f"{dataset.root}: has no labels, and bench measures mIoU; pass a labelled VOC, "
                               "Cityscapes or CamVid folder")
    work.mkdir(parents=True, exist_ok=True)
    skipped = list(skipped or [])
    msc = scales != (1.0,) or flip
    if msc:  # before the artefacts: nothing exported or calibrated for backends that cannot take other sizes
        fixed = [b for b in backends if b.family not in ("torch", "compile", "triton")]
        skipped += [{"backend": b.name, "reason": "--scales/--flip run the model at other input sizes; this "
                                                  "backend's model has a fixed input"} for b in fixed]
        backends = [b for b in backends if b not in fixed]
        if not backends:
            raise DeepLabEdgeError("--scales/--flip need a PyTorch backend (torch-*, compile-*, triton-*); the "
                                   "selected ones all have fixed inputs")
    art = build_artifacts(loaded, weights, dataset, work, backends, batches=batches, calib_data=calib_data,
                          calib_num=calib_num, calib_method=calib_method, log=log)

    skipped_crf, stages = [], {}
    params = PRESETS[crf_preset]
    for m in crf_methods:
        if m == "none":
            continue
        reason = triton_unavailable(dev, timing=True) if m in TRITON_METHODS else None
        if reason:
            skipped_crf.append({"crf": m, "reason": reason})
            continue
        try:
            stages[m] = CRFStage(m, params, "cpu" if m == "pydensecrf" else dev)
        except DeepLabEdgeError as e:
            skipped_crf.append({"crf": m, "reason": str(e)})
    crfs = ["none", *stages] if "none" in crf_methods else list(stages)
    if not crfs:
        raise DeepLabEdgeError("no CRF option can run here (" + "; ".join(f"{s['crf']}: {s['reason']}"
                                                                     for s in skipped_crf) + "); add --crf none")

    n_cls = loaded.model.num_classes
    classes = loaded.classes
    rows: list[dict[str, Any]] = []
    for b in backends:
        peak_rss_reset()
        rss0 = _status_mb("VmRSS")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        try:
            runner, source, extra = _make_runner(b, weights, arch, dev, art, threads, engines or {}, tflite,
                                                 output_stride=output_stride)
        except DeepLabEdgeError as e:
            skipped.append({"backend": b.name, "reason": str(e)})
            continue
        pre = runner.preprocess  # the checkpoint's, or what the exported file carries
        if runner.num_classes != n_cls:
            skipped.append({"backend": b.name, "reason": f"{source}: predicts {runner.num_classes} classes, the "
                                                         f"checkpoint {n_cls}; give the matching model"})
            continue

        # first call: compilation, engine set-up, lazy initialisation — reported, never timed as latency
        x0 = pre(dataset.load(0)[1])[0][None]
        t = time.perf_counter()
        runner(x0)
        _sync(runner)
        first_call_s = time.perf_counter() - t

        # accuracy pass: the one evaluation loop (eval's), every CRF option on the same network outputs
        seg = Segmenter(runner, scales=scales, flip=flip)
        tick = progress(f"{b.name}: accuracy", len(dataset)) if progress else None
        ev = evaluate(seg, dataset, on_image=tick, options={c: stages.get(c) for c in crfs})
        samples = ev["samples_ms"]

        latency = []
        for bs in batches:
            idx = [i % len(dataset) for i in range(bs)]
            xb = torch.stack([pre(dataset.load(i)[1])[0] for i in idx])
            lt = progress(f"{b.name}: latency, batch {bs}", 1) if progress else None
            with sampling(power) as reading:  # tegrastats / jtop stopped however the timing ends
                dev_r = getattr(runner, "device", None)  # PyTorch runners on a GPU: CUDA events
                cuda = dev_r if isinstance(dev_r, torch.device) and dev_r.type == "cuda" else None
                xr = xb.to(cuda) if cuda is not None else xb
                ms = time_calls(functools.partial(seg.forward if msc else runner, xr), warmup, iters,
                                cuda_device=cuda, sync=getattr(runner, "synchronize", None))
            summary = latency_summary(ms, bs)
            if reading.watts is not None:
                summary["power_w"] = reading.watts
                summary["energy_mj_per_image"] = reading.watts * summary["mean_ms"] / bs
            latency.append(summary)
            if lt:
                lt(f"batch {bs}")
        mem = {"peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0}
        if dev.type == "cuda" and b.family in ("torch", "compile", "triton"):
            mem["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        model_p50 = latency[0]["p50_ms"] if latency[0]["batch"] == 1 else None
        harness = {k: _ms_summary(samples.get(k, [])) for k in ("load", "preprocess", "postprocess", "restore_logits")
                   if samples.get(k)}
        for c in crfs:
            res = ev["options"][c]
            c_ms = _ms_summary(samples[f"crf:{c}"]) if c != "none" else None
            row = {"backend": b.name, "family": b.family, "precision": b.precision, "description": b.description,
                   "crf": c, "miou": res["miou"], "pixel_acc": res["pixel_acc"], "mean_acc": res["mean_acc"],
                   "class_iou": dict(zip(classes, res["class_iou"])), "images": len(dataset),
                   "model_ms_p50": model_p50, "crf_ms": c_ms,
                   "latency_ms": (model_p50 + (c_ms["p50"] if c_ms else 0.0)) if model_p50 is not None else None,
                   "latency_is_speed": b.family != "qdq",
                   "batches": latency, "accuracy_pass_model_ms": _ms_summary(samples["model"]),
                   "harness_ms": harness, "first_call_s": first_call_s, "memory": mem,
                   "file": str(source), "file_mb": Path(source).stat().st_size / 1e6, **extra}
            if c != "none":
                row["crf_params"] = params.as_dict()
            rows.append(row)
        del runner

    if not rows:
        raise DeepLabEdgeError("every selected backend failed to start: " +
                               "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped))
    base = next((r for r in rows if r["crf"] == "none"), rows[0])
    for r in rows:
        r["miou_delta_points"] = 100 * (r["miou"] - base["miou"])
        r["speedup"] = (base["latency_ms"] / r["latency_ms"]
                        if r["latency_is_speed"] and r["latency_ms"] and base["latency_ms"] else None)
    mark_pareto(rows)
    return {"format": FORMAT, "environment": environment(), "data": str(dataset.root), "dataset": dataset.kind,
            "split": (settings or {}).get("split"), "images": len(dataset), "weights": str(weights), "device": str(dev),
            "settings": {"backends": [b.name for b in backends], "crf": list(crf_methods), "crf_preset": crf_preset,
                         "batches": batches, "iters": iters, "warmup": warmup,
                         "threads": threads or torch.get_num_threads(), "calib_method": calib_method,
                         "scales": list(scales), "flip": flip,
                         "output_stride": loaded.model.config.get("output_stride"), **(settings or {})},
            "power": getattr(power, "source", None), "baseline": {"backend": base["backend"], "crf": base["crf"]},
            "rows": rows, "skipped": skipped, "skipped_crf": skipped_crf, "artifacts": art}


def mark_pareto(rows: list[dict[str, Any]], key: str = "pareto") -> None:
    """Set ``row[key]``: Pareto-optimal in (latency, mIoU) among the rows whose latency is a speed."""
    pts = [(r["latency_ms"] if r.get("latency_is_speed", True) else None, r["miou"]) for r in rows]
    for r, flag in zip(rows, pareto_front(pts)):
        r[key] = flag


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "machine"


def device_label(env: dict[str, Any]) -> str:
    """A short name of the machine a result came from: its GPU (and Jetson model), else its CPU."""
    if env.get("jetson"):
        return env["jetson"].get("model") or "jetson"
    if env.get("gpu"):
        return env["gpu"]["name"]
    return f"{env.get('cpu', 'cpu')} ({env.get('cpu_count', '?')} cores)"


def default_tag(env: dict[str, Any]) -> str:
    return slug(device_label(env)) if (env.get("gpu") or env.get("jetson")) else "cpu-" + slug(env.get("cpu", ""))

