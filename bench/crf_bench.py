"""Dense-CRF benchmark: time per image and mIoU gain of every implementation, side by side in one run.

The network runs once per image; each CRF method then post-processes the same logits.
Accuracy is measured at each image's own size against its labels; speed is also measured
at the issue's reference setting (513 x 513, 21 labels, 10 iterations) on resized copies,
with label pruning on (the default) and off (all 21 labels through the mean-field).

Times are medians over the images, and no timed call compiles or tunes anything: each input
of a device method (``torch``, ``triton``, ``window``, ``triton-window``) is first run once
untimed, so whatever its size, label count and lattice size, its Triton kernels are compiled
and autotuned (and PyTorch's device kernels and buffers set up) before the timed call.
pydensecrf (C++ on the CPU, nothing to compile) is warmed up once, on its first call. Each
method's first call, compile and tuning included, is reported on its own (``first_call_s``).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deeplab_edge.crf import (DEVICE_METHODS, PermutohedralLattice, dense_crf, lattice_features, prune_labels,
                              unary_from, with_overrides)
from deeplab_edge.crf.lattice import profile_lattice_crf
from deeplab_edge.crf import METHODS as CRF_METHODS
from deeplab_edge.data.preprocess import Preprocess
from deeplab_edge.metrics import ConfusionMatrix

from .kernel_bench import lattice_estimate

__all__ = ["run_crf_bench", "CRF_METHODS"]

#: The benchmark's clock (a test replaces it).
_clock = time.perf_counter

#: The settings each method is timed in: native (each image at its own size), then the
#: reference size with label pruning and with all labels.
_SETTINGS = ("native", "pruned", "all_labels")


def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = _clock()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, _clock() - t0


class _MethodTimes:
    """One method's timed calls per setting, after their warm-ups, and its first calls apart."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.timed: dict[str, list[float]] = {s: [] for s in _SETTINGS}
        self.first: dict[str, float] = {}

    def measure(self, setting: str, fn: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
        """``fn()`` timed, after one untimed warm-up call of the same input (device methods: every
        input; pydensecrf: its first call only)."""
        first_ever = not self.first
        if self.method in DEVICE_METHODS or first_ever:
            warm = _timed(fn, device)[1]
            self.first.setdefault(setting, warm)
        out, dt = _timed(fn, device)
        self.first.setdefault(setting, dt)
        self.timed[setting].append(dt)
        return out

    def median(self, setting: str) -> float | None:
        return float(np.median(self.timed[setting])) if self.timed[setting] else None


def run_crf_bench(segmenter, dataset, methods: Iterable[str], params, *, device: torch.device,
                  size: int = 513, speed_images: int = 2, estimate_lattice: bool = False, profile: bool = False,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """mIoU without / with each CRF method on ``dataset``, and seconds per image (medians of warm calls).

    ``profile``: also the ``torch`` lattice stage by stage (:func:`~deeplab_edge.crf.lattice.profile_lattice_crf`)
    on each speed image at ``size`` x ``size`` with label pruning, after the timed calls: where its time goes.

    ``estimate_lattice``: also give the Triton lattice's roofline estimate for each speed
    image, from its real lattice size (for machines where that kernel cannot be timed)."""
    methods = list(methods)
    unknown = [m for m in methods if m not in CRF_METHODS]
    if unknown:
        raise ValueError(f"expected CRF methods from {CRF_METHODS}, got {unknown}")
    n_cls = segmenter.num_classes
    cms = {"none": ConfusionMatrix(n_cls), **{m: ConfusionMatrix(n_cls) for m in methods}}
    times = {m: _MethodTimes(m) for m in methods}
    all_labels = with_overrides(params, label_threshold=0.0)
    estimates, profiles = [], []
    for i, (sid, image, label) in enumerate(dataset):
        (logits, geom), = segmenter.logits_batch([image])
        full = Preprocess.restore_logits(logits.float(), geom).cpu()
        cms["none"].update(full.argmax(0).numpy(), label)
        if i < speed_images:  # the reference setting: size x size, every label
            img_s = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
            lg_s = F.interpolate(full[None], size=(size, size), mode="bilinear", align_corners=False)[0]
            if estimate_lattice:
                m = PermutohedralLattice(lattice_features(torch.from_numpy(img_s.copy()), params)).num_vertices
                est = lattice_estimate(size, size, n_cls, params, vertices=m)
                estimates.append({"image": sid, "vertices": m, "vertices_per_pixel": m / (size * size),
                                  **{k: v["roofline_ms"] for k, v in est["estimates"].items()}})
        for m in methods:
            if progress:
                progress(f"{sid}: {m}")
            dev = torch.device("cpu") if m == "pydensecrf" else device
            q = times[m].measure("native", lambda: dense_crf(image, full, params, method=m, device=dev), dev)
            cms[m].update(q.argmax(0).cpu().numpy(), label)
            if i < speed_images:
                times[m].measure("pruned", lambda: dense_crf(img_s, lg_s, params, method=m, device=dev), dev)
                times[m].measure("all_labels", lambda: dense_crf(img_s, lg_s, all_labels, method=m, device=dev), dev)
        if profile and i < speed_images and device.type == "cpu":
            unary = unary_from(lg_s, "logits")
            _, keep = prune_labels(unary, params)
            _, info = profile_lattice_crf(torch.from_numpy(img_s.copy()), unary[keep], params)
            profiles.append({"image": sid, **info})
    res = {"images": len(dataset), "speed_images": min(speed_images, len(dataset)), "size": size,
           "params": params.as_dict(), "rows": _rows(cms, times, methods, device, size),
           "timing": {"statistic": "median",
                      "warmup": "each input of a device method run once untimed before its timed call (its kernels "
                                "compiled and autotuned then); pydensecrf warmed up once",
                      "first_call": "first_call_s: a method's first call (compilation, autotuning and library "
                                    "loading included), in no median"}}
    if profiles:
        stages = {k: [p["build_ms"][k] for p in profiles] for k in profiles[0]["build_ms"]}
        per_it = {k: [p["iterations_ms"][k] / p["iterations"] for p in profiles] for k in profiles[0]["iterations_ms"]}
        res["torch_profile"] = {"size": size, "images": profiles,
                                "median_build_ms": {k: float(np.median(v)) for k, v in stages.items()},
                                "median_ms_per_iteration": {k: float(np.median(v)) for k, v in per_it.items()}}
    if estimates:
        res["triton_lattice_estimate"] = {
            "label": f"roofline lower bound at {size}x{size}, all {n_cls} labels, from each image's real lattice size "
                     "and datasheet peaks: an estimate, not a measurement",
            "images": estimates,
            "mean_ms": {k: float(np.mean([e[k] for e in estimates])) for k in ("sm_90", "sm_87")}}
    return res


def _rows(cms, times: dict[str, _MethodTimes], methods: list[str], device: torch.device, size: int
          ) -> list[dict[str, Any]]:
    """One row per method (after ``none``): mIoU, gain, median seconds per setting, first calls."""
    base = cms["none"].compute()["miou"]
    rows = []
    ref_gain = None
    ref = f"{size}x{size}"
    for m in ["none", *methods]:
        miou = cms[m].compute()["miou"]
        row = {"method": m, "miou": miou, "gain_points": 100 * (miou - base)}
        if m != "none":
            t = times[m]
            row.update({"device": "cpu" if m == "pydensecrf" else str(device),
                        "s_per_image_native": t.median("native"), f"s_per_image_{ref}": t.median("pruned"),
                        f"s_per_image_{ref}_all_labels": t.median("all_labels"),
                        "first_call_s": t.first.get("native"), f"first_call_s_{ref}": t.first.get("pruned"),
                        "timed_calls": {s: len(v) for s, v in t.timed.items()}})
        if m == "pydensecrf":
            ref_gain = row["gain_points"]
        rows.append(row)
    ref_time = next((r["s_per_image_native"] for r in rows if r["method"] == "pydensecrf"), None)
    for r in rows[1:]:
        r["fraction_of_pydensecrf_gain"] = r["gain_points"] / ref_gain if ref_gain else None
        r["speedup_vs_pydensecrf"] = ref_time / r["s_per_image_native"] if ref_time else None
    return rows
