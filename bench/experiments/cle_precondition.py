"""Cross-layer equalization's precondition, measured (issue #17): CLE rescales a Conv's output channels
and the next Conv's input channels, which leaves the network unchanged only when the activation in
between is positively homogeneous (ReLU, not ReLU6: Nagel et al., ICCV 2019, replace ReLU6 by ReLU
for it). This replaces every ReLU6 (ONNX Clip 0..6) of an FP32 export by ReLU and scores both on a
labelled folder: what the FP32 network loses before any quantization.

    python bench/experiments/cle_precondition.py FP32.onnx DATA -o OUT.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import onnx

from deeplab_edge.bench.env import environment
from deeplab_edge.bench.ptq import score
from deeplab_edge.data.datasets import open_dataset
from deeplab_edge.metrics import ConfusionMatrix


def run(fp32: Path, data: str, out: Path) -> dict:
    env = environment()
    m = onnx.load(str(fp32))
    clips = [n for n in m.graph.node if n.op_type == "Clip"]
    for node in clips:
        node.op_type = "Relu"
        del node.input[1:]
        del node.attribute[:]
    ds = open_dataset(data)
    with tempfile.TemporaryDirectory() as work:
        relu = Path(work) / "relu.onnx"
        onnx.save(m, str(relu))
        cm0, _, _, p0 = score(fp32, ds, None, ds.num_classes, optimize=True)
        cm1, same, total, _ = score(relu, ds, p0, ds.num_classes, optimize=True)
    res = {"fp32": str(fp32), "data": data, "images": len(ds), "relu6_replaced": len(clips),
           "miou_relu6": ConfusionMatrix.summarize(cm0)["miou"], "miou_relu": ConfusionMatrix.summarize(cm1)["miou"],
           "pixels_unchanged": same / total, "environment": env}
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"{fp32.name}: {len(clips)} ReLU6 -> ReLU: FP32 mIoU {100 * res['miou_relu6']:.2f}% -> "
          f"{100 * res['miou_relu']:.2f}%, {100 * res['pixels_unchanged']:.2f}% of pixels unchanged")
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fp32", type=Path)
    p.add_argument("data")
    p.add_argument("-o", "--output", type=Path, required=True)
    a = p.parse_args()
    run(a.fp32, a.data, a.output)
