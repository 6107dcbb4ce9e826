"""INT8 PTQ methods side by side in one run (issue #17), by hand: ``deeplab_edge.bench.ptq.compare_methods``
(this project's recipes, ONNX Runtime's ``quantize_static`` and, given its environment, NVIDIA ModelOpt) on
one FP32 export and held-out images. Results go to ``bench/results/ptq_compare_*.json``.

    python bench/experiments/ptq_compare.py FP32.onnx --calib TRAIN --eval VAL [--num 100] \
        [--modelopt-python /path/to/modelopt-venv/bin/python] -o results.json
    python bench/experiments/ptq_compare.py FP32.onnx --folds 3 --eval VOC_SAMPLES -o results.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deeplab_edge.bench.ptq import CORRECTED, MODELOPT, ORT, OURS, PARTS, compare_methods
from deeplab_edge.errors import DeepLabEdgeError


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
    try:
        compare_methods(a.fp32, a.eval, a.output, calib_dir=a.calib, num=a.num, folds=a.folds, methods=methods,
                        modelopt_python=a.modelopt_python,
                        modelopt_script=Path(__file__).with_name("modelopt_compare.py"))
    except DeepLabEdgeError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main(sys.argv[1:])
