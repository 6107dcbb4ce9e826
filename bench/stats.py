"""Statistics of a benchmark: how calls are timed, latency percentiles, and the accuracy/latency
Pareto front."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Sequence

import torch

__all__ = ["time_calls", "percentile", "latency_summary", "pareto_front"]


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, *, cuda_device: Any = None,
               sync: Callable[[], None] | None = None) -> list[float]:
    """Milliseconds per call of ``fn`` after ``warmup`` untimed calls. With ``cuda_device`` (work
    queued on PyTorch's current CUDA stream), CUDA events around each call; otherwise a wall
    clock around the call and ``sync`` (for runners that return before their work is done)."""
    for _ in range(warmup):
        fn()
    if cuda_device is None:
        if sync is not None:
            sync()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times.append(1e3 * (time.perf_counter() - t0))
        return times
    torch.cuda.synchronize(cuda_device)
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default ``method="linear"``): position ``(n - 1) * q / 100`` in the sorted values."""
    if not values:
        raise ValueError("expected at least one value, got none")
    if not 0 <= q <= 100:
        raise ValueError(f"expected q in [0, 100], got {q}")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def latency_summary(ms: Sequence[float], batch: int = 1) -> dict[str, Any]:
    """p50/p90/p99, mean, min and max of per-call milliseconds, and the throughput in images/s
    (``batch`` images per call, over the mean call time)."""
    mean = sum(ms) / len(ms)
    return {"batch": batch, "calls": len(ms), "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90),
            "p99_ms": percentile(ms, 99), "mean_ms": mean, "min_ms": min(ms), "max_ms": max(ms),
            "images_per_s": 1e3 * batch / mean if mean > 0 else None}


def pareto_front(points: Iterable[tuple[float, float]]) -> list[bool]:
    """For (latency, accuracy) points, whether each is Pareto-optimal: no other point is at
    least as fast and at least as accurate while strictly better in one of the two. Equal
    points are all optimal; a point with a NaN or None coordinate never is."""
    pts = list(points)

    def ok(p):
        return all(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in p)

    flags = []
    for i, (lat, acc) in enumerate(pts):
        if not ok((lat, acc)):
            flags.append(False)
            continue
        dominated = any(ok(o) and j != i and o[0] <= lat and o[1] >= acc and (o[0] < lat or o[1] > acc)
                        for j, o in enumerate(pts))
        flags.append(not dominated)
    return flags
