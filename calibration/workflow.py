"""``calibrate``: an FP32 export and real images in, the INT8 files of ``deeplab-edge calibrate`` out.

The options are one frozen :class:`CalibrationConfig`, checked when it is made; the work is the
:class:`~.pipeline.Calibrator`'s stages, then the per-layer sensitivity (when asked), then the files, all
staged and moved into place together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

import onnx

from deeplab_edge.data.datasets import open_dataset
from deeplab_edge.data.overlap import image_digests, recorded_overlap
from deeplab_edge.data.preprocess import Preprocess
from deeplab_edge.errors import CalibrationError
from deeplab_edge.export import dynamic_axes, export_onnx, load_onnx, read_metadata
from deeplab_edge.checkpoint import load_checkpoint
from deeplab_edge.outputs import check_run_folder, staged_dir

from .budget import fit_budget
from .alerts import DegenerateCalibrationWarning, KernelDisagreementWarning, NotHeldOutWarning, recorded
from .cache import check_trt_version, write_trt_cache
from .collect import DEGENERATE, as_dataset, calibration_inputs
from .cpu_int8 import kernel_agreement, quantize_cpu_int8
from .pipeline import Calibrator, Recipe
from .qdq import conv_nodes, tag_quantized
from .sensitivity import layer_sensitivity

__all__ = ["CalibrationConfig", "calibrate", "calibrate_folder", "check_keep_float", "COLLAPSED", "CALIBRATE_FILES", "check_one_model"]

#: A threshold below this share of its tensor's max|x| is a collapsed range (real images: 16% and more, on the
#: imported MobileNetV2 with every method).
COLLAPSED = 0.01

#: everything ``calibrate_folder`` writes into its output folder
CALIBRATE_FILES = {"model_fp32.onnx", "calibration.cache", "model_qdq.onnx", "model_cpu_int8.onnx", "ranges.json",
                   "sensitivity.json", "budget.json"}


@dataclass(frozen=True)
class CalibrationConfig:
    """What ``calibrate`` does, checked when made. ``num`` calibration images; the :class:`~.pipeline.Recipe`
    fields (``method``, ``percentile``, ``search_num``, ``bias_correction``); ``keep_float`` Conv names and the
    ``keep_float_top`` most costly Convs left in float; the TensorRT version the cache names; ``cpu_int8``: also
    the ONNX Runtime CPU INT8 model. With ``sensitivity``, ``sensitivity_data`` (a labelled dataset) or
    ``keep_float_top`` > 0, each Conv's mIoU cost is measured (``sensitivity_mode``) on ``sensitivity_num``
    images of ``sensitivity_data``, or else on the images of the calibration data beyond the first ``num``."""

    num: int = 256
    method: str = "mse"
    percentile: float = 99.99
    search_num: int = 16
    bias_correction: bool = True
    weight_bits: int = 8  # 7: weights within +-63, for x86 CPUs without VNNI (pipeline.Recipe)
    keep_float: tuple[str, ...] = ()
    keep_float_top: int = 0
    trt_version: str = "8.6.1"
    cpu_int8: bool = True
    sensitivity: bool = False
    sensitivity_data: str | Path | None = None
    sensitivity_num: int | None = None
    sensitivity_mode: str = "float-one"
    max_drop: float | None = None  # the accuracy budget, mIoU points on val_data (calibration/budget.py)
    val_data: str | Path | None = None
    val_num: int | None = None
    min_agreement: float | None = None  # optionally also a floor on the pixel agreement with FP32 (0-1)
    max_float: int = 8  # at most this many Convs go back to float

    def __post_init__(self) -> None:
        check_trt_version(self.trt_version)  # before any work: the cache header names it
        object.__setattr__(self, "keep_float", tuple(self.keep_float))
        self.recipe  # the method, percentile and search checks
        n = self.sensitivity_num
        if self.num < 1 or self.keep_float_top < 0 or self.search_num < 1 or (n is not None and n < 1):
            raise CalibrationError(f"expected num, search_num >= 1, keep_float_top >= 0 and sensitivity_num >= 1, "
                                   f"got {self.num}, {self.search_num}, {self.keep_float_top} and {n}: calibrating "
                                   "on no images gives all-zero scales")
        if self.max_drop is None and (self.val_data is not None or self.val_num is not None):
            raise CalibrationError("--val-data and --val-num are the budget's held-out images; add --max-drop P")
        for name, value, ok, what in (("--max-drop", self.max_drop, lambda v: v >= 0, ">= 0 mIoU points"),
                                      ("--min-agreement", self.min_agreement, lambda v: 0 < v <= 1, "in (0, 1]"),
                                      ("--max-float", self.max_float, lambda v: v >= 1, ">= 1"),
                                      ("--val-num", self.val_num, lambda v: v >= 1, ">= 1")):
            if value is not None and not (math.isfinite(value) and ok(value)):
                raise CalibrationError(f"{name} must be finite and {what}, got {value}")
        if self.min_agreement is not None and self.max_drop is None:
            raise CalibrationError("--min-agreement is part of the budget; add --max-drop P --val-data DIR")

    @property
    def recipe(self) -> Recipe:
        search_num = max(self.search_num, 1)  # a count below 1 is refused by __post_init__ with its own message
        return Recipe(self.method, self.percentile, search_num, self.bias_correction,
                      weight_bits=self.weight_bits)

    @property
    def wants_sensitivity(self) -> bool:
        return self.keep_float_top > 0 or self.sensitivity or self.sensitivity_data is not None


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


def _warn_collapsed(names: list[str], stats: dict, amax: dict[str, float]) -> None:
    """Warn (text starting with :data:`~.collect.DEGENERATE`) when activation tensors get no usable INT8 range:
    0 on every calibration image (no scale at all), or a threshold of 0 or below 1% of their max|x|."""
    zero = [n for n in names if stats[n][1] <= 0]
    tiny = [n for n in names if stats[n][1] > 0 and amax.get(n, 0.0) < COLLAPSED * stats[n][1]]
    if zero:
        warnings.warn(f"{DEGENERATE}: {len(zero)} of the {len(names)} activation tensors are 0 on every calibration "
                      f"image (e.g. {zero[0]}) and get no INT8 range; calibrate on more, and more varied, real "
                      "images", DegenerateCalibrationWarning, stacklevel=4)
    if tiny:
        warnings.warn(f"{DEGENERATE}: {len(tiny)} of the {len(names)} activation tensors have a threshold below "
                      f"{100 * COLLAPSED:.0f}% of their max |x| (e.g. {tiny[0]}): their INT8 ranges collapsed; try "
                      "another --method or more varied images, and check the model with `deeplab-edge eval --onnx`",
                      DegenerateCalibrationWarning, stacklevel=4)


def calibrate(onnx_path: str | Path, data: str | Path, out_dir: str | Path, config: CalibrationConfig | None = None,
              *, progress: Callable[[str, int], Callable[[], None]] | None = None, **options: Any) -> dict[str, Any]:
    """Calibrate ``onnx_path`` (an FP32 export of deeplab-edge) on the first ``config.num`` images of ``data``
    and write ``calibration.cache``, ``model_qdq.onnx``, ``ranges.json`` (and ``sensitivity.json``,
    ``model_cpu_int8.onnx`` as configured) into ``out_dir``, all or none. ``options`` are
    :class:`CalibrationConfig` fields, for ``calibrate(onnx, data, out, num=64, method="entropy")``.

    The report's ``warnings`` lists every calibration warning raised on the way as ``{"kind", "message"}``
    (kinds: :data:`.alerts.KINDS`); the warnings also reach the caller as Python warnings."""
    config = dataclasses.replace(config or CalibrationConfig(), **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _calibrate(Path(onnx_path), data, Path(out_dir), config, progress)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    report["warnings"] = recorded(caught)
    return report


def check_one_model(weights: Path | None, onnx_path: Path | None) -> None:
    """``calibrate`` takes exactly one model: a checkpoint or an FP32 export."""
    if (weights is None) == (onnx_path is None):
        raise CalibrationError(f"{'no model' if weights is onnx_path is None else 'both --weights and --onnx'} given; "
                               "pass exactly one of --weights FILE or --onnx FILE")


def check_budget_images(data: str | Path, config: CalibrationConfig):
    """Before any work: ``--max-drop`` without ``--val-data`` needs labelled images of ``data`` beyond the first
    ``--num`` (the calibration images) to measure the budget on. Returns ``data`` as a dataset then (else None)."""
    if config.max_drop is None or config.val_data is not None:
        return None
    held = as_dataset(data)
    if len(held) <= config.num:
        raise CalibrationError(f"--max-drop: no image of {data} is left beyond the first --num {config.num} (the "
                               "calibration images) to measure the budget on; pass --val-data DIR (labelled held-out "
                               "images) or a smaller --num")
    if not held.has_labels:
        raise CalibrationError(f"{data}: has no labels to measure the budget on; pass --val-data with a labelled "
                               "VOC/Cityscapes/CamVid folder")
    return held


def calibrate_folder(output: Path, data: str | Path, config: CalibrationConfig, *, weights: Path | None = None,
                     onnx_path: Path | None = None, progress=None,
                     exporting: Callable[[], ContextManager] = contextlib.nullcontext) -> dict[str, Any]:
    """``deeplab-edge calibrate``: ``calibrate`` a checkpoint (``weights``, exported to ``model_fp32.onnx`` beside
    the calibration) or an FP32 export (``onnx_path``) into ``output``, which holds this run's files only: an
    earlier calibrate run there is replaced whole, a folder with anything else is refused. The report names the
    files where they landed; calibration warnings are in it, by kind (and not raised)."""
    check_one_model(weights, onnx_path)
    earlier = check_run_folder(output, CALIBRATE_FILES, "calibrate")
    for opt, given in (("--weights", weights), ("--onnx", onnx_path), ("--sensitivity-data", config.sensitivity_data),
                       ("--val-data", config.val_data)):
        if given is not None and any(Path(given).resolve() == p.resolve() for p in earlier):
            raise CalibrationError(f"{opt} {given} lies in -o {output}, whose earlier calibrate files this run "
                                   "replaces; copy it elsewhere or choose another output folder")
    check_budget_images(data, config)
    # with --weights the export lands in OUTPUT too: staged with the calibration, all or nothing
    with staged_dir(output, replace=earlier) as stage, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # calibration warnings come back in the report, by kind
        if weights is not None:
            loaded = load_checkpoint(weights)
            ds = open_dataset(data).subset(4)
            onnx_path = stage / "model_fp32.onnx"
            with exporting():  # e.g. the CLI's spinner; H and W dynamic for a model without a fixed input size
                export_onnx(loaded, onnx_path, [ds.load(i)[1] for i in range(len(ds))],
                            dynamic=dynamic_axes(loaded.meta))
        rep = calibrate(onnx_path, data, stage, config, progress=progress)
    return {k: str(Path(output) / Path(v).name) if isinstance(v, str) and Path(v).parent == stage else v
            for k, v in rep.items()}


def _fp32_export(onnx_path: Path, config: CalibrationConfig):
    """The FP32 export and its metadata, refused when it is not one or ``keep_float`` does not fit it."""
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
    if meta.get("output") == "labels":
        raise CalibrationError(f"{onnx_path}: outputs labels (`export --emit labels`); calibration measures the "
                               "logits: calibrate the logit export (the default --emit logits)")
    unknown = set(config.keep_float) - {n.name for n in conv_nodes(model)}
    if unknown:
        raise CalibrationError(f"--keep-float-layer names unknown Conv nodes {sorted(unknown)[:3]}; see ranges.json or "
                               "sensitivity.json for the names")
    check_keep_float(len(conv_nodes(model)), config.keep_float_top, config.keep_float)
    return model, meta


def _sensitivity(cal: Calibrator, amax: dict[str, float], data: str | Path, config: CalibrationConfig,
                 progress) -> dict[str, Any]:
    """Each Conv's mIoU cost (``sensitivity.py``) on the held-out split: ``sensitivity_data``, or the images of
    ``data`` beyond the calibration ones (the calibration images again, with a warning, when there are none)."""
    if config.sensitivity_data is not None:
        held = open_dataset(config.sensitivity_data)
    else:
        held = as_dataset(data)
        if len(held) > len(cal.inputs):
            held = held.take(range(len(cal.inputs), len(held)))
        else:
            warnings.warn("no images left beyond the calibration set: the sensitivity split is not held out; "
                          "pass --sensitivity-data", NotHeldOutWarning, stacklevel=4)
    held = held.subset(config.sensitivity_num)
    if not held.has_labels:
        raise CalibrationError(f"{held.root}: has no labels for the sensitivity analysis; pass "
                               "--sensitivity-data with a labelled VOC/Cityscapes/CamVid folder")
    tick = progress("sensitivity", len(conv_nodes(cal.model))) if progress else None
    return layer_sensitivity(cal.model, amax, held, config.sensitivity_mode, tick,
                             bias_shift=cal.bias_shift(config.recipe), weight_bits=config.weight_bits)


def _budget(model, cal: Calibrator, amax: dict[str, float], keep_float: tuple[str, ...], images_sha1: list[str],
            data: str | Path, config: CalibrationConfig, progress) -> tuple[tuple[str, ...], dict[str, Any]]:
    """``--max-drop`` on ``--val-data``, or else on the calibration data's images beyond the calibration ones
    (refused where it shares an image with the calibration set, or where no image is left)."""
    if config.val_data is not None:
        val = open_dataset(config.val_data).subset(config.val_num)
    else:
        held = check_budget_images(data, config)
        val = held.take(range(len(images_sha1), len(held))).subset(config.val_num)
    shared = recorded_overlap(images_sha1, [smp.image for smp in val.samples])
    if shared:
        where = f"--val-data {config.val_data}" if config.val_data is not None else f"{data} beyond the first --num"
        raise CalibrationError(f"{where}: {len(shared)} of its {len(val)} images are calibration "
                               f"images (e.g. {shared[0].name}); the budget needs held-out images (e.g. val when "
                               "calibrating on train)")
    recipe = config.recipe
    shift = cal.bias_shift(recipe)
    return fit_budget(model, lambda keep: cal.qdq(recipe, amax, keep), amax, val, max_drop=config.max_drop,
                      min_agreement=config.min_agreement, max_float=config.max_float, keep_float=keep_float,
                      bias_shift=shift, progress=progress, weight_bits=recipe.weight_bits)


def _calibrate(onnx_path: Path, data: str | Path, out_dir: Path, config: CalibrationConfig, progress) -> dict[str, Any]:
    model, meta = _fp32_export(onnx_path, config)
    inputs = calibration_inputs(data, Preprocess.from_dict(meta["preprocess"]), config.num)
    images_sha1 = image_digests(smp.image for smp in as_dataset(data).subset(len(inputs)).samples)
    recipe = config.recipe
    cal = Calibrator(model, inputs, progress)
    amax = cal.thresholds(recipe)
    _warn_collapsed(cal.names, cal.stats, amax)
    ranking = _sensitivity(cal, amax, data, config, progress) if config.wants_sensitivity else None
    keep_float = config.keep_float
    if ranking is not None:
        keep_float += tuple(r["layer"] for r in ranking["layers"][:config.keep_float_top] if r["layer"] not in keep_float)
    budget = None
    if config.max_drop is not None:
        keep_float, budget = _budget(model, cal, amax, keep_float, images_sha1, data, config, progress)
    qdq = cal.qdq(recipe, amax, frozenset(keep_float))
    tag_quantized(qdq, "int8-qdq-tensorrt", {"method": recipe.method, "images_sha1": images_sha1,
                                             "weight_bits": recipe.weight_bits})
    # the source as the user will find it: its name alone when it lands in the output folder too
    source = onnx_path.name if onnx_path.parent.resolve() == out_dir.resolve() else str(onnx_path)
    ranges = {"method": recipe.method, "bias_correction": recipe.bias_correction, "weight_bits": recipe.weight_bits,
              "search_images": cal.searched(recipe) or None,
              "percentile": recipe.percentile if recipe.method == "percentile" else None,
              "images": len(inputs), "images_sha1": images_sha1, "source": source, "keep_float": list(keep_float),
              "tensors": {n: {"max_abs": cal.stats[n][1], "amax": amax[n], "scale": amax[n] / 127.0}
                          for n in cal.names}}
    # Tensors produced by Convs kept in float leave the cache, so TensorRT keeps them in float too.
    float_outputs = {o for n in model.graph.node if n.name in keep_float for o in n.output}
    scales = {n: a / 127.0 for n, a in amax.items() if a > 0 and n not in float_outputs}
    report = {"cache": str(out_dir / "calibration.cache"), "qdq_onnx": str(out_dir / "model_qdq.onnx"),
              "ranges": str(out_dir / "ranges.json"), "images": len(inputs), "tensors": len(scales),
              "quantized_convs": len(conv_nodes(model)) - len(keep_float), "method": recipe.method,
              "bias_correction": recipe.bias_correction, "weight_bits": recipe.weight_bits}
    # all files land together or none does (an interrupted run leaves no partial set)
    with staged_dir(out_dir) as stage:
        write_trt_cache(stage / "calibration.cache", scales, trt_version=config.trt_version)
        onnx.save(qdq, str(stage / "model_qdq.onnx"))
        (stage / "ranges.json").write_text(json.dumps(ranges, indent=1))
        if ranking is not None:
            (stage / "sensitivity.json").write_text(json.dumps(ranking, indent=1))
            report.update(sensitivity=str(out_dir / "sensitivity.json"), sensitivity_mode=ranking["mode"],
                          sensitivity_fp32_miou=ranking["fp32_miou"], sensitivity_int8_miou=ranking["int8_miou"],
                          sensitivity_top=ranking["layers"][:10], keep_float=list(keep_float))
        if budget is not None:
            (stage / "budget.json").write_text(json.dumps(budget, indent=1))
            report.update(budget={k: v for k, v in budget.items() if k != "steps"}, keep_float=list(keep_float),
                          budget_file=str(out_dir / "budget.json"), quantized_convs=len(conv_nodes(model)) -
                          len(keep_float))
        if config.cpu_int8:
            report["cpu_int8_onnx"] = str(out_dir / "model_cpu_int8.onnx")
            report["cpu_int8"] = _cpu_int8(onnx_path, stage / "model_cpu_int8.onnx", inputs, recipe.method)
    return report


def _cpu_int8(onnx_path: Path, path: Path, inputs: list, method: str) -> dict[str, Any]:
    """The ONNX Runtime CPU INT8 model at ``path``, its kernels checked on a few calibration images."""
    info = quantize_cpu_int8(onnx_path, path, inputs, method=method)
    few = inputs[:4]
    info.update(kernel_agreement=kernel_agreement(path, few), kernel_check_images=len(few))
    if info["kernel_agreement"] < 0.99:
        warnings.warn(f"this CPU's ONNX Runtime int8 kernels disagree with the CPU INT8 model's exact arithmetic "
                      f"on {100 * (1 - info['kernel_agreement']):.1f}% of the pixels of {len(few)} calibration "
                      "images (a kernel issue of this CPU and ONNX Runtime build); measure it with `eval --onnx` "
                      "here, or deploy the QDQ/TensorRT or FP32 model", KernelDisagreementWarning, stacklevel=4)
    return info
