"""``deeplab-edge build``: checkpoint -> FP32 ONNX -> INT8 calibration -> TensorRT engine, or,
where TensorRT or a GPU is missing, the deployment bundle that builds it on the target.

Files, named after the engine (``-o out/NAME.engine``), all in the engine's folder:

========================  ===============================================================
``NAME_fp32.onnx``        the FP32 export (parity-checked against PyTorch)
``NAME_qdq.onnx``         INT8: the TensorRT QDQ model (explicit quantization)
``NAME.cache``            INT8: TensorRT's calibration cache (implicit, TensorRT 8.5-10)
``NAME_ranges.json``      INT8 from --calib-data: every tensor's range
``NAME.engine``           the engine, only where it was built
``NAME.engine.json``      the manifest: versions, GPU, Jetson, flags, shapes, hashes
``NAME_build_engine.sh``  builds the engine on the target with the same flags
========================  ===============================================================

Everything is staged in a temporary folder and moved into place only when every step
passed, so a failed build leaves no partial files (and no folder it created).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .engine import (Shapes, build_command, build_engine, build_script, file_entry, manifest_path, new_manifest,
                     parse_shapes, tensorrt_unavailable, this_machine, trtexec_command)
from .calibration.cache import check_cache_against_onnx
from .checkpoint import load_checkpoint
from .data.datasets import open_dataset
from .data.preprocess import Preprocess
from .errors import DeepLabEdgeError
from .export import dynamic_axes, export_onnx, read_metadata, with_label_output
from .outputs import check_output_file, refuse_overwriting_inputs, refuse_writing_over, staged_dir

__all__ = ["build", "BuildSpec"]


@dataclass(frozen=True)
class BuildSpec:
    """What ``build`` makes: ``output`` (``out/NAME.engine``, the bundle beside it) from ``weights`` (a checkpoint,
    exported with a parity check on ``data``) or ``onnx`` (an FP32 export); INT8 from ``calib_data`` (calibrated
    here: ``calib_method``, ``calib_num`` images, the ``keep_float_top`` most sensitive Convs in float),
    ``qdq`` and/or ``calib_cache``, by ``int8_route``; FP16; the profile ``shapes``; DLA (``dla_core``,
    ``gpu_fallback``); the builder's ``workspace_mb`` and ``timing_cache``. Checked by :meth:`check`."""

    output: Path
    weights: Path | None = None
    onnx: Path | None = None
    data: Path | None = None
    int8: bool = False
    fp16: bool = False
    calib_data: Path | None = None
    calib_cache: Path | None = None
    qdq: Path | None = None
    calib_method: str = "mse"
    calib_num: int = 256
    keep_float_top: int = 0
    int8_route: str = "qdq"
    shapes: str | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    workspace_mb: int | None = None
    timing_cache: Path | None = None
    max_drop: float | None = None  # with calib_data: the INT8 accuracy budget on val_data (calibration/budget.py)
    val_data: Path | None = None
    val_num: int | None = None
    min_agreement: float | None = None
    max_float: int = 8
    emit: str = "logits"  # "labels": the engine outputs the label map (ArgMax in the graph)
    labels_dtype: str = "int32"

    @property
    def name(self) -> str:
        return Path(self.output).stem

    @property
    def dest(self) -> Path:
        return Path(self.output).parent

    @property
    def inputs(self) -> dict[str, Path | None]:
        """The build's input files by option."""
        return {"--weights": self.weights, "--onnx": self.onnx, "--qdq": self.qdq, "--calib-cache": self.calib_cache,
                "--data": self.data, "--calib-data": self.calib_data, "--val-data": self.val_data}

    def check(self) -> None:
        """Refuse options that do not make a build, before any work."""
        if Path(self.output).suffix in ("", ".onnx", ".json"):
            raise DeepLabEdgeError(f"-o {self.output}: give the engine's file name, e.g. -o out/model.engine")
        if (self.weights is None) == (self.onnx is None):
            raise DeepLabEdgeError(f"{'no model' if self.weights is self.onnx is None else 'both --weights and --onnx'}"
                                   " given; pass exactly one of --weights FILE (checkpoint) or --onnx FILE (FP32 export)")
        for p, what in ((self.weights, "checkpoint"), (self.onnx, "ONNX model"), (self.calib_cache, "calibration cache"),
                        (self.qdq, "QDQ ONNX model")):
            if p is not None and not Path(p).is_file():
                raise DeepLabEdgeError(f"{p}: {what} not found; check the path")
        sources = [s for s in (self.calib_data, self.calib_cache, self.qdq) if s is not None]
        if self.int8 and not sources:
            raise DeepLabEdgeError("--int8 needs calibration: --calib-data DIR (calibrate here), --calib-cache FILE or "
                                   "--qdq FILE (from `deeplab-edge calibrate`)")
        if not self.int8 and sources:
            raise DeepLabEdgeError("--calib-data / --calib-cache / --qdq only make sense with --int8")
        if len(sources) > 1 and not (self.calib_cache is not None and self.qdq is not None):
            raise DeepLabEdgeError("give one INT8 source: --calib-data, or --qdq and/or --calib-cache")
        if self.dla_core is not None and not (self.fp16 or self.int8):
            raise DeepLabEdgeError("DLA runs FP16 or INT8 only: add --fp16 or --int8 to --dla")
        if self.gpu_fallback and self.dla_core is None:
            raise DeepLabEdgeError("--allow-gpu-fallback only applies with --dla N")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise DeepLabEdgeError(f"--workspace must be >= 1 MB, got {self.workspace_mb}")
        extra = [o for o, v in (("--val-data", self.val_data), ("--val-num", self.val_num),
                                ("--min-agreement", self.min_agreement)) if v is not None]
        if extra and self.max_drop is None:
            raise DeepLabEdgeError(f"{extra[0]} is part of the accuracy budget; add --max-drop P (or drop it)")
        if self.max_drop is not None and self.calib_data is None:
            raise DeepLabEdgeError("--max-drop calibrates within a budget in this build; add --int8 --calib-data "
                                   "DIR (and --val-data DIR, or the labelled --calib-data images beyond --calib-num)")
        if self.emit not in ("logits", "labels") or self.labels_dtype not in ("int32", "uint8"):
            raise DeepLabEdgeError(f"--emit {self.emit!r} / --labels-dtype {self.labels_dtype!r}: use logits or labels, "
                                   "and int32 or uint8")
        if self.calib_num < 1 or self.keep_float_top < 0 or (self.dla_core is not None and self.dla_core < 0):
            raise DeepLabEdgeError(f"expected --calib-num >= 1, --keep-float >= 0 and --dla >= 0, got {self.calib_num}, "
                                   f"{self.keep_float_top} and {self.dla_core}")


def build(spec: BuildSpec | None = None, *, log: Callable[[str], None] = lambda s: None,
          **options: Any) -> dict[str, Any]:
    """Run the chain for ``spec`` (or the :class:`BuildSpec` fields in ``options``: ``build(output=..., weights=...,
    int8=True, calib_data=...)``); returns the manifest (with ``files``: what was written)."""
    spec = dataclasses.replace(spec, **options) if spec is not None else BuildSpec(**options)
    spec.check()
    output = Path(spec.output)
    check_output_file(output, "-o", "model.engine")
    _refuse_bundle_over_inputs(spec.dest, spec.name, output, spec.inputs, spec.timing_cache)
    # an earlier bundle of this NAME: its files that this build does not write again go (no stale NAME.cache
    # beside a manifest without INT8); inputs used in place stay
    given = [Path(p) for p in spec.inputs.values() if p is not None]
    earlier = [spec.dest / n for n in _bundle_names(spec.name, output)
               if (spec.dest / n).is_file() and not any(p.is_file() and os.path.samefile(p, spec.dest / n) for p in given)]
    with staged_dir(spec.dest, replace=earlier) as stage:
        files, manifest = _build_in(stage, spec, log)
    manifest["files"] = {key: str(spec.dest / p.name) for key, p in files.items()}
    return manifest


def _bundle_names(name: str, output: Path) -> list[str]:
    return [f"{name}_fp32.onnx", f"{name}_qdq.onnx", f"{name}.cache", f"{name}_ranges.json", output.name,
            manifest_path(output.name).name, f"{name}_build_engine.sh", f"{name}_labels_fp32.onnx",
            f"{name}_labels_qdq.onnx", f"{name}_budget.json"]


# an input that already sits in its own place in the bundle (a bundle rebuilt on the target) is kept, not copied
_SLOTS = {"--onnx": "{name}_fp32.onnx", "--qdq": "{name}_qdq.onnx", "--calib-cache": "{name}.cache"}


def _refuse_bundle_over_inputs(dest: Path, name: str, output: Path, inputs: dict[str, Path | None],
                               timing_cache: Path | None = None) -> None:
    """No bundle file is written over one of the build's inputs (other than an input in its own slot), and the
    timing cache (read and updated in place) is neither an input nor a file of the bundle."""
    given = {opt: [Path(p)] for opt, p in inputs.items() if p is not None}
    refuse_overwriting_inputs({"-o": (output, "file")}, given)
    for opt, paths in given.items():
        slot = _SLOTS.get(opt, "").format(name=name)
        refuse_writing_over([dest / n for n in _bundle_names(name, output) if n != slot], {opt: paths})
    if timing_cache is not None:
        refuse_overwriting_inputs({"--timing-cache": (Path(timing_cache), "file")}, given)
        bundle = {os.path.abspath(dest / n) for n in _bundle_names(name, output)}
        if os.path.abspath(timing_cache) in bundle:
            raise DeepLabEdgeError(f"--timing-cache {timing_cache} is a file of the bundle this build writes; name "
                                   "the timing cache apart, e.g. timing.cache")


def _take(src: Path, target: Path, dest: Path) -> Path:
    """``src`` copied to the staged ``target``, unless it already is the bundle's file of that name in ``dest``
    (then the file stays as it is and is used in place)."""
    final = dest / target.name
    if final.exists() and os.path.samefile(src, final):
        return Path(src)
    shutil.copyfile(src, target)
    return target


def _export_fp32(stage: Path, spec: BuildSpec, log: Callable[[str], None]) -> tuple[Path, dict[str, Any] | None]:
    """The bundle's FP32 export: the checkpoint exported (parity-checked on real images), or the given export
    (used in place when it already is the bundle's file); with the checkpoint's record when exported here."""
    fp32 = stage / f"{spec.name}_fp32.onnx"
    if spec.weights is None:
        meta = read_metadata(spec.onnx)
        if meta.get("precision") not in (None, "fp32") or "preprocess" not in meta:
            raise DeepLabEdgeError(f"{spec.onnx}: not a deeplab-edge FP32 export (precision {meta.get('precision')!r}); "
                                   "export one with `deeplab-edge export`")
        return _take(spec.onnx, fp32, spec.dest), None
    img_src = spec.data or spec.calib_data
    if img_src is None:
        raise DeepLabEdgeError("exporting a checkpoint needs real images for the parity check: pass --data DIR "
                               "(or --calib-data DIR)")
    loaded = load_checkpoint(spec.weights)
    prof = parse_shapes(spec.shapes, Preprocess.from_dict(loaded.meta.get("preprocess") or {}).fixed_input_hw)
    ds = open_dataset(img_src).subset(4)
    log(f"exporting {Path(spec.weights).name} to ONNX (parity check on {len(ds)} images)")
    # without a fixed input size H and W are dynamic; --shapes (required then) gives the engine's profile
    export_onnx(loaded, fp32, [ds.load(i)[1] for i in range(len(ds))],
                dynamic=dynamic_axes(loaded.meta, batch=prof.min[0] != prof.max[0]))
    return fp32, {"file": str(spec.weights), "sha256": loaded.meta.get("sha256")}


def _profile(spec: BuildSpec, fp32: Path, meta: dict[str, Any]) -> tuple[Shapes, str]:
    """The engine's optimization profile and the export's input name; a profile past a fixed batch is refused."""
    import onnx

    prof: Shapes = parse_shapes(spec.shapes, Preprocess.from_dict(meta["preprocess"]).fixed_input_hw)
    inp = onnx.load(str(fp32), load_external_data=False).graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if dims[0] is not None and prof.max[0] > dims[0]:
        raise DeepLabEdgeError(f"{fp32.name} has a fixed batch of {dims[0]}; --shapes asks for {prof.max[0]}: "
                               "re-export with --dynamic batch")
    return prof, inp.name


def _calibrate_here(stage: Path, spec: BuildSpec, fp32: Path, log: Callable[[str], None]
                    ) -> tuple[dict[str, Path], dict[str, Any]]:
    """``--calib-data``: ``calibrate`` into the stage, its files renamed into the bundle's slots."""
    from .calibration.workflow import calibrate

    log(f"calibrating ({spec.calib_method}, up to {spec.calib_num} images of {spec.calib_data})")
    cal_dir = stage / "calib"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # recorded in the report: the manifest keeps them, the log shows them
        rep = calibrate(fp32, spec.calib_data, cal_dir, num=spec.calib_num, method=spec.calib_method, cpu_int8=False,
                        keep_float_top=spec.keep_float_top, max_drop=spec.max_drop, val_data=spec.val_data,
                        val_num=spec.val_num, min_agreement=spec.min_agreement, max_float=spec.max_float)
    for w in rep["warnings"]:
        if w["kind"] != "few_images":
            log(f"warning: {w['message']}")
    files = {"qdq_onnx": stage / f"{spec.name}_qdq.onnx", "cache": stage / f"{spec.name}.cache",
             "ranges": stage / f"{spec.name}_ranges.json"}
    if "budget" in rep:
        files["budget"] = stage / f"{spec.name}_budget.json"
    for key, made in (("qdq_onnx", "model_qdq.onnx"), ("cache", "calibration.cache"), ("ranges", "ranges.json"),
                      ("budget", "budget.json")):
        if key in files:
            os.replace(cal_dir / made, files[key])
    shutil.rmtree(cal_dir, ignore_errors=True)
    info = {"method": spec.calib_method, "images": rep["images"], "data": str(spec.calib_data),
            "keep_float": rep.get("keep_float", []), "warnings": rep["warnings"],
            "images_sha1": (read_metadata(files["qdq_onnx"]).get("calibration") or {}).get("images_sha1"),
            **({"budget": rep["budget"]} if "budget" in rep else {})}
    return files, info


def _int8_sources(stage: Path, spec: BuildSpec, fp32: Path, meta: dict[str, Any], log: Callable[[str], None]
                  ) -> tuple[dict[str, Path], dict[str, Any] | None, str | None]:
    """The INT8 files in the bundle (QDQ model, cache, ranges), the calibration record and the INT8 route."""
    if not spec.int8:
        return {}, None, None
    files: dict[str, Path] = {}
    calib_info = None
    if spec.calib_data is not None:
        files, calib_info = _calibrate_here(stage, spec, fp32, log)
    if spec.qdq is not None:
        qmeta = read_metadata(spec.qdq)
        if qmeta.get("precision") != "int8-qdq-tensorrt":
            raise DeepLabEdgeError(f"{spec.qdq}: not a TensorRT QDQ model from `deeplab-edge calibrate` (precision "
                                   f"{qmeta.get('precision')!r})")
        if qmeta.get("checkpoint_sha256") != meta.get("checkpoint_sha256"):
            raise DeepLabEdgeError(f"{spec.qdq}: calibrated from another checkpoint than {fp32.name}; recalibrate")
        files["qdq_onnx"] = _take(spec.qdq, stage / f"{spec.name}_qdq.onnx", spec.dest)
        calib_info = {"method": (qmeta.get("calibration") or {}).get("method"), "source": str(spec.qdq),
                      "images_sha1": (qmeta.get("calibration") or {}).get("images_sha1")}
    if spec.calib_cache is not None:
        check_cache_against_onnx(spec.calib_cache, fp32)  # names must match the FP32 export
        files["cache"] = _take(spec.calib_cache, stage / f"{spec.name}.cache", spec.dest)
        calib_info = calib_info or {"source": str(spec.calib_cache)}
    route = "qdq" if "qdq_onnx" in files and spec.int8_route == "qdq" else "cache"
    if route == "cache" and "cache" not in files:
        raise DeepLabEdgeError("--int8-route cache needs a calibration cache (--calib-cache or --calib-data)")
    return files, calib_info, route


def _label_models(stage: Path, spec: BuildSpec, files: dict[str, Path]) -> dict[str, Path]:
    """``--emit labels``: the FP32 and QDQ models with the ArgMax at their end, beside the logit ones (which
    calibration and the cache route read, and which stay as they are)."""
    import onnx

    if spec.emit != "labels":
        return {}
    made = {}
    for key, suffix in (("onnx_fp32", "labels_fp32"), ("qdq_onnx", "labels_qdq")):
        if key in files:
            target = stage / f"{spec.name}_{suffix}.onnx"
            onnx.save(with_label_output(onnx.load(str(files[key])), spec.labels_dtype), str(target))
            made[f"{key}_labels"] = target
    return made


def _engine_onnx(files: dict[str, Path], route: str | None) -> Path:
    """The ONNX the engine is built from: the QDQ model on the QDQ route, else the FP32 one (their label
    versions with --emit labels)."""
    key = "qdq_onnx" if route == "qdq" else "onnx_fp32"
    return files.get(f"{key}_labels", files[key])


def _commands(spec: BuildSpec, files: dict[str, Path], fp32: Path, engine_kw: dict[str, Any],
              input_name: str) -> dict[str, Any]:
    """The commands that build this engine on the target: deeplab-edge's, trtexec's, and trtexec's for 11."""
    output, route = Path(spec.output), engine_kw["route"]
    eng_onnx = _engine_onnx(files, route)
    fp32 = files.get("onnx_fp32_labels", fp32)
    # the script runs from the bundle's folder: the timing cache as seen from there
    tc = (os.path.relpath(os.path.abspath(spec.timing_cache), os.path.abspath(spec.dest))
          if spec.timing_cache else None)
    cmd_kw = dict(engine_kw, timing_cache=tc, cache=files["cache"].name if "cache" in files else None)
    trtexec = trtexec_command(onnx=eng_onnx.name, engine=output.name, input_name=input_name, **cmd_kw)
    trtexec11 = (trtexec_command(onnx=eng_onnx.name, engine=output.name, input_name=input_name, trt_major_version=11,
                                 **cmd_kw) if route != "cache" else None)
    qdq = files.get("qdq_onnx_labels", files.get("qdq_onnx"))
    de_cmd = build_command(fp32_onnx=fp32.name, qdq_onnx=qdq.name if qdq is not None else None,
                           engine=output.name, **cmd_kw)
    return {"deeplab_edge": de_cmd, "trtexec": trtexec, "trtexec_trt11": trtexec11}


def _build_in(stage: Path, spec: BuildSpec, log: Callable[[str], None]) -> tuple[dict[str, Path], dict[str, Any]]:
    """Every file of the bundle, written into ``stage``; returns (files by key, manifest)."""
    fp32, checkpoint = _export_fp32(stage, spec, log)
    meta = read_metadata(fp32)
    prof, input_name = _profile(spec, fp32, meta)
    int8_files, calib_info, route = _int8_sources(stage, spec, fp32, meta, log)
    files: dict[str, Path] = {"onnx_fp32": fp32, **int8_files}
    files.update(_label_models(stage, spec, files))
    engine_kw = dict(shapes=prof, fp16=spec.fp16, int8=spec.int8, route=route, workspace_mb=spec.workspace_mb,
                     dla_core=spec.dla_core, gpu_fallback=spec.gpu_fallback)
    commands = _commands(spec, files, fp32, engine_kw, input_name)

    engine_file = stage / Path(spec.output).name
    here = this_machine()
    reason = tensorrt_unavailable()
    built = None
    if reason is None:
        log(f"building the TensorRT {here['tensorrt']} engine on {here['gpu']['name']}")
        built = build_engine(onnx=_engine_onnx(files, route), engine=engine_file,
                             cache=files.get("cache"), timing_cache=spec.timing_cache, **engine_kw)
        files["engine"] = engine_file
    manifest = new_manifest(
        engine=file_entry(engine_file) if built else None, engine_built=built is not None,
        not_built_reason=None if built else f"{reason}; run {spec.name}_build_engine.sh on the target",
        tensorrt=here["tensorrt"] if built else None, cuda=here["cuda"] if built else None,
        gpu=here["gpu"] if built else None, jetson=here["jetson"] if built else None,
        built_on=here, precision={"fp16": spec.fp16, "int8": spec.int8, "int8_route": route,
                                  "strongly_typed": (built or {}).get("strongly_typed")},
        dla_core=spec.dla_core, gpu_fallback=spec.gpu_fallback, workspace_mb=spec.workspace_mb,
        input={"name": input_name, "shapes": prof.as_dict()}, onnx_fp32=file_entry(fp32),
        onnx_qdq=file_entry(files.get("qdq_onnx")), calibration_cache=file_entry(files.get("cache")),
        calibration=calib_info, checkpoint=checkpoint or {"sha256": meta.get("checkpoint_sha256")},
        arch=meta.get("arch"), num_classes=meta["num_classes"], classes=meta.get("classes"),
        preprocess=meta["preprocess"], build_s=(built or {}).get("build_s"), build=commands,
        output={"kind": spec.emit, **({"dtype": spec.labels_dtype, "onnx_fp32": file_entry(files["onnx_fp32_labels"]),
                                        "onnx_qdq": file_entry(files.get("qdq_onnx_labels"))}
                                       if spec.emit == "labels" else {})})
    man = stage / manifest_path(Path(spec.output).name).name
    man.write_text(json.dumps(manifest, indent=1, default=str))
    files["manifest"] = man
    script = stage / f"{spec.name}_build_engine.sh"
    script.write_text(build_script(manifest))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    files["script"] = script
    return files, manifest
