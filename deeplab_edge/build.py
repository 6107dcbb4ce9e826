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

import os
import shutil
import stat
import warnings
from pathlib import Path
from typing import Any, Callable

from .engine import (Shapes, build_command, build_engine, build_script, file_entry, manifest_path, new_manifest,
                     parse_shapes, tensorrt_unavailable, this_machine, trtexec_command)
from .errors import DeepLabEdgeError
from .export import read_metadata
from .outputs import check_output_file, staged_dir

__all__ = ["build"]


def build(*, output: Path, weights: Path | None = None, onnx: Path | None = None, data: Path | None = None,
          int8: bool = False, fp16: bool = False, calib_data: Path | None = None, calib_cache: Path | None = None,
          qdq: Path | None = None, calib_method: str = "mse", calib_num: int = 256, keep_float_top: int = 0,
          int8_route: str = "qdq", shapes: str | None = None, dla_core: int | None = None,
          gpu_fallback: bool = False, workspace_mb: int | None = None, timing_cache: Path | None = None,
          log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the chain; returns the manifest (with ``files``: what was written)."""
    output = Path(output)
    if output.suffix in ("", ".onnx", ".json"):
        raise DeepLabEdgeError(f"-o {output}: give the engine's file name, e.g. -o out/model.engine")
    if (weights is None) == (onnx is None):
        raise DeepLabEdgeError(f"{'no model' if weights is onnx is None else 'both --weights and --onnx'} given; "
                               "pass exactly one of --weights FILE (checkpoint) or --onnx FILE (FP32 export)")
    for p, what in ((weights, "checkpoint"), (onnx, "ONNX model"), (calib_cache, "calibration cache"),
                    (qdq, "QDQ ONNX model")):
        if p is not None and not Path(p).is_file():
            raise DeepLabEdgeError(f"{p}: {what} not found; check the path")
    sources = [s for s in (calib_data, calib_cache, qdq) if s is not None]
    if int8 and not sources:
        raise DeepLabEdgeError("--int8 needs calibration: --calib-data DIR (calibrate here), --calib-cache FILE or "
                               "--qdq FILE (from `deeplab-edge calibrate`)")
    if not int8 and sources:
        raise DeepLabEdgeError("--calib-data / --calib-cache / --qdq only make sense with --int8")
    if len(sources) > 1 and not (calib_cache is not None and qdq is not None):
        raise DeepLabEdgeError("give one INT8 source: --calib-data, or --qdq and/or --calib-cache")
    if dla_core is not None and not (fp16 or int8):
        raise DeepLabEdgeError("DLA runs FP16 or INT8 only: add --fp16 or --int8 to --dla")
    if gpu_fallback and dla_core is None:
        raise DeepLabEdgeError("--allow-gpu-fallback only applies with --dla N")
    if workspace_mb is not None and workspace_mb < 1:
        raise DeepLabEdgeError(f"--workspace must be >= 1 MB, got {workspace_mb}")

    if calib_num < 1 or keep_float_top < 0 or (dla_core is not None and dla_core < 0):
        raise DeepLabEdgeError(f"expected --calib-num >= 1, --keep-float >= 0 and --dla >= 0, got {calib_num}, "
                               f"{keep_float_top} and {dla_core}")
    check_output_file(output, "-o", "model.engine")

    name = output.stem
    dest = output.parent
    inputs = {"--weights": weights, "--onnx": onnx, "--qdq": qdq, "--calib-cache": calib_cache, "--data": data,
              "--calib-data": calib_data}
    _refuse_bundle_over_inputs(dest, name, output, inputs, timing_cache)
    # an earlier bundle of this NAME: its files that this build does not write again go (no stale NAME.cache
    # beside a manifest without INT8); inputs used in place stay
    given = [Path(p) for p in inputs.values() if p is not None]
    earlier = [dest / n for n in _bundle_names(name, output)
               if (dest / n).is_file() and not any(p.is_file() and os.path.samefile(p, dest / n) for p in given)]
    with staged_dir(dest, replace=earlier) as stage:
        files = _build_in(stage, name, output, weights=weights, onnx=onnx, data=data, int8=int8, fp16=fp16,
                          calib_data=calib_data, calib_cache=calib_cache, qdq=qdq, calib_method=calib_method,
                          calib_num=calib_num, keep_float_top=keep_float_top, int8_route=int8_route,
                          shapes=shapes, dla_core=dla_core, gpu_fallback=gpu_fallback, workspace_mb=workspace_mb,
                          timing_cache=timing_cache, log=log)
        manifest = files.pop("_manifest")
    manifest["files"] = {key: str(dest / p.name) for key, p in files.items()}
    return manifest


def _bundle_names(name: str, output: Path) -> list[str]:
    return [f"{name}_fp32.onnx", f"{name}_qdq.onnx", f"{name}.cache", f"{name}_ranges.json", output.name,
            manifest_path(output.name).name, f"{name}_build_engine.sh"]


# an input that already sits in its own place in the bundle (a bundle rebuilt on the target) is kept, not copied
_SLOTS = {"--onnx": "{name}_fp32.onnx", "--qdq": "{name}_qdq.onnx", "--calib-cache": "{name}.cache"}


def _refuse_bundle_over_inputs(dest: Path, name: str, output: Path, inputs: dict[str, Path | None],
                               timing_cache: Path | None = None) -> None:
    """No bundle file is written over one of the build's inputs (other than an input in its own slot), and the
    timing cache (read and updated in place) is neither an input nor a file of the bundle."""
    from .outputs import refuse_overwriting_inputs, refuse_writing_over

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


def _build_in(stage: Path, name: str, output: Path, *, weights, onnx, data, int8, fp16, calib_data, calib_cache, qdq,
              calib_method, calib_num, keep_float_top, int8_route, shapes, dla_core, gpu_fallback, workspace_mb,
              timing_cache, log) -> dict[str, Any]:
    import onnx as onnx_lib  # `onnx` is the --onnx path here

    files: dict[str, Any] = {}
    fp32 = stage / f"{name}_fp32.onnx"
    checkpoint = None
    if weights is not None:
        from .checkpoint import load_checkpoint
        from .data.datasets import open_dataset
        from .data.preprocess import Preprocess
        from .export import dynamic_axes, export_onnx

        img_src = data or calib_data
        if img_src is None:
            raise DeepLabEdgeError("exporting a checkpoint needs real images for the parity check: pass --data DIR "
                                   "(or --calib-data DIR)")
        loaded = load_checkpoint(weights)
        pre = Preprocess.from_dict(loaded.meta.get("preprocess") or {})
        prof = parse_shapes(shapes, pre.fixed_input_hw)
        ds = open_dataset(img_src).subset(4)
        log(f"exporting {weights.name} to ONNX (parity check on {len(ds)} images)")
        # without a fixed input size H and W are dynamic; --shapes (required then) gives the engine's profile
        export_onnx(loaded, fp32, [ds.load(i)[1] for i in range(len(ds))],
                    dynamic=dynamic_axes(loaded.meta, batch=prof.min[0] != prof.max[0]))
        checkpoint = {"file": str(weights), "sha256": loaded.meta.get("sha256")}
    else:
        meta = read_metadata(onnx)
        if meta.get("precision") not in (None, "fp32") or "preprocess" not in meta:
            raise DeepLabEdgeError(f"{onnx}: not a deeplab-edge FP32 export (precision {meta.get('precision')!r}); "
                                   "export one with `deeplab-edge export`")
        fp32 = _take(onnx, fp32, output.parent)
    meta = read_metadata(fp32)
    from .data.preprocess import Preprocess

    prof: Shapes = parse_shapes(shapes, Preprocess.from_dict(meta["preprocess"]).fixed_input_hw)
    model = onnx_lib.load(str(fp32), load_external_data=False)
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if dims[0] is not None and prof.max[0] > dims[0]:
        raise DeepLabEdgeError(f"{fp32.name} has a fixed batch of {dims[0]}; --shapes asks for {prof.max[0]}: "
                               "re-export with --dynamic batch")
    files["onnx_fp32"] = fp32

    route = None
    calib_info: dict[str, Any] | None = None
    if int8:
        from .calibration import check_cache_against_onnx

        if calib_data is not None:
            from .calibration import calibrate

            log(f"calibrating ({calib_method}, up to {calib_num} images of {calib_data})")
            cal_dir = stage / "calib"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # recorded in the report: the manifest keeps them, the log shows them
                rep = calibrate(fp32, calib_data, cal_dir, num=calib_num, method=calib_method, cpu_int8=False,
                                keep_float_top=keep_float_top)
            for w in rep["warnings"]:
                if w["kind"] != "few_images":
                    log(f"warning: {w['message']}")
            os.replace(cal_dir / "model_qdq.onnx", stage / f"{name}_qdq.onnx")
            os.replace(cal_dir / "calibration.cache", stage / f"{name}.cache")
            os.replace(cal_dir / "ranges.json", stage / f"{name}_ranges.json")
            shutil.rmtree(cal_dir, ignore_errors=True)
            files.update(qdq_onnx=stage / f"{name}_qdq.onnx", cache=stage / f"{name}.cache",
                         ranges=stage / f"{name}_ranges.json")
            calib_info = {"method": calib_method, "images": rep["images"], "data": str(calib_data),
                          "keep_float": rep.get("keep_float", []), "warnings": rep["warnings"],
                          "images_sha1": (read_metadata(files["qdq_onnx"]).get("calibration") or {}).get("images_sha1")}
        if qdq is not None:
            qmeta = read_metadata(qdq)
            if qmeta.get("precision") != "int8-qdq-tensorrt":
                raise DeepLabEdgeError(f"{qdq}: not a TensorRT QDQ model from `deeplab-edge calibrate` (precision "
                                       f"{qmeta.get('precision')!r})")
            if qmeta.get("checkpoint_sha256") != meta.get("checkpoint_sha256"):
                raise DeepLabEdgeError(f"{qdq}: calibrated from another checkpoint than {fp32.name}; recalibrate")
            files["qdq_onnx"] = _take(qdq, stage / f"{name}_qdq.onnx", output.parent)
            calib_info = {"method": (qmeta.get("calibration") or {}).get("method"), "source": str(qdq),
                          "images_sha1": (qmeta.get("calibration") or {}).get("images_sha1")}
        if calib_cache is not None:
            check_cache_against_onnx(calib_cache, fp32)  # names must match the FP32 export
            files["cache"] = _take(calib_cache, stage / f"{name}.cache", output.parent)
            calib_info = calib_info or {"source": str(calib_cache)}
        route = "qdq" if "qdq_onnx" in files and int8_route == "qdq" else "cache"
        if route == "cache" and "cache" not in files:
            raise DeepLabEdgeError("--int8-route cache needs a calibration cache (--calib-cache or --calib-data)")

    engine_file = stage / output.name
    eng_onnx = files["qdq_onnx"] if route == "qdq" else fp32
    common = dict(shapes=prof, fp16=fp16, int8=int8, route=route, workspace_mb=workspace_mb, dla_core=dla_core,
                  gpu_fallback=gpu_fallback)
    input_name = inp.name
    # the script runs from the bundle's folder: the timing cache as seen from there
    tc = os.path.relpath(os.path.abspath(timing_cache), os.path.abspath(output.parent)) if timing_cache else None
    cmd_kw = dict(common, timing_cache=tc,
                  cache=files["cache"].name if "cache" in files else None)
    trtexec = trtexec_command(onnx=eng_onnx.name, engine=output.name, input_name=input_name, **cmd_kw)
    trtexec11 = (trtexec_command(onnx=eng_onnx.name, engine=output.name, input_name=input_name, trt_major_version=11,
                                 **cmd_kw) if route != "cache" else None)
    de_cmd = build_command(fp32_onnx=fp32.name, qdq_onnx=files["qdq_onnx"].name if "qdq_onnx" in files else None,
                           engine=output.name, **cmd_kw)

    here = this_machine()
    reason = tensorrt_unavailable()
    built = None
    if reason is None:
        log(f"building the TensorRT {here['tensorrt']} engine on {here['gpu']['name']}")
        built = build_engine(onnx=eng_onnx, engine=engine_file, cache=files.get("cache"), timing_cache=timing_cache,
                             **common)
        files["engine"] = engine_file
    manifest = new_manifest(
        engine=file_entry(engine_file) if built else None, engine_built=built is not None,
        not_built_reason=None if built else f"{reason}; run {name}_build_engine.sh on the target",
        tensorrt=here["tensorrt"] if built else None, cuda=here["cuda"] if built else None,
        gpu=here["gpu"] if built else None, jetson=here["jetson"] if built else None,
        built_on=here, precision={"fp16": fp16, "int8": int8, "int8_route": route,
                                  "strongly_typed": (built or {}).get("strongly_typed")},
        dla_core=dla_core, gpu_fallback=gpu_fallback, workspace_mb=workspace_mb,
        input={"name": input_name, "shapes": prof.as_dict()}, onnx_fp32=file_entry(fp32),
        onnx_qdq=file_entry(files.get("qdq_onnx")), calibration_cache=file_entry(files.get("cache")),
        calibration=calib_info, checkpoint=checkpoint or {"sha256": meta.get("checkpoint_sha256")},
        arch=meta.get("arch"), num_classes=meta["num_classes"], classes=meta.get("classes"),
        preprocess=meta["preprocess"], build_s=(built or {}).get("build_s"),
        build={"deeplab_edge": de_cmd, "trtexec": trtexec, "trtexec_trt11": trtexec11})
    man = stage / manifest_path(output.name).name
    import json

    man.write_text(json.dumps(manifest, indent=1, default=str))
    files["manifest"] = man
    script = stage / f"{name}_build_engine.sh"
    script.write_text(build_script(manifest))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    files["script"] = script
    files["_manifest"] = manifest
    return files
