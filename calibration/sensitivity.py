"""Per-layer INT8 sensitivity, measured as mIoU on a labelled split (exact fake-quant emulation
in ONNX Runtime), in one of two modes:

* ``float-one`` (default): the fully quantized model with only this Conv left in float; the
  mIoU it recovers over the fully quantized model ranks the layers. This is what
  ``--keep-float K`` needs: on the imported MobileNetV2, quantization errors of neighbouring
  layers interact (clipping one layer's input shrinks the outliers the next layer clips), so
  the layers that cost most alone are not the ones whose float precision helps most.
* ``quantize-one``: the FP32 model with only this Conv quantized; its drop from FP32 is the
  layer's cost in isolation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from deeplab_edge.data.datasets import SegmentationDataset
from deeplab_edge.inference import Segmenter
from deeplab_edge.interrupts import temp_dir
from deeplab_edge.metrics import ConfusionMatrix
from deeplab_edge.runtime.onnx import OnnxRunner

from .qdq import conv_nodes, insert_qdq

__all__ = ["layer_sensitivity", "score_model"]


def score_model(model, dataset, work: Path, tag: str, reference: list[np.ndarray] | None = None
                ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(mIoU and pixel agreement with ``reference`` label maps, the label maps) of an ONNX ModelProto on
    ``dataset``, run by ONNX Runtime as exact emulation (optimisations off) for a QDQ model."""
    import onnx

    path = work / f"{tag}.onnx"
    onnx.save(model, str(path))
    runner = OnnxRunner(path, optimize=False)
    seg = Segmenter(runner, runner.preprocess, runner.num_classes)
    cm = ConfusionMatrix(runner.num_classes)
    preds, same, total = [], 0, 0
    for i in range(len(dataset)):
        _, image, label = dataset.load(i)
        pred = seg.predict(image)
        cm.update(pred, label)
        preds.append(pred)
        if reference is not None:
            same, total = same + int((pred == reference[i]).sum()), total + pred.size
    return {"miou": float(cm.compute()["miou"]), "agreement": same / total if total else None}, preds


def _miou(model, dataset: SegmentationDataset, work: Path, tag: str) -> float:
    return score_model(model, dataset, work, tag)[0]["miou"]


MODES = ("float-one", "quantize-one")


def layer_sensitivity(model, amax: dict[str, float], dataset: SegmentationDataset, mode: str = "float-one",
                      progress: Callable[[], None] | None = None, bias_shift: dict | None = None,
                      weight_bits: int = 8) -> dict[str, Any]:
    """Rank the Convs of ``model`` (FP32 ONNX); ``layers[i]["score"]`` is mIoU points gained by
    keeping the layer float (``float-one``) or lost by quantizing it alone (``quantize-one``), in the QDQ
    model ``calibrate`` writes (with ``bias_shift``'s bias correction when given, weights at ``weight_bits``)."""
    if mode not in MODES:
        raise ValueError(f"expected mode in {MODES}, got {mode!r}")
    convs = [n.name for n in conv_nodes(model)]
    with temp_dir() as tmp:
        work = Path(tmp)
        fp32 = _miou(model, dataset, work, "fp32")
        int8 = _miou(insert_qdq(model, amax, bias_shift=bias_shift, weight_bits=weight_bits), dataset, work, "int8")
        rows = []
        for name in convs:
            if mode == "float-one":
                miou = _miou(insert_qdq(model, amax, frozenset([name]), bias_shift=bias_shift, weight_bits=weight_bits), dataset, work, "layer")
                score = miou - int8
            else:
                others = frozenset(c for c in convs if c != name)
                miou = _miou(insert_qdq(model, amax, others, bias_shift=bias_shift, weight_bits=weight_bits), dataset, work, "layer")
                score = fp32 - miou
            rows.append({"layer": name, "miou": miou, "score": score})
            if progress:
                progress()
    rows.sort(key=lambda r: (-r["score"], r["layer"]))
    return {"mode": mode, "fp32_miou": fp32, "int8_miou": int8, "images": len(dataset), "layers": rows}
