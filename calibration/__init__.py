"""INT8 post-training calibration (imported as ``deeplab_edge.calibration``).

``calibrate`` turns an exported FP32 ONNX model and real images into:

1. ``calibration.cache`` — TensorRT's calibration cache (TensorRT 8.5-10, implicit INT8),
2. ``model_qdq.onnx`` — the TensorRT QDQ model (symmetric s8; TensorRT 10+/11's only INT8 route),
   whose accuracy is measured here by exact fake-quant emulation (ONNX Runtime, graph
   optimisations off),
3. ``model_cpu_int8.onnx`` — the CPU INT8 model (u8 activations / s8 weights) for ONNX Runtime, its
   settings chosen for this CPU and its kernels checked against its exact arithmetic (``cpu_int8.py``),
4. ``ranges.json`` — every tensor's max|x| and chosen threshold.
"""

from __future__ import annotations

import inspect

import json
from pathlib import Path
from typing import Any, Callable

from deeplab_edge.outputs import staged_dir
from deeplab_edge.data.preprocess import Preprocess
from deeplab_edge.errors import CalibrationError

from .alerts import (DegenerateCalibrationWarning, KernelDisagreementWarning, NotHeldOutWarning, recorded)
from .cache import check_cache_against_onnx, check_trt_version, read_trt_cache, write_trt_cache
from .collect import DEGENERATE, activation_tensors, calibration_inputs, collect_histograms
from .histograms import METHODS as HISTOGRAM_METHODS
from .search import thresholds
from .qdq import bias_corrections, conv_nodes, insert_qdq, tag_quantized

# "search": each threshold chosen by the error of the Convs reading the tensor (search.py)
METHODS = HISTOGRAM_METHODS + ("search",)

__all__ = ["calibrate", "METHODS", "read_trt_cache", "write_trt_cache", "check_cache_against_onnx", "insert_qdq",
           "conv_nodes", "check_trt_version", "check_keep_float"]


def check_keep_float(num_convs: int, keep_float_top: int = 0, keep_float: tuple[str, ...] = ()) -> None:
    """Refuse Convs kept in float (``--keep-float K`` plus the ``--keep-float-layer`` names) that leave none of
    the model's ``num_convs`` Convs quantized: that "INT8" model would be the FP32 model with QDQ on its input."""
    layers = len(set(keep_float))
    if layers + keep_float_top < num_convs:
        return
    if not keep_float_top:
        raise CalibrationError(f"--keep-float-layer names all {num_convs} Convs of this model: nothing would be "
                               f"quantized; name at most {num_convs - 1}")
    most = num_convs - 1 - layers
    with_layers = f" with {layers} --keep-float-layer name{'s' if layers > 1 else ''}" if layers else ""
    if keep_float_top > num_convs:
        problem = f"--keep-float {keep_float_top} is more than the {num_convs} Convs of this model"
    elif layers:
        kept = min(num_convs, keep_float_top + layers)
        problem = (f"--keep-float {keep_float_top}{with_layers} keeps {kept} of the {num_convs} Convs of this model "
                   "in float: nothing would be quantized")
    else:
        problem = (f"--keep-float {keep_float_top} keeps all {num_convs} Convs of this model in float: nothing "
                   "would be quantized")
    fix = f"give at most {most}{with_layers}" if most >= 0 else "name fewer Convs with --keep-float-layer"
    raise CalibrationError(f"{problem}; {fix}")


#: A threshold below this share of its tensor's max|x| is a collapsed range (real images: 16% and more, on the
#: imported MobileNetV2 with every method).
COLLAPSED = 0.01


def _warn_collapsed(names: list[str], stats: dict, amax: dict[str, float]) -> None:
    """Warn (text starting with :data:`~.collect.DEGENERATE`) when activation tensors get no usable INT8 range:
    0 on every calibration image (no scale at all), or a threshold of 0 or below 1% of their max|x|."""
    import warnings

    zero = [n for n in names if stats[n][1] <= 0]
    tiny = [n for n in names if stats[n][1] > 0 and amax.get(n, 0.0) < COLLAPSED * stats[n][1]]
    if zero:
        warnings.warn(f"{DEGENERATE}: {len(zero)} of the {len(names)} activation tensors are 0 on every calibration "
                      f"image (e.g. {zero[0]}) and get no INT8 range; calibrate on more, and more varied, real "
                      "images", DegenerateCalibrationWarning, stacklevel=3)
    if tiny:
        warnings.warn(f"{DEGENERATE}: {len(tiny)} of the {len(names)} activation tensors have a threshold below "
                      f"{100 * COLLAPSED:.0f}% of their max |x| (e.g. {tiny[0]}): their INT8 ranges collapsed; try "
                      "another --method or more varied images, and check the model with `deeplab-edge eval --onnx`",
                      DegenerateCalibrationWarning, stacklevel=3)


def calibrate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Calibrate an FP32 export (the arguments: :func:`_calibrate`'s, whose signature this shows). The report's
    ``warnings`` lists every calibration warning raised on the way as ``{"kind", "message"}`` (kinds:
    :data:`.alerts.KINDS`); the warnings also reach the caller as Python warnings."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _calibrate(*args, **kwargs)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    report["warnings"] = recorded(caught)
    return report


def _calibrate(onnx_path: str | Path, data: str | Path, out_dir: str | Path, *, num: int = 256,
              method: str = "mse", percentile: float = 99.99, keep_float: tuple[str, ...] = (),
              trt_version: str = "8.6.1", cpu_int8: bool = True, keep_float_top: int = 0, sensitivity: bool = False,
              sensitivity_data: str | Path | None = None, sensitivity_num: int | None = None,
              sensitivity_mode: str = "float-one", search_num: int = 16, bias_correction: bool = True,
              progress: Callable[[str, int], Callable[[], None]] | None = None) -> dict[str, Any]:
    """Calibrate ``onnx_path`` (an FP32 export of deeplab-edge) on ``num`` images of ``data``.

    With ``sensitivity``, ``sensitivity_data`` (a labelled dataset) or ``keep_float_top`` > 0, each Conv's
    mIoU cost is measured and the ``keep_float_top`` most costly ones stay in float. Without
    ``sensitivity_data``, the images of ``data`` beyond the first ``num`` are the held-out
    split; when there are none, the calibration images are reused, with a warning."""
    import onnx

    from deeplab_edge.data.datasets import open_dataset
    from deeplab_edge.data.overlap import image_digests
    from deeplab_edge.export import load_onnx, read_metadata

    check_trt_version(trt_version)  # before any work: the cache header names it
    if method not in METHODS:
        raise CalibrationError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0 < percentile <= 100:
        raise CalibrationError(f"--percentile must be in (0, 100], got {percentile}")
    if num < 1 or keep_float_top < 0 or search_num < 1 or (sensitivity_num is not None and sensitivity_num < 1):
        raise CalibrationError(f"expected num, search_num >= 1, keep_float_top >= 0 and sensitivity_num >= 1, got "
                               f"{num}, {search_num}, {keep_float_top} and {sensitivity_num}: calibrating on no images "
                               "gives all-zero scales")
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    model = load_onnx(onnx_path, load_external_data=True)
    meta = read_metadata(model)
    if "preprocess" not in meta or not conv_nodes(model):
        raise CalibrationError(f"{onnx_path}: not a deeplab-edge DeepLab export (no metadata or no Conv); "
                               "export it with `deeplab-edge export`")
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in model.graph.node)
    if quantized or meta.get("precision") not in (None, "fp32"):
        raise CalibrationError(f"{onnx_path}: not an FP32 export (precision {meta.get('precision')!r}"
                               f"{', already quantized' if quantized else ''}); calibrate the FP32 model from "
                               "`deeplab-edge export` (or a bundle's NAME_fp32.onnx)")
    unknown = set(keep_float) - {n.name for n in conv_nodes(model)}
    if unknown:
        raise CalibrationError(f"--keep-float-layer names unknown Conv nodes {sorted(unknown)[:3]}; see ranges.json or "
                               "sensitivity.json for the names")
    check_keep_float(len(conv_nodes(model)), keep_float_top, tuple(keep_float))
    inputs = calibration_inputs(data, Preprocess.from_dict(meta["preprocess"]), num)
    images_sha1 = image_digests(smp.image for smp in open_dataset(data).samples[:len(inputs)])
    names = activation_tensors(model)
    tick = progress("collect", 2 * len(inputs)) if progress else None
    means: dict = {}
    stats = collect_histograms(model, inputs, names, tick, means_out=means)
    searched = min(search_num, len(inputs)) if method == "search" else 0
    amax = thresholds(model, inputs, stats, method, percentile, search_num,
                      progress("search", searched) if progress and searched else None)
    _warn_collapsed(names, stats, amax)
    # the weights' int8 error shifts each output channel's mean; the QDQ model's float biases take it back
    shift = bias_corrections(model, means) if bias_correction else None

    ranking = None
    if keep_float_top > 0 or sensitivity or sensitivity_data is not None:
        import warnings

        from .sensitivity import layer_sensitivity

        if sensitivity_data is not None:
            held = open_dataset(sensitivity_data)
        else:
            held = open_dataset(data)
            if len(held) > len(inputs):
                held.samples = held.samples[len(inputs):]
            else:
                warnings.warn("no images left beyond the calibration set: the sensitivity split is not held out; "
                              "pass --sensitivity-data", NotHeldOutWarning, stacklevel=2)
        held = held.subset(sensitivity_num)
        if not held.has_labels:
            raise CalibrationError(f"{held.root}: has no labels for the sensitivity analysis; pass "
                                   "--sensitivity-data with a labelled VOC/Cityscapes/CamVid folder")
        tick = progress("sensitivity", len(conv_nodes(model))) if progress else None
        ranking = layer_sensitivity(model, amax, held, sensitivity_mode, tick, bias_shift=shift)
        keep_float = tuple(keep_float) + tuple(r["layer"] for r in ranking["layers"][:keep_float_top]
                                               if r["layer"] not in keep_float)

    # Tensors produced by Convs kept in float leave the cache, so TensorRT keeps them in float too.
    float_outputs = {o for n in model.graph.node if n.name in keep_float for o in n.output}
    scales = {n: a / 127.0 for n, a in amax.items() if a > 0 and n not in float_outputs}
    qdq = insert_qdq(model, amax, frozenset(keep_float), bias_shift=shift)
    tag_quantized(qdq, "int8-qdq-tensorrt", {"method": method, "images_sha1": images_sha1})
    # the source as the user will find it: its name alone when it lands in the output folder too
    source = onnx_path.name if onnx_path.parent.resolve() == out_dir.resolve() else str(onnx_path)
    ranges = {"method": method, "bias_correction": bias_correction, "search_images": searched or None,
              "percentile": percentile if method == "percentile" else None,
              "images": len(inputs), "images_sha1": images_sha1, "source": source, "keep_float": list(keep_float),
              "tensors": {n: {"max_abs": stats[n][1], "amax": amax[n], "scale": amax[n] / 127.0} for n in names}}
    report = {"cache": str(out_dir / "calibration.cache"), "qdq_onnx": str(out_dir / "model_qdq.onnx"),
              "ranges": str(out_dir / "ranges.json"), "images": len(inputs), "tensors": len(scales),
              "quantized_convs": len(conv_nodes(model)) - len(keep_float), "method": method,
              "bias_correction": bias_correction}
    # all files land together or none does (an interrupted run leaves no partial set)
    with staged_dir(out_dir) as stage:
        write_trt_cache(stage / "calibration.cache", scales, trt_version=trt_version)
        onnx.save(qdq, str(stage / "model_qdq.onnx"))
        (stage / "ranges.json").write_text(json.dumps(ranges, indent=1))
        if ranking is not None:
            (stage / "sensitivity.json").write_text(json.dumps(ranking, indent=1))
            report["sensitivity"] = str(out_dir / "sensitivity.json")
            report["sensitivity_mode"] = ranking["mode"]
            report["sensitivity_fp32_miou"] = ranking["fp32_miou"]
            report["sensitivity_int8_miou"] = ranking["int8_miou"]
            report["sensitivity_top"] = ranking["layers"][:10]
            report["keep_float"] = list(keep_float)
        if cpu_int8:
            import warnings

            from .cpu_int8 import kernel_agreement, quantize_cpu_int8

            info = quantize_cpu_int8(onnx_path, stage / "model_cpu_int8.onnx", inputs, method=method)
            few = inputs[:4]
            info.update(kernel_agreement=kernel_agreement(stage / "model_cpu_int8.onnx", few), kernel_check_images=len(few))
            report["cpu_int8_onnx"] = str(out_dir / "model_cpu_int8.onnx")
            report["cpu_int8"] = info
            if info["kernel_agreement"] < 0.99:
                warnings.warn(f"this CPU's ONNX Runtime int8 kernels disagree with the CPU INT8 model's exact arithmetic "
                              f"on {100 * (1 - info['kernel_agreement']):.1f}% of the pixels of {len(few)} calibration "
                              "images (a kernel issue of this CPU and ONNX Runtime build); measure it with `eval --onnx` "
                              "here, or deploy the QDQ/TensorRT or FP32 model", KernelDisagreementWarning, stacklevel=2)
    return report


calibrate.__signature__ = inspect.signature(_calibrate)  # help() and IDEs show the real arguments
