"""The one GPU check (``deeplab-edge selftest --gpu``): what a GPU must show, planned so that it
runs in one go inside a time budget (8 minutes on one H100-class GPU), and one results file.

The plan is a list of ``deeplab-edge`` command lines, each the command a user would run by hand,
with an estimated duration. Nothing in it is GPU-specific code of its own: the steps are the
project's commands, so running the plan is running the product. On a machine without a GPU the
plan is printed and nothing runs; its command lines are checked against the CLI's own parser
(``tests/test_selftest.py``), so a GPU session does not fail on a typo.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from deeplab_edge.errors import DeepLabEdgeError
from deeplab_edge.interrupts import child

from .env import environment

__all__ = ["Step", "Inputs", "plan", "missing_inputs", "run_plan", "BUDGET_S", "GPU_BACKENDS"]

#: The whole check's budget on one H100-class GPU (issue #18): 8 minutes.
BUDGET_S = 480

#: The main bench's GPU backends (ONNX Runtime and the INT8 emulations are CPU paths: not here).
GPU_BACKENDS = "torch-fp32,torch-fp16,torch-bf16,compile-fp16,triton-fp32,triton-fp16"


@dataclass
class Step:
    name: str
    argv: list[str]  # arguments of `deeplab-edge`
    estimate_s: float  # on an H100-class GPU: an estimate until the check has run on one
    output: str | None = None  # what it writes, relative to the run folder
    why: str = ""
    needs: str = "cuda"  # "cuda", or "tensorrt" (a Jetson or any machine with TensorRT)

    def command(self) -> str:
        return "deeplab-edge " + shlex.join(self.argv)


@dataclass
class Inputs:
    voc: Path
    camvid: Path
    tflite: Path
    camvid_weights: Path
    camvid_train: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def missing_inputs(inputs: Inputs, *, tensorrt: bool = False) -> None:
    """Refuse (:class:`DeepLabEdgeError`, naming each option) inputs the plan reads that are missing or of the
    wrong kind: the VOC and CamVid folders, the .tflite model and the CamVid checkpoint (and, with TensorRT, the
    CamVid images the INT8 engine is calibrated on)."""
    wanted = [("--voc", inputs.voc, "folder"), ("--camvid", inputs.camvid, "folder"),
              ("--tflite", inputs.tflite, "file"), ("--weights", inputs.camvid_weights, "file")]
    if tensorrt and inputs.camvid_train is not None:
        wanted.append(("--camvid-train", inputs.camvid_train, "folder"))
    missing, wrong = [], []
    for option, path, kind in wanted:
        p = Path(path)
        if not p.exists():
            missing.append(f"{option} {p}")
        elif (kind == "folder") != p.is_dir():
            wrong.append(f"{option} {p} is a {'file' if p.is_file() else 'special file'}, not a {kind}"
                         if kind == "folder" else f"{option} {p} is a folder, not a file")
    if missing:
        raise DeepLabEdgeError(f"{', '.join(missing)}: not found; pass the folders and files the check runs on")
    if wrong:
        raise DeepLabEdgeError(f"{', '.join(wrong)}; pass the folders and files the check runs on")


def plan(out: Path, inputs: Inputs, *, tensorrt: bool = False) -> list[Step]:
    """The steps, in order. ``out``: the run folder (every step writes under it)."""
    o = str(out)
    voc_model = f"{o}/mnv2_voc.pt"
    steps = [
        Step("import", ["import", str(inputs.tflite), "-o", voc_model], 10, "mnv2_voc.pt",
             "Google's VOC MobileNetV2, for the VOC bench and the CRF bench"),
        Step("kernels-check", ["kernels", "check", "--device", "cuda", "--dtype", "fp32,fp16,bf16",
                               "-o", f"{o}/kernels_check.json"], 90, "kernels_check.json",
             "every kernel compiled for this GPU against its PyTorch reference, each dtype, real sizes"),
        Step("kernels-bench", ["kernels", "bench", "--batch", "1", "--dtype", "fp16,bf16", "--warmup", "10",
                               "--iters", "50", "--no-compile-check", "-o", f"{o}/kernels_bench.json"], 120,
             "kernels_bench.json",
             "fused ASPP vs eager vs torch.compile on the four head shapes, the modules the runner builds, fed NCHW "
             "as it feeds them and channels-last beside (warm-up and tuning untimed)"),
        Step("crf-bench", ["crf", "bench", "--weights", voc_model, "--data", str(inputs.voc), "--methods",
                           "pydensecrf,torch,triton,window,triton-window", "--speed-images", "2", "--size", "513",
                           "--device", "cuda", "-o", f"{o}/crf_bench.json"], 70, "crf_bench.json",
             "the CRFs at 513x513, 21 labels, against pydensecrf: medians of warm calls (each input run once "
             "untimed first), each method's first call (compile + tune) apart"),
        Step("bench-voc", ["bench", "--weights", voc_model, "--data", str(inputs.voc), "--backends", GPU_BACKENDS,
                           "--crf", "none,triton", "--warmup", "5", "--iters", "30", "--device", "cuda",
                           "--tag", "selftest-voc", "--no-plot", "-o", f"{o}/bench"], 80,
             "bench/bench_selftest-voc.json", "accuracy against speed, GPU backends, the shared VOC samples"),
        Step("bench-camvid", ["bench", "--weights", str(inputs.camvid_weights), "--data", str(inputs.camvid),
                              "--backends", GPU_BACKENDS, "--warmup", "5", "--iters", "30", "--device", "cuda",
                              "--tag", "selftest-camvid", "--no-plot", "-o", f"{o}/bench"], 80,
             "bench/bench_selftest-camvid.json", "the project's CamVid model on CamVid val (101 frames)"),
    ]
    if tensorrt:
        engine = f"{o}/camvid_int8.engine"
        calib = str(inputs.camvid_train or inputs.camvid)
        steps += [
            Step("build-int8", ["build", "--weights", str(inputs.camvid_weights), "--data", str(inputs.camvid),
                                "--int8", "--fp16", "--calib-data", calib, "-o", engine], 240, "camvid_int8.engine",
                 "TensorRT INT8 engine, calibrated on CamVid train", "tensorrt"),
            Step("eval-engine", ["eval", "--engine", engine, "--data", str(inputs.camvid), "--json",
                                 "-o", f"{o}/eval_engine.json"], 60, "eval_engine.json",
                 "the engine's mIoU on CamVid val", "tensorrt"),
            Step("bench-engine", ["bench", "--weights", str(inputs.camvid_weights), "--data", str(inputs.camvid),
                                  "--backends", "torch-fp16,trt-int8", "--engine", f"int8={engine}",
                                  "--tag", "selftest-engine", "--no-plot", "-o", f"{o}/bench"], 90,
                 "bench/bench_selftest-engine.json", "the engine beside PyTorch, with power on a Jetson",
                 "tensorrt"),
        ]
    return steps


def run_plan(steps: list[Step], out: Path, *, budget_s: float = BUDGET_S,
             log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the steps in order, each as its own ``deeplab-edge`` process (a crash or a hang in one
    cannot take the others with it), within ``budget_s`` overall; returns the results document."""
    t0 = time.monotonic()
    results = []
    for step in steps:
        left = budget_s - (time.monotonic() - t0)
        if left < 5:
            results.append({**asdict(step), "status": "not run", "reason": f"over the {budget_s:.0f} s budget"})
            continue
        log(f"{step.name}: {step.command()}")
        start = time.monotonic()
        # registered as a child: Ctrl-C or SIGTERM on selftest stops the step too
        with child(subprocess.Popen([sys.executable, "-m", "deeplab_edge.cli", *step.argv], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=left)
                status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                status = "timed out"
        tail = ((stdout or "") + (stderr or ""))[-2000:]
        row: dict[str, Any] = {**asdict(step), "status": status, "seconds": time.monotonic() - start, "log": tail}
        if step.output and step.output.endswith(".json") and (out / step.output).is_file():
            row["result"] = json.loads((out / step.output).read_text())
        results.append(row)
        log(f"{step.name}: {status} in {row['seconds']:.0f} s")
    return {"format": "deeplab-edge-selftest/1", "environment": environment(), "budget_s": budget_s,
            "seconds": time.monotonic() - t0, "ok": all(r["status"] == "ok" for r in results), "steps": results}
