"""``export``, ``calibrate`` and ``build``: ONNX, INT8 calibration and the TensorRT engine or its bundle."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource
from rich.table import Table

from ..errors import DeepLabEdgeError
from .app import main
from .common import (InputPath, CALIB_METHODS, COUNT, NONNEG, SIDE, THREADS, Finite, console, out, output_option,
                     output_stride_option, pct, print_json, progress_bar)

# ----------------------------------------------------------------------------- export

@main.command("export")
@click.option("--weights", type=InputPath(path_type=Path), required=True, help="Checkpoint (.pt/.pth).")
@click.option("--arch", help="Architecture of a plain state dict (guessed from its keys if omitted).")
@output_option("file", "ONNX file to write.", required=True, example="model.onnx")
@click.option("--data", type=InputPath(path_type=Path), required=True,
              help="Images for the parity check (dataset folder, image folder or file).")
@click.option("--parity-images", default=4, type=COUNT, show_default=True,
              help="How many images the parity check uses.")
@click.option("--opset", default=17, type=click.IntRange(17, 20), show_default=True,
              help="ONNX opset (17 to 20: the newest PyTorch's TorchScript-based exporter writes).")
@click.option("--dynamic", default="", help="Dynamic axes, comma separated: batch, hw.")
@click.option("--input-size", type=SIDE, help="Input side (default: the checkpoint's preprocessing).")
@output_stride_option()
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True,
              help="PyTorch's TorchScript-based exporter (fast) or the torch.export-based one.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim.")
@click.option("--fp16", is_flag=True, help="Export in float16 (weights, input, output); parity still against fp32.")
@click.option("--emit", type=click.Choice(["logits", "labels"]), default="logits", show_default=True,
              help="What the graph outputs: the class logits, or the label map (ArgMax inside the graph: 1 or 4 "
                   "bytes per pixel to copy off the device instead of 4 x classes; no CRF or --scales on it).")
@click.option("--labels-dtype", type=click.Choice(["int32", "uint8"]), default="int32", show_default=True,
              help="With --emit labels: the label map's type.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export_cmd(weights, arch, output, data, parity_images, opset, dynamic, input_size, output_stride, exporter,
               no_simplify, fp16, emit, labels_dtype, as_json) -> None:
    """Export a checkpoint to ONNX: checker-clean, simplified, with deeplab-edge metadata, and
    checked against PyTorch with ONNX Runtime on real images (fails below 99.9% argmax agreement)."""
    from ..checkpoint import load_checkpoint
    from ..data.datasets import open_dataset
    from ..export import export_onnx

    _refuse_unused(click.get_current_context(), {"labels_dtype": ("--labels-dtype", emit == "labels",
                                                                  "--emit labels")})
    loaded = load_checkpoint(weights, arch=arch, output_stride=output_stride)
    ds = open_dataset(data).subset(parity_images)
    images = [ds.load(i)[1] for i in range(len(ds))]
    dyn = [d.strip() for d in dynamic.split(",") if d.strip()]
    with console.status("exporting..."):
        rep = export_onnx(loaded, output, images, input_size=input_size, opset=opset, dynamic=dyn,
                          exporter=exporter, simplify=not no_simplify, fp16=fp16, output_kind=emit,
                          labels_dtype=labels_dtype)
    if as_json:
        print_json(rep.as_dict())
        return
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in rep.steps_s.items())
    out.print(f"[green]wrote[/] {rep.path} ({rep.bytes / 1e6:.1f} MB, opset {rep.opset}, input "
              f"{'x'.join(map(str, rep.input_shape))}, {rep.nodes_exported} -> {rep.nodes_final} nodes; {steps})\n"
              f"parity on {rep.parity['images']} real images ({rep.parity['provider']}): argmax agreement "
              f"{100 * rep.parity['agreement']:.3f}%, max |logit diff| {rep.parity['max_abs_diff']:.2e}")
    if rep.labels:
        out.print(f"label output ({rep.labels['dtype']}, {rep.labels['bytes_per_pixel']} byte(s) per pixel): the "
                  f"arg-max of PyTorch's logits on {100 * rep.labels['agreement']:.3f}% of pixels "
                  f"({rep.labels['ties']} ties)")

# ----------------------------------------------------------------------------- calibrate

def _refuse_unused(ctx: click.Context, options: dict[str, tuple[str, bool, str]]) -> None:
    """An option typed where it does nothing (e.g. --percentile with --method minmax) is refused: the run
    would otherwise be reported as if it had been used."""
    for name, (flag, used, needs) in options.items():
        if not used and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            raise DeepLabEdgeError(f"{flag} applies only with {needs}; drop it, or add {needs}")


def _trt_version(ctx, param, value):
    """--trt-version checked when parsed (before an export or any calibration work)."""
    from ..calibration.cache import check_trt_version

    try:
        check_trt_version(value)
    except DeepLabEdgeError as e:
        raise click.BadParameter(str(e).removeprefix("--trt-version "), ctx, param) from None
    return value


@main.command("calibrate")
@click.option("--weights", type=InputPath(path_type=Path), help="Checkpoint: exported to OUT/model_fp32.onnx first.")
@click.option("--onnx", "onnx_path", type=InputPath(path_type=Path), help="An FP32 ONNX from `deeplab-edge export`.")
@click.option("--data", type=InputPath(path_type=Path), required=True,
              help="Calibration images: a dataset folder (VOC/Cityscapes/CamVid) or a plain image folder.")
@click.option("--num", default=256, type=COUNT, show_default=True,
              help="Images to use (the first N in sorted order; fewer are used, with a warning, if fewer exist).")
@click.option("--method", type=click.Choice(CALIB_METHODS), default="mse",
              show_default=True,
              help="How activation ranges are chosen: from each tensor's histogram (entropy, minmax, percentile, "
                   "mse) or by the output error of the Convs reading it (search; on the first --search-num images).")
@click.option("--no-bias-correction", is_flag=True,
              help="Keep the Convs' biases: by default the QDQ model's biases take back the mean shift the int8 "
                   "weights cause on the calibration images (the TensorRT cache cannot carry it).")
@click.option("--search-num", default=16, type=COUNT, show_default=True,
              help="Images the search method runs on (each costs ~20 forward passes of the Convs).")
@click.option("--percentile", default=99.99, type=Finite(50, 100, min_open=True), show_default=True,
              help="Percentile for --method percentile.")
@click.option("--weight-bits", type=click.Choice(["8", "7"]), default="8", show_default=True,
              help="Weights of the QDQ model: 8 (TensorRT's int8), or 7 (int8 values within +-63) for OpenVINO on "
                   "an x86 CPU without VNNI, whose int8 dot products saturate in int16 with 8-bit weights.")
@click.option("--keep-float", "keep_float_top", default=0, type=NONNEG, show_default=True,
              help="Leave the K most sensitive Convs in float (runs the sensitivity analysis).")
@click.option("--keep-float-layer", "keep_float", multiple=True,
              help="A Conv node name to leave in float (repeatable).")
@click.option("--sensitivity", is_flag=True, help="Rank every Conv by the mIoU cost of quantizing it alone.")
@click.option("--sensitivity-data", type=InputPath(path_type=Path, exists=True),
              help="Labelled held-out data for the sensitivity analysis (default: --data beyond the first --num).")
@click.option("--sensitivity-num", type=COUNT, help="Images of the held-out split to use.")
@click.option("--sensitivity-mode", type=click.Choice(["float-one", "quantize-one"]), default="float-one",
              show_default=True, help="Score each Conv by the mIoU regained when only it stays float, or lost "
              "when only it is quantized.")
@click.option("--max-drop", type=Finite(0, 100), help="Accuracy budget, mIoU points on --val-data: Convs go back to "
              "float, most sensitive first, until the QDQ model's drop from FP32 is within it (budget.json says "
              "which and what it cost).")
@click.option("--val-data", type=InputPath(path_type=Path, exists=True),
              help="Labelled held-out images for --max-drop (none of them a calibration image; default: the "
                   "--data images beyond the first --num, when labelled).")
@click.option("--val-num", type=COUNT, help="Use the first N images of --val-data.")
@click.option("--min-agreement", type=Finite(0, 1, min_open=True),
              help="With --max-drop: also keep the pixel agreement with FP32 at least this (e.g. 0.99).")
@click.option("--max-float", default=8, type=COUNT, show_default=True,
              help="With --max-drop: at most this many Convs go back to float.")
@click.option("--trt-version", default="8.6.1", show_default=True, callback=_trt_version,
              help="TensorRT version named in the cache header (8.5 to 10.x: TensorRT 11 reads no cache).")
@click.option("--no-cpu-int8", is_flag=True, help="Skip the ONNX Runtime CPU INT8 model.")
@output_option("dir", "Output folder (created if missing; all files land together or none does).", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def calibrate_cmd(weights, onnx_path, data, num, method, no_bias_correction, search_num, percentile, weight_bits,
                  keep_float_top,
                  keep_float, sensitivity, sensitivity_data, sensitivity_num, sensitivity_mode, max_drop, val_data,
                  val_num, min_agreement, max_float, trt_version, no_cpu_int8, output, as_json) -> None:
    """INT8 post-training calibration on real images.

    \b
    Writes to OUTPUT/:
      calibration.cache     TensorRT calibration cache (TensorRT 8.5-10, trtexec --calib)
      model_qdq.onnx        TensorRT QDQ model (symmetric s8; TensorRT 10+/11); `eval --onnx`
                            measures it by exact fake-quant emulation
      model_cpu_int8.onnx   ONNX Runtime CPU INT8 model (u8 activations, s8 weights)
      ranges.json           every tensor's max|x| and chosen threshold
      sensitivity.json      with --sensitivity or --keep-float K: Convs ranked by mIoU cost
      budget.json           with --max-drop P [--val-data DIR]: each step, the Convs kept float
    Same inputs and method give byte-identical files."""
    from ..calibration.workflow import CalibrationConfig, calibrate_folder, check_one_model

    check_one_model(weights, onnx_path)
    _refuse_unused(click.get_current_context(), {"percentile": ("--percentile", method == "percentile",
                                                                  "--method percentile"),
                                                 "search_num": ("--search-num", method == "search", "--method search"),
                                                 "sensitivity_num": ("--sensitivity-num", bool(
                                                     sensitivity or sensitivity_data or keep_float_top),
                                                     "--sensitivity or --keep-float K"),
                                                 "val_num": ("--val-num", max_drop is not None, "--max-drop P"),
                                                 "max_float": ("--max-float", max_drop is not None, "--max-drop P")})
    config = CalibrationConfig(num=num, method=method, percentile=percentile, search_num=search_num,
                               bias_correction=not no_bias_correction, weight_bits=int(weight_bits),
                               keep_float=tuple(keep_float),
                               trt_version=trt_version, cpu_int8=not no_cpu_int8, keep_float_top=keep_float_top,
                               sensitivity=sensitivity, sensitivity_data=sensitivity_data,
                               sensitivity_num=sensitivity_num, sensitivity_mode=sensitivity_mode, max_drop=max_drop,
                               val_data=val_data, val_num=val_num, min_agreement=min_agreement, max_float=max_float)
    with progress_bar() as prog:
        def progress(desc: str, total: int):
            task = prog.add_task(desc, total=total)
            return lambda: prog.advance(task)

        rep = calibrate_folder(output, data, config, weights=weights, onnx_path=onnx_path, progress=progress,
                               exporting=lambda: console.status("exporting FP32 ONNX..."))
    _print_calibration(rep, as_json)
    if "budget" in rep and not rep["budget"]["met"]:  # the files are written; a script can tell the budget failed
        console.print(f"[bold red]the {rep['budget']['max_drop_points']:g}-point budget is not met[/] with "
                      f"{rep['budget']['float_conv_count']} Convs in float; allow more with --max-float, a larger "
                      "--max-drop, or another --method", highlight=False)
        raise SystemExit(1)


def _print_calibration(rep: dict, as_json: bool) -> None:
    for w in rep.get("warnings") or []:  # every calibration warning, chosen by kind (alerts.KINDS)
        console.print(f"[yellow]warning:[/] {w['message']}", highlight=False, soft_wrap=True)
    if as_json:
        print_json(rep)
        return
    if "sensitivity_top" in rep:
        gain = rep["sensitivity_mode"] == "float-one"
        t = Table(title=f"most sensitive Convs ({rep['sensitivity_mode']}; FP32 mIoU "
                        f"{pct(rep['sensitivity_fp32_miou'])}%, all-INT8 {pct(rep['sensitivity_int8_miou'])}%)")
        t.add_column("rank", justify="right")
        t.add_column("Conv")
        t.add_column("mIoU %", justify="right")
        t.add_column("gain if float (points)" if gain else "cost if quantized (points)", justify="right")
        for i, r in enumerate(rep["sensitivity_top"], 1):
            t.add_row(str(i), r["layer"], pct(r["miou"]), f"{100 * r['score']:.2f}")
        out.print(t)
    if "budget" in rep:
        b = rep["budget"]
        out.print(f"[{'green' if b['met'] else 'bold red'}]budget:[/] {b['says']} (FP32 {pct(b['fp32_miou'])}%, "
                  f"INT8 {pct(b['miou'])}%)", highlight=False)
    out.print(f"[green]calibrated[/] {rep['images']} images, method {rep['method']}: {rep['tensors']} tensor scales, "
              f"{rep['quantized_convs']} Convs quantized, {rep.get('weight_bits', 8)}-bit weights")
    for key in ("cache", "qdq_onnx", "cpu_int8_onnx", "ranges"):
        if key in rep:
            out.print(f"  {key:14s} {rep[key]}")
    if "cpu_int8" in rep:
        c = rep["cpu_int8"]
        out.print(f"  CPU INT8: ONNX Runtime {c['ort_calibration']} calibration, "
                  f"{'7' if c['reduce_range'] else '8'}-bit weights ({c['why']}); this CPU's int8 kernels agree with "
                  f"its exact arithmetic on {pct(c['kernel_agreement'])}% of pixels", highlight=False)


# ----------------------------------------------------------------------------- layerwise

@main.command("layerwise")
@click.argument("calib_dir", type=InputPath(path_type=Path))
@click.option("--data", type=InputPath(path_type=Path), required=True,
              help="Held-out images (a dataset or image folder; none of them may have calibrated the model).")
@click.option("--num-images", "num", default=16, type=COUNT, show_default=True, help="Images to compare on.")
@click.option("--fp32", type=InputPath(path_type=Path),
              help="The FP32 ONNX the model was calibrated from (default: CALIB_DIR/model_fp32.onnx).")
@click.option("--threads", type=THREADS, help="ONNX Runtime intra-op threads (default: all cores).")
@output_option("dir", "Write layerwise.json and layerwise.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def layerwise_cmd(calib_dir, data, num, fp32, threads, output, as_json) -> None:
    """Where the INT8 error comes from: every Conv output of CALIB_DIR's QDQ model (a
    `calibrate -o` folder) against the FP32 model, on held-out images, both run by ONNX Runtime
    with those tensors exposed: SQNR, cosine, largest error as a share of the tensor's range,
    ranked worst first (with CALIB_DIR's sensitivity ranking beside it, when it has one)."""
    from ..calibration.layerwise import layerwise_folder, plot_layer_errors
    from ..outputs import staged_dir

    with progress_bar() as prog:
        task = prog.add_task("comparing Conv outputs", total=num)
        rep = layerwise_folder(calib_dir, data, fp32=fp32, num=num, threads=threads,
                               on_image=lambda: prog.advance(task))
    if output:
        with staged_dir(Path(output)) as stage:
            (stage / "layerwise.json").write_text(json.dumps(rep, indent=1, default=str))
            plot_layer_errors(rep, stage / "layerwise.png")
        rep["files"] = {"json": str(Path(output) / "layerwise.json"), "png": str(Path(output) / "layerwise.png")}
    if as_json:
        print_json(rep)
        return
    t = Table(title=f"INT8 error by layer, worst SQNR first ({rep['images']} images of {data}; {rep['convs']} Convs)")
    for col in ("rank", "Conv", "depth", "SQNR dB", "added dB", "cosine", "max err / range", "sensitivity rank"):
        t.add_column(col, justify="left" if col == "Conv" else "right")
    rows = {r["layer"]: r for r in rep["layers"]}
    for i, name in enumerate(rep["ranked"][:15], 1):
        r = rows[name]
        t.add_row(str(i), name, str(r["depth"]), "exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.1f}",
                  "-" if r["sqnr_drop_db"] is None else f"{r['sqnr_drop_db']:+.1f}",
                  "-" if r["cosine"] is None else f"{r['cosine']:.4f}",
                  "-" if r["max_error_of_range"] is None else f"{r['max_error_of_range']:.3f}",
                  str(r["sensitivity_rank"] or "-"))
    out.print(t)
    lg = rep["logits"]
    out.print(f"logits: SQNR {'exact' if lg['sqnr_db'] is None else format(lg['sqnr_db'], '.1f') + ' dB'}, cosine "
              f"{lg['cosine']:.4f}")
    for v in (rep.get("files") or {}).values():
        out.print(f"[green]wrote[/] {v}")


# ----------------------------------------------------------------------------- build

@main.command("build")
@click.option("--weights", type=InputPath(path_type=Path), help="deeplab-edge checkpoint: exported to ONNX first.")
@click.option("--onnx", "onnx_path", type=InputPath(path_type=Path),
              help="Or an FP32 ONNX from `deeplab-edge export` (e.g. a bundle's NAME_fp32.onnx).")
@click.option("--data", type=InputPath(path_type=Path), help="Real images for the export's parity check.")
@click.option("--int8", is_flag=True, help="INT8 engine (needs --calib-data, --calib-cache or --qdq).")
@click.option("--fp16", is_flag=True, help="FP16 for the layers not in INT8 (or an FP16 engine without --int8).")
@click.option("--calib-data", type=InputPath(path_type=Path, exists=True), help="Calibrate here on these images.")
@click.option("--calib-cache", type=InputPath(path_type=Path), help="A TensorRT calibration cache (TensorRT 8.5-10).")
@click.option("--qdq", type=InputPath(path_type=Path), help="A TensorRT QDQ model from `deeplab-edge calibrate`.")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="mse",
              show_default=True, help="With --calib-data.")
@click.option("--calib-num", default=256, type=COUNT, show_default=True, help="With --calib-data: images (at most).")
@click.option("--keep-float", "keep_float_top", default=0, type=NONNEG, show_default=True,
              help="With --calib-data: leave the K most sensitive Convs in float (sensitivity analysis).")
@click.option("--int8-route", type=click.Choice(["qdq", "cache"]), default="qdq", show_default=True,
              help="Explicit quantization from the QDQ model (TensorRT 8.5+, the only one in 11) or the "
                   "calibration cache through an IInt8EntropyCalibrator2 (TensorRT 8.5-10, deprecated in 10.1).")
@click.option("--shapes", help="Optimization profile min,opt,max as NxCxHxW each (default: 1x3xHxW of the model).")
@click.option("--dla", "dla_core", type=NONNEG, help="Build for DLA core N (Jetson Xavier/Orin).")
@click.option("--allow-gpu-fallback", is_flag=True, help="With --dla: run layers DLA cannot on the GPU.")
@click.option("--workspace", "workspace_mb", type=COUNT, help="Builder workspace limit, MB.")
@click.option("--timing-cache", type=InputPath(path_type=Path), help="Read and update this timing cache.")
@click.option("--max-drop", type=Finite(0, 100),
              help="With --calib-data: INT8 within this many mIoU points of FP32 on --val-data (see `calibrate`).")
@click.option("--val-data", type=InputPath(path_type=Path, exists=True), help="Labelled held-out images for --max-drop (default: the --calib-data images beyond --calib-num).")
@click.option("--val-num", type=COUNT, help="Use the first N images of --val-data.")
@click.option("--min-agreement", type=Finite(0, 1, min_open=True), help="With --max-drop: a pixel-agreement floor.")
@click.option("--max-float", default=8, type=COUNT, show_default=True,
              help="With --max-drop: at most this many Convs go back to float (FP16 in the engine).")
@click.option("--emit", type=click.Choice(["logits", "labels"]), default="logits", show_default=True,
              help="What the engine outputs: logits, or the label map (ArgMax in the graph; NAME_labels_fp32.onnx / "
                   "NAME_labels_qdq.onnx beside the logit models, the engine built from them).")
@click.option("--labels-dtype", type=click.Choice(["int32", "uint8"]), default="int32", show_default=True,
              help="With --emit labels: the label map's type (int32 is what TensorRT's ArgMax gives).")
@output_option("file", "Engine file, e.g. out/model.engine (the bundle goes beside it).", required=True,
               example="model.engine")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def build_cmd(weights, onnx_path, data, int8, fp16, calib_data, calib_cache, qdq, calib_method, calib_num,
              keep_float_top, int8_route, shapes, dla_core, allow_gpu_fallback, workspace_mb, timing_cache, max_drop,
              val_data, val_num, min_agreement, max_float, emit, labels_dtype, output, as_json) -> None:
    """Checkpoint -> ONNX -> INT8 calibration -> TensorRT engine, with a manifest beside it.

    \b
    Where TensorRT or a CUDA GPU is missing (as on a CPU build machine), it writes the
    deployment bundle instead and says so: NAME_fp32.onnx, NAME_qdq.onnx, NAME.cache,
    NAME.engine.json (manifest) and NAME_build_engine.sh, which builds the engine on the
    target (Jetson or GPU box) with `deeplab-edge build` or `trtexec` and the same flags.
    \b
    INT8: explicit quantization from the QDQ model is the default route (TensorRT 11 accepts
    nothing else); --int8-route cache uses the calibration cache on TensorRT 8.5-10."""
    from ..build import build

    _refuse_unused(click.get_current_context(), {"labels_dtype": ("--labels-dtype", emit == "labels", "--emit labels"),
                                                 "max_float": ("--max-float", max_drop is not None, "--max-drop P")})
    man = build(output=output, weights=weights, onnx=onnx_path, data=data, int8=int8, fp16=fp16, calib_data=calib_data,
                calib_cache=calib_cache, qdq=qdq, calib_method=calib_method, calib_num=calib_num,
                keep_float_top=keep_float_top, int8_route=int8_route, shapes=shapes, dla_core=dla_core,
                gpu_fallback=allow_gpu_fallback, workspace_mb=workspace_mb, timing_cache=timing_cache, emit=emit,
                max_drop=max_drop, val_data=val_data, val_num=val_num, min_agreement=min_agreement,
                max_float=max_float,
                labels_dtype=labels_dtype, log=lambda s: console.print(f"[dim]{s}[/]", highlight=False))
    budget = (man.get("calibration") or {}).get("budget")
    if budget:
        console.print(f"[{'green' if budget['met'] else 'bold red'}]budget:[/] {budget['says']}", highlight=False)
    if as_json:
        print_json(man)
    else:
        for key, path in man["files"].items():
            out.print(f"[green]wrote[/] {path} ({Path(path).stat().st_size / 1e6:.2f} MB)  [dim]{key}[/]")
    if budget and not budget["met"]:  # the bundle is written; a script can tell the budget failed
        raise SystemExit(1)
    if man["engine_built"]:
        out.print(f"engine built with TensorRT {man['tensorrt']} for {man['gpu']['name']} in {man['build_s']:.0f} s")
    else:
        console.print(f"[yellow]the engine itself was not built:[/] {man['not_built_reason']}", highlight=False,
                      soft_wrap=True)
