"""ONNX export with a parity check against PyTorch on real images.

Steps, each timed: export (TorchScript-based exporter by default: fast and producing the
plain Conv/Resize/ReduceMean graphs TensorRT 8.6+ parses; ``exporter="dynamo"`` uses
``torch.export``), ``onnx.checker``, simplification with onnxslim, metadata in
``metadata_props`` (classes, preprocessing, input size, architecture, checkpoint hash),
then ONNX Runtime against PyTorch on real images. The file appears only when every step
passed (written to a temp file, then renamed).

Export-friendly forms are built into the models: image pooling is ReduceMean + Expand (no
adaptive pooling over dynamic sizes) and the final upsampling is one ``Resize`` whose
``coordinate_transformation_mode`` is ``align_corners`` or ``half_pixel`` — both accepted
by TensorRT 8.6+ and ONNX Runtime.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import __version__
from .checkpoint import LoadedModel
from .outputs import atomic_path
from .data.preprocess import Preprocess
from .errors import ExportError

__all__ = ["export_onnx", "ExportReport", "read_metadata", "load_onnx", "MIN_OPSET", "dynamic_axes",
           "with_label_output", "LABEL_DTYPES"]

MIN_OPSET = 17
DYNAMIC_CHOICES = ("batch", "hw")
#: label map dtypes an ``--emit labels`` model can have (ONNX TensorProto names)
LABEL_DTYPES = ("int32", "uint8")


@dataclass
class ExportReport:
    path: str
    opset: int
    input_shape: list[int | str]
    dynamic: list[str]
    exporter: str
    bytes: int = 0
    nodes_exported: int = 0
    nodes_final: int = 0
    steps_s: dict[str, float] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)

    labels: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_onnx(path: str | Path, load_external_data: bool = False):
    """``onnx.load`` with a missing file or a file that is not ONNX as a one-line error."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX model not found; create one with `deeplab-edge export`")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as e:  # protobuf's DecodeError, onnx's errors: not an ONNX file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"{path}: not an ONNX model ({first[:120]}); pass a file from `deeplab-edge export`, "
                          "`calibrate` or `build`") from None


def read_metadata(model_or_path) -> dict[str, Any]:
    """deeplab-edge's metadata_props of an ONNX model (or file), JSON values decoded."""
    m = load_onnx(model_or_path) if isinstance(model_or_path, (str, Path)) else model_or_path
    out = {}
    for p in m.metadata_props:
        if p.key.startswith("deeplab_edge."):
            try:
                out[p.key.removeprefix("deeplab_edge.")] = json.loads(p.value)
            except json.JSONDecodeError:
                out[p.key.removeprefix("deeplab_edge.")] = p.value
    return out


def _export(model: torch.nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: Sequence[str],
            exporter: str) -> None:
    axes: dict[int, str] = {}
    if "batch" in dynamic:
        axes[0] = "batch"
    if "hw" in dynamic:
        axes.update({2: "height", 3: "width"})
    if exporter == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation notice
            torch.onnx.export(model, (x,), str(path), opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamo=False, do_constant_folding=True,
                              dynamic_axes={"input": axes, "logits": axes} if axes else None)
    elif exporter == "dynamo":
        dims = {}
        if "batch" in dynamic:
            dims[0] = torch.export.Dim("batch", min=1, max=256)
        if "hw" in dynamic:
            dims[2] = torch.export.Dim("height", min=33, max=4096)
            dims[3] = torch.export.Dim("width", min=33, max=4096)
        torch.onnx.export(model, (x,), str(path), opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamo=True, dynamic_shapes=({**dims},) if dims else None,
                          verbose=False)
    else:
        raise ExportError(f"unknown exporter {exporter!r}; use torchscript or dynamo")


def ort_session(path: str | Path | bytes, *, optimize: bool = True, threads: int | None = None, providers=None):
    """An ONNX Runtime session on a file or serialized model (CUDA first when available);
    ``optimize=False`` turns graph optimisations off (exact fake-quant arithmetic for QDQ models,
    and every intermediate tensor keeps its name)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
    # ORT's pool threads spin after each run by default; on a small CPU that steals the cores from
    # whatever follows (measured here: argmax of the logits 22.7 ms instead of 10.6 ms right after a
    # run), while the run itself is no faster with spinning (105.4 vs 105.0 ms, MobileNetV2 513^2).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    avail = ort.get_available_providers()
    providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so, providers=providers)


def dynamic_axes(meta: dict[str, Any], batch: bool = False) -> tuple[str, ...]:
    """The dynamic axes an export of a checkpoint with metadata ``meta`` needs: ``batch`` when asked, and
    H and W when its preprocessing has no fixed input size (it runs at each image's own size, e.g. the
    CamVid model)."""
    fixed = Preprocess.from_dict(dict(meta.get("preprocess") or {})).fixed_input_hw
    return (("batch",) if batch else ()) + (() if fixed else ("hw",))


def export_onnx(loaded: LoadedModel, output: str | Path, images: Sequence[np.ndarray], *, input_size: int | None = None,
                opset: int = MIN_OPSET, dynamic: Sequence[str] = (), exporter: str = "torchscript",
                simplify: bool = True, min_agreement: float = 0.999, fp16: bool = False, output_kind: str = "logits",
                labels_dtype: str = "int32") -> ExportReport:
    """Export ``loaded.model`` to ONNX and check it against PyTorch on ``images`` (uint8 RGB).

    ``fp16`` exports the model in half precision (float16 weights, input and output); the parity
    check still compares against the float32 PyTorch model. ``output_kind="labels"`` ends the graph with the
    arg-max over the classes (:func:`with_label_output`), checked against the arg-max of PyTorch's logits."""
    if output_kind not in ("logits", "labels") or labels_dtype not in LABEL_DTYPES:
        raise ExportError(f"unknown output {output_kind!r} / label dtype {labels_dtype!r}; use logits or labels, "
                          f"and {' or '.join(LABEL_DTYPES)}")
    import onnx  # noqa: F401  (without it, fail before the export's work, not after it)

    pre = _export_preprocess(loaded, images, input_size=input_size, opset=opset, dynamic=dynamic)
    model = loaded.model.eval().float()
    output = Path(output)
    prepared = [pre(im) for im in images]
    x0 = prepared[0][0][None]
    report = ExportReport(str(output), opset, ["batch" if "batch" in dynamic else 1, 3,
                                              "height" if "hw" in dynamic else x0.shape[2],
                                              "width" if "hw" in dynamic else x0.shape[3]],
                          list(dynamic), exporter)
    with atomic_path(output) as tmp:
        t = time.perf_counter()
        if fp16:
            _export(copy.deepcopy(model).half(), x0.half(), tmp, opset, dynamic, exporter)
        else:
            _export(model, x0, tmp, opset, dynamic, exporter)
        report.steps_s["export"] = time.perf_counter() - t
        m = _checked_graph(tmp, report, simplify)
        _save_with_metadata(m, tmp, loaded, pre, fp16)

        t = time.perf_counter()
        inputs = [x for x, _ in prepared]
        if "hw" in dynamic:  # a dynamic export must also hold at another, unpadded size
            side = max(33, (max(x0.shape[2:]) * 3 // 4) | 1)
            inputs.append(Preprocess.from_dict({**pre.to_dict(), "size": side, "pad": False})(images[0])[0])
        report.parity = parity(model, tmp, inputs)
        report.steps_s["parity"] = time.perf_counter() - t
        if report.parity["agreement"] < min_agreement:
            raise ExportError(f"ONNX Runtime agrees with PyTorch on only {report.parity['agreement']:.4%} of pixels "
                              f"(< {min_agreement:.1%}; max |logit diff| {report.parity['max_abs_diff']:.3g}); "
                              "the export is wrong — report it with the model")
        if output_kind == "labels":
            import onnx

            onnx.save(with_label_output(onnx.load(str(tmp)), labels_dtype), str(tmp))
            report.labels = label_parity(model, tmp, inputs)
            if report.labels["agreement"] < min_agreement:
                raise ExportError(f"the label model's arg-max agrees with PyTorch's on only "
                                  f"{report.labels['agreement']:.4%} of pixels; report it with the model")
    report.bytes = output.stat().st_size
    return report


def _export_preprocess(loaded: LoadedModel, images: Sequence[np.ndarray], *, input_size: int | None, opset: int,
                       dynamic: Sequence[str]) -> Preprocess:
    """The preprocessing the export is made for (``input_size`` overriding the checkpoint's), once the
    arguments are checked: before anything is exported."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; use --opset {MIN_OPSET} or newer")
    bad = [d for d in dynamic if d not in DYNAMIC_CHOICES]
    if bad:
        raise ExportError(f"unknown dynamic axes {bad}; choose from {', '.join(DYNAMIC_CHOICES)}")
    if not images:
        raise ExportError("no images for the parity check; pass --data with at least one image")
    pre_dict = dict(loaded.meta.get("preprocess") or {})
    if input_size is not None:
        pre_dict.update(size=input_size, resize="long_side", pad=True)
    pre = Preprocess.from_dict(pre_dict)
    if pre.fixed_input_hw is None and "hw" not in dynamic:
        raise ExportError("this model's preprocessing has no fixed input size; pass --input-size N or --dynamic hw")
    return pre


def _checked_graph(path: Path, report: ExportReport, simplify: bool):
    """The exported graph at ``path`` once ``onnx.checker`` passes it, simplified with onnxslim when asked
    (node counts and step times into ``report``)."""
    import onnx

    t = time.perf_counter()
    m = onnx.load(str(path))
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise ExportError(f"the exported graph fails onnx.checker ({str(e).splitlines()[0]})") from e
    report.nodes_exported = len(m.graph.node)
    report.steps_s["check"] = time.perf_counter() - t

    if simplify:
        import onnxslim

        t = time.perf_counter()
        m = onnxslim.slim(m)
        report.steps_s["simplify"] = time.perf_counter() - t
    report.nodes_final = len(m.graph.node)
    return m


def _save_with_metadata(m, path: Path, loaded: LoadedModel, pre: Preprocess, fp16: bool) -> None:
    """Write graph ``m`` to ``path`` with deeplab-edge's metadata (what :func:`read_metadata` reads back)."""
    import onnx

    meta = {"version": __version__, "arch": loaded.model.config.get("arch"), "config": loaded.model.config,
            "classes": loaded.classes, "num_classes": loaded.model.num_classes, "preprocess": pre.to_dict(),
            "checkpoint_sha256": loaded.meta.get("sha256"), "source": loaded.meta.get("source"),
            "precision": "fp16" if fp16 else "fp32"}
    del m.metadata_props[:]
    for k, v in meta.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = f"deeplab_edge.{k}", json.dumps(v, default=str)
    m.producer_name, m.producer_version = "deeplab-edge", __version__
    onnx.save(m, str(path))


def with_label_output(model, dtype: str = "int32"):
    """A copy of ``model`` (logits [N, C, H, W] as its first output) that outputs the label map instead: ArgMax
    over the classes (the first maximum on ties, as ``torch.argmax``) cast to ``dtype``, [N, H, W], named
    ``labels``; its metadata says ``output: labels`` and the dtype. What a deployment copies off the device is
    then 1 (uint8) or 4 (int32) bytes per pixel instead of 4 x C. Refuses a model that outputs labels already."""
    import onnx
    from onnx import TensorProto, helper

    if read_metadata(model).get("output") == "labels":
        raise ExportError("the model outputs labels already; give the logit model")
    if dtype not in LABEL_DTYPES:
        raise ExportError(f"unknown label dtype {dtype!r}; use {' or '.join(LABEL_DTYPES)}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    logits = g.output[0]
    dims = [d for d in logits.type.tensor_type.shape.dim]
    g.node.extend([helper.make_node("ArgMax", [logits.name], ["labels_int64"], name="labels_argmax", axis=1,
                                    keepdims=0, select_last_index=0),
                   helper.make_node("Cast", ["labels_int64"], ["labels"], name="labels_cast",
                                    to=getattr(TensorProto, dtype.upper()))])
    out = helper.make_tensor_value_info("labels", getattr(TensorProto, dtype.upper()), None)
    for d in (dims[0], dims[2], dims[3]) if len(dims) == 4 else ():
        out.type.tensor_type.shape.dim.add().CopyFrom(d)
    del g.output[:]
    g.output.append(out)
    for key, value in (("output", "labels"), ("labels_dtype", dtype)):
        entry = next((p for p in m.metadata_props if p.key == f"deeplab_edge.{key}"), None) or m.metadata_props.add()
        entry.key, entry.value = f"deeplab_edge.{key}", json.dumps(value)
    onnx.checker.check_model(m)
    return m


def label_parity(model: torch.nn.Module, onnx_path: str | Path, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """A label model's output against the arg-max of PyTorch's logits: agreement, and how many pixels are ties
    in PyTorch's logits (two classes within 1e-5: either label is right)."""
    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    half = sess.get_inputs()[0].type == "tensor(float16)"
    same = total = ties = 0
    with torch.inference_mode():
        for x in inputs:
            ref = model(x[None].float())
            got = torch.from_numpy(sess.run(None, {name: x[None].numpy().astype(np.float16 if half else np.float32)})[0]
                                   .astype(np.int64))
            top2 = ref.topk(2, dim=1).values
            tie = (top2[:, 0] - top2[:, 1]).abs() <= 1e-5
            same += int(((got == ref.argmax(1)) | tie).sum())
            ties += int(tie.sum())
            total += got.numel()
    return {"images": len(inputs), "agreement": same / total, "ties": ties,
            "dtype": sess.get_outputs()[0].type, "bytes_per_pixel": 1 if "uint8" in sess.get_outputs()[0].type else 4}


def parity(model: torch.nn.Module, onnx_path: str | Path, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch on normalised inputs: max |logit| difference and argmax agreement."""
    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    half = sess.get_inputs()[0].type == "tensor(float16)"
    max_diff, max_ref, same, total = 0.0, 0.0, 0, 0
    with torch.inference_mode():
        for x in inputs:
            ref = model(x[None].float())
            feed = x[None].numpy().astype(np.float16 if half else np.float32)
            got = torch.from_numpy(sess.run(None, {name: feed})[0].astype(np.float32))
            max_diff = max(max_diff, float((got - ref).abs().max()))
            max_ref = max(max_ref, float(ref.abs().max()))
            same += int((got.argmax(1) == ref.argmax(1)).sum())
            total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    return {"images": len(inputs), "max_abs_diff": max_diff, "max_abs_logit": max_ref, "agreement": same / total,
            "provider": sess.get_providers()[0]}
