"""NVIDIA ModelOpt's ONNX INT8 PTQ beside this project's, on the same FP32 export, the same
calibration images and the same evaluation (issue #17). ModelOpt lives in its own environment
(its ``[onnx]`` extra replaces onnxruntime and pins onnx). ``bench/experiments/ptq_compare.py --modelopt-python``
runs the ``quantize`` step below in that environment and everything else in one run; the three
steps also run by hand:

    # 1. in deeplab-edge's environment: the calibration tensors, exactly as `calibrate` makes them
    python bench/experiments/modelopt_compare.py inputs MODEL_FP32.onnx CALIB_DIR NUM OUT.npy
    # 2. in ModelOpt's environment (python -m venv mo && pip install torch==2.13.0
    #    'nvidia-modelopt[onnx]==0.47.0' huggingface_hub transformers):
    python bench/experiments/modelopt_compare.py quantize MODEL_FP32.onnx OUT.npy {entropy,max} MO.onnx
    # 3. back in deeplab-edge's environment: the metadata of the FP32 export copied over, then
    #    evaluated as every QDQ model here is (ONNX Runtime, graph optimizations off: exact emulation)
    python bench/experiments/modelopt_compare.py evaluate MODEL_FP32.onnx MO.onnx VAL_DIR OUT.json

Step 2 imports nothing from deeplab-edge.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def make_inputs(fp32: str, data: str, num: int, out: str) -> None:
    import numpy as np

    from deeplab_edge.calibration.collect import calibration_inputs
    from deeplab_edge.data.preprocess import Preprocess
    from deeplab_edge.export import read_metadata

    pre = Preprocess.from_dict(read_metadata(fp32)["preprocess"])
    tensors = calibration_inputs(data, pre, num)
    np.save(out, np.stack([t.numpy() for t in tensors]).astype(np.float32))


def quantize(fp32: str, inputs: str, method: str, out: str) -> None:
    import numpy as np
    from modelopt.onnx.quantization import quantize as mo_quantize

    t = time.perf_counter()
    mo_quantize(onnx_path=fp32, quantize_mode="int8", calibration_data=np.load(inputs), calibration_method=method,
                calibration_eps=["cpu"], output_path=out)
    print(f"ModelOpt int8 ({method}) in {time.perf_counter() - t:.0f} s -> {out}")


def evaluate(fp32: str, quantized: str, data: str, out: str) -> None:
    import onnx

    from deeplab_edge.data.datasets import open_dataset
    from deeplab_edge.inference import Segmenter, evaluate as run_eval
    from deeplab_edge.runtime.onnx import OnnxRunner

    model = onnx.load(quantized)
    producer = {"producer": model.producer_name, "version": model.producer_version,
                "qdq_pairs": sum(n.op_type == "QuantizeLinear" for n in model.graph.node)}
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.load(fp32, load_external_data=False).metadata_props)
    tagged = Path(quantized).with_name(Path(quantized).stem + "_tagged.onnx")  # beside the model, not the results
    onnx.save(model, str(tagged))
    runner = OnnxRunner(tagged, optimize=False)
    res = run_eval(Segmenter(runner), open_dataset(data))
    res.pop("per_image", None)
    from deeplab_edge.bench.env import environment

    res.update(quantized=str(quantized), quantized_model=producer, fp32=str(fp32), environment=environment(),
               emulation="ONNX Runtime CPU, graph optimizations off")
    Path(out).write_text(json.dumps(res, indent=2, default=str))
    print(f"{quantized}: mIoU {100 * res['miou']:.2f}% on {res['images']} images of {data}")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"inputs": lambda a: make_inputs(a[0], a[1], int(a[2]), a[3]), "quantize": lambda a: quantize(*a),
     "evaluate": lambda a: evaluate(*a)}[cmd](args)
