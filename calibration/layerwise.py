"""Where the INT8 error comes from, layer by layer (issue 26 item 2; what ``polygraphy run --trt --onnxrt
--trt-outputs mark all`` does between two runtimes): every Conv's output in the FP32 model against the same
tensor in its QDQ model, on held-out images, both run by ONNX Runtime with those tensors made graph outputs
(graph optimisations off: the QDQ model's exact fake-quant arithmetic, every tensor under its own name). The
references are ONNX Runtime's FP32 outputs, not this project's fake-quant code.

Per Conv, over all images: SQNR (dB, 10 log10 of signal power over error power), cosine similarity, and the
largest absolute error as a share of the FP32 tensor's range. Errors accumulate through the network, so a
layer's numbers include what reached it from earlier layers; the jump from one Conv to the next is what the
layer itself adds (``sqnr_drop_db``). With a sensitivity ranking (``calibrate --sensitivity``) each layer's
rank there is set beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from deeplab_edge.data.overlap import recorded_overlap
from deeplab_edge.data.preprocess import Preprocess
from deeplab_edge.errors import DeepLabEdgeError
from deeplab_edge.export import load_onnx, ort_session, read_metadata
from deeplab_edge.outputs import atomic_path

from .collect import as_dataset
from .qdq import conv_nodes

__all__ = ["layer_errors", "layerwise_folder", "plot_layer_errors"]


def _with_outputs(model, names: Sequence[str]):
    """A copy of ``model`` whose graph also outputs the tensors ``names`` (type left to inference)."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    return m


def _session(model, threads: int | None):
    return ort_session(model.SerializeToString(), optimize=False, threads=threads)


class _Acc:
    """Running sums for one tensor's comparison."""

    def __init__(self) -> None:
        self.ss_ref = self.ss_err = self.dot = self.ss_q = 0.0
        self.max_err, self.lo, self.hi = 0.0, math.inf, -math.inf

    def add(self, ref: np.ndarray, q: np.ndarray) -> None:
        ref, q = ref.astype(np.float64), q.astype(np.float64)
        err = q - ref
        self.ss_ref += float((ref * ref).sum())
        self.ss_err += float((err * err).sum())
        self.ss_q += float((q * q).sum())
        self.dot += float((ref * q).sum())
        self.max_err = max(self.max_err, float(np.abs(err).max()))
        self.lo, self.hi = min(self.lo, float(ref.min())), max(self.hi, float(ref.max()))

    def result(self) -> dict[str, float | None]:
        """The numbers; ``sqnr_db`` is None where it is not a number (no error at all: ``exact``; or an all-zero
        reference), so that the report is plain JSON."""
        sqnr = None if self.ss_err == 0 or not self.ss_ref else 10 * math.log10(self.ss_ref / self.ss_err)
        cos = self.dot / math.sqrt(self.ss_ref * self.ss_q) if self.ss_ref and self.ss_q else None
        span = self.hi - self.lo
        return {"sqnr_db": sqnr, "exact": self.ss_err == 0, "cosine": cos, "max_abs_error": self.max_err,
                "max_error_of_range": self.max_err / span if span > 0 else None, "range": [self.lo, self.hi]}


def layer_errors(fp32_model, qdq_model, inputs: Sequence[np.ndarray], *, threads: int | None = None,
                 sensitivity: dict[str, Any] | None = None,
                 on_image: Callable[[], None] | None = None) -> dict[str, Any]:
    """Compare every Conv output of ``qdq_model`` against ``fp32_model`` (ONNX ModelProtos, the QDQ one made
    from the FP32 one: its Convs keep their names and output tensors) on preprocessed ``inputs`` ([1, 3, H, W]
    float32 arrays); ranked worst SQNR first, plus the logits' own numbers."""
    convs = conv_nodes(fp32_model)
    if not convs:
        raise DeepLabEdgeError("the FP32 model has no Conv; pass the FP32 ONNX the QDQ model was made from")
    q_outputs = {o for n in conv_nodes(qdq_model) for o in n.output}
    names = [n.output[0] for n in convs]
    missing = [n for n in names if n not in q_outputs]
    if missing:
        raise DeepLabEdgeError(f"the QDQ model has no Conv output {missing[0]!r} of the FP32 model ({len(missing)} "
                               "missing); pass the QDQ model `calibrate` made from this FP32 model")
    if not inputs:
        raise DeepLabEdgeError("no images to compare on; pass held-out images")
    logits = fp32_model.graph.output[0].name
    watch = names + ([logits] if logits not in names else [])
    ref_s, q_s = _session(_with_outputs(fp32_model, watch), threads), _session(_with_outputs(qdq_model, watch), threads)
    in_ref, in_q = ref_s.get_inputs()[0].name, q_s.get_inputs()[0].name
    order_ref = [o.name for o in ref_s.get_outputs()]
    order_q = [o.name for o in q_s.get_outputs()]
    acc = {n: _Acc() for n in watch}
    for x in inputs:
        ref = dict(zip(order_ref, ref_s.run(None, {in_ref: x})))
        got = dict(zip(order_q, q_s.run(None, {in_q: x})))
        for n in watch:
            acc[n].add(ref[n], got[n])
        if on_image:
            on_image()
    ranks = {}
    if sensitivity:
        ranks = {row["layer"]: i + 1 for i, row in enumerate(sensitivity.get("layers") or [])}
    rows, previous = [], None
    inits = {i.name: i for i in fp32_model.graph.initializer}
    for depth, (node, out) in enumerate(zip(convs, names)):
        r = acc[out].result()
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        rows.append({"layer": node.name, "tensor": out, "depth": depth, **r,
                     "sqnr_drop_db": None if previous is None or r["sqnr_db"] is None else previous - r["sqnr_db"],
                     "weights": list(w.dims) if w is not None else None,
                     "sensitivity_rank": ranks.get(node.name)})
        previous = r["sqnr_db"]
    ranked = sorted(rows, key=lambda r: (math.inf if r["sqnr_db"] is None else r["sqnr_db"], r["depth"]))
    return {"images": len(inputs), "convs": len(rows), "layers": rows,
            "ranked": [r["layer"] for r in ranked], "logits": {"tensor": logits, **acc[logits].result()},
            "sensitivity_mode": (sensitivity or {}).get("mode")}


def layerwise_folder(calib_dir: str | Path, data, *, fp32: str | Path | None = None, num: int = 16,
                     threads: int | None = None, on_image: Callable[[], None] | None = None) -> dict[str, Any]:
    """:func:`layer_errors` for a ``calibrate`` output folder: its ``model_qdq.onnx`` against ``fp32`` (default:
    its ``model_fp32.onnx``, written when it was calibrated from a checkpoint), with its ``sensitivity.json``
    when it has one, on the first ``num`` images of ``data`` (a dataset or image folder) preprocessed as the
    model records. Refused when any of them calibrated the model (compared by content): the report is for
    held-out images."""
    calib_dir = Path(calib_dir)
    qdq_path = calib_dir / "model_qdq.onnx"
    fp32_path = Path(fp32) if fp32 is not None else calib_dir / "model_fp32.onnx"
    for p, what in ((qdq_path, "the QDQ model"), (fp32_path, "the FP32 model")):
        if not p.is_file():
            fix = "pass --fp32 FILE (the ONNX it was calibrated from)" if p == fp32_path and fp32 is None else \
                "pass the folder `deeplab-edge calibrate -o` wrote"
            raise DeepLabEdgeError(f"{p}: {what} not found; {fix}")
    qdq_model, fp32_model = load_onnx(qdq_path), load_onnx(fp32_path)
    meta = read_metadata(qdq_model)
    ds = as_dataset(data).subset(num)
    recorded = (meta.get("calibration") or {}).get("images_sha1") or []
    shared = recorded_overlap(recorded, [smp.image for smp in ds.samples])
    if shared:
        raise DeepLabEdgeError(f"{len(shared)} of the {len(ds)} images calibrated this model (e.g. {shared[0].name}); "
                               "pass held-out images (e.g. the val split when it was calibrated on train)")
    if "preprocess" not in meta:
        raise DeepLabEdgeError(f"{qdq_path}: no deeplab-edge preprocessing in its metadata; pass the model "
                               "`deeplab-edge calibrate` wrote")
    pre = Preprocess.from_dict(meta["preprocess"])
    inputs = [pre(ds.load(i)[1])[0][None].numpy().astype(np.float32) for i in range(len(ds))]
    sens_path = calib_dir / "sensitivity.json"
    sensitivity = None
    if sens_path.is_file():
        try:
            sensitivity = json.loads(sens_path.read_text())
            if not isinstance(sensitivity, dict) or not all(isinstance(r, dict) and "layer" in r
                                                            for r in sensitivity.get("layers") or []):
                raise ValueError("no list of layers")
        except ValueError as e:
            raise DeepLabEdgeError(f"{sens_path}: not a sensitivity ranking from `calibrate --sensitivity` ({e}); "
                                   "remove it or calibrate again") from None
    report = layer_errors(fp32_model, qdq_model, inputs, threads=threads, sensitivity=sensitivity, on_image=on_image)
    return {**report, "qdq": str(qdq_path), "fp32": str(fp32_path), "data": str(ds.root),
            "image_ids": [s.id for s in ds.samples]}


def plot_layer_errors(report: dict[str, Any], path: Path, title: str = "") -> None:
    """SQNR of every Conv output against its depth (worst five labelled), and where a sensitivity ranking was
    given, each layer's rank in it below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layers"]
    ranked = "sensitivity_rank" in rows[0] and any(r["sensitivity_rank"] for r in rows)
    fig, axes = plt.subplots(2 if ranked else 1, 1, figsize=(10, 6 if ranked else 4), dpi=120, sharex=True,
                             squeeze=False)
    ax = axes[0][0]
    d = [r["depth"] for r in rows]
    s = [80.0 if r["sqnr_db"] is None else min(r["sqnr_db"], 80.0) for r in rows]  # exact: drawn at the top
    ax.plot(d, s, marker="o", markersize=3, linewidth=1)
    for name in report["ranked"][:5]:
        r = next(x for x in rows if x["layer"] == name)
        label = name.strip("/").removesuffix("/Conv").replace("backbone/", "").replace("/conv/", "/")
        ax.annotate(label, (r["depth"], s[r["depth"]]), fontsize=6, xytext=(3, -8),
                    textcoords="offset points")
    ax.set_ylabel("SQNR of the Conv output, dB")
    ax.set_title(title or f"INT8 (QDQ) against FP32, every Conv output, {report['images']} held-out images",
                 fontsize=9)
    ax.grid(alpha=0.3)
    if ranked:
        ax2 = axes[1][0]
        ax2.bar(d, [r["sensitivity_rank"] or 0 for r in rows], color="tab:orange")
        ax2.invert_yaxis()
        ax2.set_ylabel(f"sensitivity rank ({report.get('sensitivity_mode') or 'calibrate --sensitivity'})")
        ax2.grid(alpha=0.3)
    axes[-1][0].set_xlabel("Conv, in graph order (depth)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
