"""``deeplab-edge compare``: several model files on the same images, accuracy against speed, in one run.

Each model goes through the runtime's one factory and the one evaluation loop
(:func:`deeplab_edge.inference.evaluate`); latency is the model call alone, median and p90 over
the images after ``warmup`` untimed calls; speed-up and mIoU change are against the first model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from deeplab_edge.errors import DeepLabEdgeError
from deeplab_edge.inference import Segmenter, evaluate
from deeplab_edge.runtime import backend_for, open_runner

from .env import environment
from .stats import percentile

__all__ = ["compare_models"]


def _label(info: dict[str, Any]) -> tuple[str, str]:
    """(backend, precision) as the table shows them."""
    kind = info.get("precision") or "fp32"
    method = (info.get("calibration") or {}).get("method")
    if method:
        kind += f" ({method})"
    backend = info["backend"]
    if backend == "torch":
        backend += f" ({info['device']})"
    elif backend == "onnxruntime" and not info.get("ort_graph_optimizations", True):
        backend += " (QDQ emulated)"
    return backend, kind


def compare_models(models: Sequence[str | Path], dataset, *, warmup: int = 2, threads: int | None = None,
                   progress: Callable[[str, int], Callable[[], None]] | None = None) -> dict[str, Any]:
    """One row per model file (.pt/.pth, .onnx of any precision, .tflite) on ``dataset``."""
    if warmup < 0:
        raise DeepLabEdgeError(f"warm-up calls must be >= 0, got {warmup}; pass 0 or more")
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for path in map(Path, models):
        runner = open_runner(path, device="auto" if backend_for(path) in ("torch", "tensorrt") else "cpu",
                             threads=threads)
        if dataset.num_classes != runner.num_classes:
            raise DeepLabEdgeError(f"{path}: predicts {runner.num_classes} classes, the data has "
                                   f"{dataset.num_classes}; compare models trained for this dataset")
        seg = Segmenter(runner, runner.preprocess, runner.num_classes)
        image = dataset.load(0)[1]
        for _ in range(warmup):
            seg.predict(image)
        tick = progress(path.name, len(dataset)) if progress else None
        res = evaluate(seg, dataset, on_image=(lambda _s: tick()) if tick else None)
        calls = [1e3 * t for t in seg.timing.model_calls]
        backend, kind = _label(runner.info)
        rows.append({"model": str(path), "backend": backend, "precision": kind, "miou": res["miou"],
                     "pixel_acc": res["pixel_acc"], "latency_ms_p50": percentile(calls, 50),
                     "latency_ms_p90": percentile(calls, 90),
                     "preprocess_ms": 1e3 * res["timing"]["preprocess_s"] / res["images"],
                     "postprocess_ms": 1e3 * res["timing"]["postprocess_s"] / res["images"],
                     "bytes": path.stat().st_size, "images": res["images"]})
    base = rows[0]
    for r in rows:
        r["miou_change_points"] = 100 * (r["miou"] - base["miou"])
        r["speedup"] = base["latency_ms_p50"] / r["latency_ms_p50"]
    return {"data": str(dataset.root), "images": len(dataset), "threads": threads or torch.get_num_threads(),
            "environment": environment(), "rows": rows}
