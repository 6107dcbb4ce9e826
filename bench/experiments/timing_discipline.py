"""What the bench's timing discipline (one backend timed at a time, the others released) is worth, measured once by
hand (issue 27 item 4): ONNX Runtime FP32 on a real frame timed

  alone            the only session in the process (what `bench` does),
  beside an idle   a second session (the CPU INT8 model) alive, called once before the timing and then left idle,
  interleaved      the second session called between every two timed FP32 calls, as a harness that times several
                   backends round-robin would.

Each the median of --iters calls after --warmup, every session with the same --threads. Run from the repository root
on a quiet machine, from a calibrate folder made with --weights (it holds model_fp32.onnx and model_cpu_int8.onnx):

    deeplab-edge calibrate --weights weights/deeplabv3_mnv2_camvid.pt --data ../shared/data/camvid_train --num 32 -o CAL
    python bench/experiments/timing_discipline.py CAL --data ../shared/data/camvid_val -o bench/results/timing_discipline_camvid.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from deeplab_edge.bench.env import environment
from deeplab_edge.data import open_dataset
from deeplab_edge.runtime import open_runner


def _median_ms(fn, between, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        between()
        fn()
    times = []
    for _ in range(iters):
        between()
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("calibration", type=Path, help="a `deeplab-edge calibrate --weights` output folder")
    ap.add_argument("--data", type=Path, required=True, help="a dataset whose first image is timed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("-o", "--output", type=Path, required=True)
    a = ap.parse_args()
    fp32_path, other_path = a.calibration / "model_fp32.onnx", a.calibration / "model_cpu_int8.onnx"
    image = open_dataset(a.data).load(0)[1]
    fp32 = open_runner(fp32_path, backend="onnxruntime", threads=a.threads)
    x = fp32.preprocess(image)[0][None]
    nothing = lambda: None  # noqa: E731
    alone = _median_ms(lambda: fp32(x), nothing, a.warmup, a.iters)
    other = open_runner(other_path, backend="onnxruntime", threads=a.threads)
    other(x)
    idle = _median_ms(lambda: fp32(x), nothing, a.warmup, a.iters)
    interleaved = _median_ms(lambda: fp32(x), lambda: other(x), a.warmup, a.iters)
    del other
    again = _median_ms(lambda: fp32(x), nothing, a.warmup, a.iters)
    res = {"what": "ONNX Runtime FP32 on one real frame: alone, beside an idle second session, interleaved with "
                   "calls of a second session (the CPU INT8 model), and alone again after releasing it",
           "model": str(fp32_path), "other": str(other_path), "input": list(x.shape), "threads": a.threads,
           "warmup": a.warmup, "iters": a.iters, "statistic": "median ms",
           "ms": {"alone": alone, "beside_idle_session": idle, "interleaved": interleaved, "alone_again": again},
           "interleaved_over_alone": interleaved / alone, "idle_over_alone": idle / alone,
           "environment": environment()}
    a.output.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("ms", "interleaved_over_alone", "idle_over_alone")}, indent=1))


if __name__ == "__main__":
    main()
