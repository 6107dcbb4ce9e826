"""INT8 within an accuracy budget (issue 26 item 1; what NNCF's ``quantize_with_accuracy_control(max_drop=...)``
and Polygraphy's ``debug precision`` do): on held-out labelled images, the QDQ model is measured by exact
emulation (ONNX Runtime, graph optimisations off) against the FP32 model; while its mIoU drop exceeds the budget
(or its pixel agreement with FP32 is below a floor), the Convs the sensitivity analysis ranks first (``float-one``
on the same images: the mIoU each regains when only it stays float) go back to float one at a time, each step
measured again, until the budget holds or ``max_float`` Convs are float. The record says every step, which Convs
stayed float and their share of the model's Conv FLOPs (TensorRT runs them in FP16 where the engine allows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from deeplab_edge.data.preprocess import Preprocess
from deeplab_edge.errors import CalibrationError
from deeplab_edge.export import read_metadata
from deeplab_edge.interrupts import temp_dir

from .qdq import conv_nodes
from .sensitivity import layer_sensitivity, score_model

__all__ = ["conv_flops", "fit_budget"]


def conv_flops(model, input_hw: tuple[int, int]) -> dict[str, int]:
    """FLOPs (2 per multiply-accumulate) of every Conv of an ONNX model at one [1, 3, H, W] input, from ONNX's own
    shape inference (the input's H and W fixed first where they are dynamic)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 3, *input_hw)):
        d.Clear()
        d.dim_value = v
    m = onnx.shape_inference.infer_shapes(m)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.output)}
    weights = {t.name: list(t.dims) for t in m.graph.initializer}
    out = {}
    for n in conv_nodes(m):
        w, y = weights.get(n.input[1]), shapes.get(n.output[0])
        if not w or not y or 0 in y:
            raise CalibrationError(f"cannot size Conv {n.name} from the model's shapes; re-export it")
        out[n.name] = 2 * int(np.prod(y)) * int(np.prod(w[1:]))
    return out


def fit_budget(model, make_qdq: Callable[[frozenset[str]], Any], amax: dict[str, float], val, *, max_drop: float,
               min_agreement: float | None = None, max_float: int = 8, keep_float: tuple[str, ...] = (),
               bias_shift: dict | None = None, progress: Callable[[str, int], Callable[[], None]] | None = None,
               weight_bits: int = 8
               ) -> tuple[tuple[str, ...], dict[str, Any]]:
    """(the Convs to keep float, the record): ``make_qdq(keep)`` makes the QDQ model with the Convs ``keep`` in
    float (``keep_float`` always among them); ``val`` is the labelled held-out dataset."""
    if not val.has_labels:
        raise CalibrationError(f"{val.root}: --val-data needs labels (the budget is in mIoU points); pass a labelled "
                               "VOC/Cityscapes/CamVid folder")
    with temp_dir() as tmp:
        work = Path(tmp)
        fp32, ref = score_model(model, val, work, "fp32")

        def fits(s: dict[str, Any]) -> bool:
            return 100 * (fp32["miou"] - s["miou"]) <= max_drop and (min_agreement is None or
                                                                      s["agreement"] >= min_agreement)

        def step(keep: tuple[str, ...]) -> dict[str, Any]:
            s, _ = score_model(make_qdq(frozenset(keep)), val, work, "step", ref)
            return {"keep_float": list(keep), "miou": s["miou"], "drop_points": 100 * (fp32["miou"] - s["miou"]),
                    "agreement": s["agreement"], "fits": fits(s)}

        steps = [step(keep_float)]
        order: list[str] = []
        if not steps[-1]["fits"]:
            tick = progress("budget: sensitivity", len(conv_nodes(model))) if progress else None
            ranking = layer_sensitivity(model, amax, val, "float-one", tick, bias_shift=bias_shift,
                                        weight_bits=weight_bits)
            order = [r["layer"] for r in ranking["layers"] if r["layer"] not in keep_float]
            keep = keep_float
            for name in order[:max_float]:
                keep = keep + (name,)
                steps.append(step(keep))
                if steps[-1]["fits"]:
                    break
    final = steps[-1]
    h, w = _input_hw(val, model)
    flops = conv_flops(model, (h, w))
    kept = final["keep_float"]
    return tuple(kept), {
        "max_drop_points": max_drop, "min_agreement": min_agreement, "max_float": max_float, "met": final["fits"],
        "fp32_miou": fp32["miou"], "miou": final["miou"], "drop_points": final["drop_points"],
        "agreement": final["agreement"], "float_convs": kept, "float_conv_count": len(kept),
        "convs": len(flops), "float_flops_share": sum(flops[k] for k in kept) / sum(flops.values()),
        "flops_at": [h, w], "steps": steps, "order": order[:max_float], "images": len(val),
        "image_ids": [s.id for s in val.samples],
        "says": (f"{len(kept)} of {len(flops)} Convs kept float "
                 f"({100 * sum(flops[k] for k in kept) / sum(flops.values()):.1f}% of the Conv FLOPs): "
                 f"drop {final['drop_points']:.2f} points "
                 f"{'within' if final['fits'] else 'NOT within'} the {max_drop:g}-point budget on {len(val)} "
                 "held-out images")}


def _input_hw(val, model) -> tuple[int, int]:
    """The model input's H and W for the first held-out image (its recorded preprocessing)."""
    pre = Preprocess.from_dict(read_metadata(model)["preprocess"])
    x = pre(val.load(0)[1])[0]
    return int(x.shape[-2]), int(x.shape[-1])
