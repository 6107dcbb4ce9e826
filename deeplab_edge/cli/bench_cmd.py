"""``bench``, ``bench compare``, ``bench kernels`` and ``compare`` (bench on several checkpoints): accuracy against
speed on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.table import Table

from ..errors import DeepLabEdgeError
from .app import main
from .common import (InputPath, MAX_BATCH, CALIB_METHODS, COUNT, NONNEG, THREADS, check_tag, choices, console, emit, int_list, out,
                     output_option, parse_scale_sets, pct, print_json, progress_bar)

# ----------------------------------------------------------------------------- bench

def _engine_map(values: tuple[str, ...]) -> dict[str, Path]:
    engines = {}
    for v in values:
        prec, sep, path = v.partition("=")
        if not sep or prec not in ("fp32", "fp16", "int8") or not path:
            raise DeepLabEdgeError(f"--engine {v!r} is not PRECISION=FILE; give fp32, fp16 or int8 and the engine, "
                                   "e.g. --engine int8=model.engine")
        if not Path(path).is_file():
            raise DeepLabEdgeError(f"--engine {v}: engine file not found; build one with `deeplab-edge build`")
        engines[prec] = Path(path)
    return engines


@main.group("bench", invoke_without_command=True)
@click.option("--weights", type=InputPath(path_type=Path), multiple=True,
              help="deeplab-edge checkpoint (.pt) to benchmark; repeat it (or give a folder of checkpoints) for "
                   "several models in one table and one plot.")
@click.option("--arch", help="Architecture of a plain state dict (guessed from its keys if omitted).")
@click.option("--data", type=InputPath(path_type=Path), help="Labelled dataset folder (VOC, Cityscapes, CamVid).")
@click.option("--dataset", "kind", type=click.Choice(["auto", "voc", "cityscapes", "camvid"]), default="auto",
              show_default=True, help="Dataset layout.")
@click.option("--split", default="val", show_default=True, help="Split name.")
@click.option("--num-images", type=COUNT, help="Use only the first N images.")
@click.option("--backends", default="auto", show_default=True,
              help="auto (what runs well here), all, or a comma-separated list of: " + ", ".join(
                  ["torch-fp32", "torch-fp16", "torch-bf16", "compile-fp32", "compile-fp16", "triton-fp32",
                   "triton-fp16", "ort-fp32", "ort-int8", "ov-fp32", "ov-bf16", "ov-int8", "litert-int8", "qdq-int8", "trt-fp32", "trt-fp16", "trt-int8"]) +
                   ". Those that cannot run are listed as skipped, with the reason.")
@click.option("--crf", "crf_methods", default="none,torch", show_default=True,
              help="CRF options crossed with every backend: none, pydensecrf, torch, triton, window, "
                   "triton-window.")
@click.option("--crf-preset", type=click.Choice(["deeplab-v2", "deeplab-v1"]), default="deeplab-v2",
              show_default=True, help="CRF parameters.")
@click.option("--crf-params", "crf_param_files", type=InputPath(path_type=Path), multiple=True,
              help="CRF parameters from `deeplab-edge crf tune -o FILE` (chosen on held-out images) in place of "
                   "--crf-preset: one file for every model, or one per --weights in the same order.")
@click.option("--batch", "batches", default="1", show_default=True,
              help="Batch sizes of the latency pass (comma-separated, 1-256); 1 is always included.")
@click.option("--iters", default=30, type=COUNT, show_default=True, help="Timed calls per backend and batch size.")
@click.option("--warmup", default=5, type=NONNEG, show_default=True, help="Untimed calls before them.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto (PyTorch backends).")
@click.option("--threads", type=THREADS, help="Intra-op threads for PyTorch and ONNX Runtime (default: all cores).")
@click.option("--calib-data", type=InputPath(path_type=Path, exists=True),
              help="Images to calibrate the INT8 models on (default: held out: the dataset's train split when it "
                   "has one, else --calib-folds folds of the benchmark's images, each scored by models calibrated "
                   "on the others).")
@click.option("--calib-folds", default=3, type=click.IntRange(2, 100), show_default=True,
              help="Without --calib-data or a train split: how many folds.")
@click.option("--calib-on-eval", is_flag=True,
              help="Calibrate on the very images it scores (the INT8 rows are then not held out: flagged).")
@click.option("--calib-num", default=256, type=COUNT, show_default=True, help="Calibration images (at most).")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="mse",
              show_default=True, help="Activation ranges of the TensorRT QDQ model and cache.")
@click.option("--weight-bits", type=click.Choice(["8", "7"]), default="8", show_default=True,
              help="Weights of the QDQ model (qdq-int8, ov-int8): 8 as TensorRT takes it, or 7 (within +-63) for "
                   "OpenVINO on an x86 CPU without VNNI, where 8-bit weights saturate int16 sums.")
@click.option("--engine", "engine_files", multiple=True,
              help="A TensorRT engine for the trt-* backends, as PRECISION=FILE (repeatable).")
@click.option("--scales", "scale_sets", callback=parse_scale_sets, default=("1",), show_default=True, multiple=True,
              help="Test-time input scales, comma-separated: logits averaged over them (latency covers every "
                   "scale); end with +flip to average the mirrored image too (e.g. 0.5,0.75,1,1.25,1.5,1.75+flip). "
                   "Repeat it to cross settings (--scales 1 --scales 0.75,1,1.25+flip). Other than 1, only the "
                   "PyTorch backends run; the others are skipped for that setting.")
@click.option("--flip", is_flag=True, help="Also average the mirrored image's logits, in every --scales setting.")
@click.option("--output-stride", "output_strides", type=click.Choice(["8", "16", "32"]), multiple=True,
              callback=lambda ctx, param, v: tuple(int(x) for x in dict.fromkeys(v)),
              help="Run the checkpoint's weights at this output stride on every backend (the ONNX and INT8 models "
                   "are exported so); 8 is DeepLab-v3's evaluation setting for models trained at 16. Repeat it to "
                   "cross strides (default: each checkpoint's own).")
@click.option("--tflite", type=InputPath(path_type=Path),
              help="A .tflite model for the litert-int8 backend (LiteRT, XNNPACK), e.g. the file the checkpoint was "
                   "imported from: Google's own runtime beside the others.")
@click.option("--emit", "emit", default="logits", show_default=True,
              help="What the ONNX backends (ort-*, qdq-int8) hand the host: logits, labels (the arg-max inside the "
                   "graph, as `export --emit labels`), or logits,labels for both side by side. Every row records "
                   "its output bytes per frame and the host's post-processing time; label rows have no CRF.")
@click.option("--labels-dtype", type=click.Choice(["int32", "uint8"]), default="int32", show_default=True,
              help="With --emit labels: the label map's type.")
@output_option("dir", "Keep the ONNX / INT8 models in this folder and reuse them next time (default: a "
                      "temporary folder).", names=("--artifacts",))
@click.option("--tag", callback=check_tag,
              help="Name of the result files: letters, digits, '.', '_', '-' (default: from this machine's GPU or CPU).")
@output_option("dir", "Folder for bench_<tag>.json, .csv and .png (e.g. bench/results/).")
@click.option("--no-plot", is_flag=True, help="Skip the PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the result document as JSON instead of tables.")
@click.pass_context
def bench_group(ctx, weights, arch, data, kind, split, num_images, backends, crf_methods, crf_preset, crf_param_files,
                batches, iters,
                warmup, device, threads, calib_data, calib_folds, calib_on_eval, calib_num, calib_method, weight_bits,
                engine_files, scale_sets, flip, output_strides, tflite, emit, labels_dtype, artifacts, tag, output, no_plot,
                as_json) -> None:
    """Accuracy against speed of every model x backend x CRF option x test-time setting on this
    machine, in one run.

    \b
    Each cell: mIoU (per-class IoU in the JSON) on the dataset; model latency p50/p90/p99
    and throughput per batch size (warm-up first, every call synchronised); CRF time; peak
    memory; model file size; on a Jetson, power and energy per image (jetson-stats, else tegrastats).
    Data loading, preprocessing and post-processing are timed apart (harness overhead).
    The table is sorted by latency (model p50 at batch 1 + CRF median) with the
    Pareto-optimal cells marked; JSON, CSV and a PNG plot go to -o DIR. With several
    models (--weights repeated, or a folder), output strides or --scales settings, every row
    names its model (architecture, parameters, GFLOPs at its input size) and setting, and
    mIoU change and speed-up are against the first model's single-scale row.

    \b
    Subcommands:
      deeplab-edge bench compare A.json B.json ...   merge several machines' results
      deeplab-edge bench kernels                     fused-ASPP micro-benchmarks"""
    if ctx.invoked_subcommand is not None:
        return
    from ..bench.harness import CRF_CHOICES, SHOWN_CALIBRATION_WARNINGS
    from ..bench.matrix import Variant, model_files
    from ..bench.report import default_tag, device_label, int8_runtimes, write_results
    from ..crf import load_crf_params

    if not weights or data is None:
        raise DeepLabEdgeError("bench needs --weights FILE and --data DIR (see `deeplab-edge bench --help`)")
    files = model_files(weights)
    if tflite is not None and not Path(tflite).is_file():
        raise DeepLabEdgeError(f"--tflite {tflite}: {'is a folder' if Path(tflite).is_dir() else 'file not found'}; "
                               "pass the path of a .tflite model")
    if (calib_data is not None or calib_on_eval) and \
            ctx.get_parameter_source("calib_folds") == ParameterSource.COMMANDLINE:
        raise DeepLabEdgeError(f"--calib-folds splits the benchmark's images when there is nothing else to calibrate "
                               f"on; drop it or {'--calib-data' if calib_data is not None else '--calib-on-eval'}")
    bs = sorted(set(int_list(batches, "--batch", MAX_BATCH)) | {1})
    outputs = choices(emit, ["logits", "labels"], "--emit output")
    if "labels" not in outputs and ctx.get_parameter_source("labels_dtype") == ParameterSource.COMMANDLINE:
        raise DeepLabEdgeError("--labels-dtype is the type of the label models; add --emit labels (or "
                               "logits,labels) or drop it")
    crfs = choices(crf_methods, list(CRF_CHOICES), "CRF option")
    engines = _engine_map(engine_files)
    if crf_param_files and crfs == ["none"]:
        raise DeepLabEdgeError("--crf-params gives a CRF's parameters, and --crf is none; add a CRF (e.g. --crf "
                               "none,torch) or drop --crf-params")
    if crf_param_files and ctx.get_parameter_source("crf_preset") == ParameterSource.COMMANDLINE:
        raise DeepLabEdgeError("--crf-params replaces --crf-preset; give one of them")
    crf_params = [load_crf_params(f) for f in crf_param_files]
    variants = [Variant(s, scales, flip or set_flip) for s in (output_strides or (None,))
                for scales, set_flip in scale_sets]
    result = _run_matrix(files, data, kind, split, num_images, backends, tflite, variants, crf_params, device,
                         dict(crf_methods=crfs, crf_preset=crf_preset, batches=bs, warmup=warmup, iters=iters,
                              device=device, arch=arch, threads=threads, calib_data=calib_data,
                              calib_folds=calib_folds, calib_on_eval=calib_on_eval, calib_num=calib_num,
                              calib_method=calib_method, calib_weight_bits=int(weight_bits), engines=engines, tflite=tflite, emit=tuple(dict.fromkeys(outputs)),
                              labels_dtype=labels_dtype,
                              settings={"split": split, "requested": backends}),
                         artifacts)
    result["int8_runtimes"] = int8_runtimes(result["rows"])
    env = result["environment"]
    written = write_results(result, Path(output), tag or default_tag(env), png=not no_plot) if output else {}
    if as_json:
        print_json({**result, **({"files": written} if written else {})})
        return
    _bench_table(result, title=f"{result['images']} images of {data} on {device_label(env)}")
    _print_notes(result, SHOWN_CALIBRATION_WARNINGS)
    for v in written.values():
        out.print(f"[green]wrote[/] {v}")


def _run_matrix(files: list[Path], data: Path, kind: str, split: str, num_images: int | None, backends: str,
                tflite: Path | None, variants: list | None, crf_params: list, device: str, options: dict[str, Any],
                artifacts: Path | None) -> dict[str, Any]:
    """The models x variants (None: single scale at each checkpoint's output stride) on the dataset with a
    progress bar: one result document."""
    from ..bench.harness import BenchConfig, select_backends
    from ..bench.matrix import Variant, run_models
    from ..bench.power import power_sampler
    from ..data.datasets import open_dataset
    from ..interrupts import temp_dir
    from ..runtime import resolve_device

    chosen, skipped = select_backends(backends, resolve_device(device), tflite=tflite is not None)
    if not chosen:
        raise DeepLabEdgeError("no backend can run on this machine with these options: " + "; ".join(
            f"{s['backend']} ({s['reason']})" for s in skipped) + "; pick others with --backends (see "
            "`deeplab-edge doctor`)")
    config = BenchConfig(backends=chosen, **options)
    ds = open_dataset(data, kind, split).subset(num_images)
    with temp_dir("deeplab-edge-bench-") as tmp, progress_bar() as prog:
        state: dict[str, Any] = {}

        def progress(desc: str, total: int):
            if "task" in state:
                prog.remove_task(state["task"])
            state["task"] = prog.add_task(desc, total=total)
            return lambda _item: prog.advance(state["task"])

        return run_models(files, ds, config, variants=variants or [Variant()], crf_params=crf_params, work=Path(artifacts) if artifacts else Path(tmp),
                          power=power_sampler(), skipped=skipped, progress=progress,
                          log=lambda s: console.print(f"[dim]{s}[/]", highlight=False))


def _print_notes(result: dict[str, Any], shown_warnings: tuple[str, ...]) -> None:
    """What was skipped, where INT8 was calibrated, and the calibration warnings worth a user's attention (each
    once, for a result of several runs)."""
    runs = len(result.get("runs") or [result])
    for s in result["skipped"]:
        where = f" ({', '.join(s['runs'])})" if s.get("runs") and len(s["runs"]) < runs else ""
        console.print(f"[yellow]skipped {s['backend']}{where}:[/] {s['reason']}", highlight=False, soft_wrap=True)
    for s in result["skipped_crf"]:
        console.print(f"[yellow]skipped CRF {s['crf']}:[/] {s['reason']}", highlight=False, soft_wrap=True)
    lines: dict[str, None] = {}
    for run in result.get("runs") or [result]:
        cal = (run.get("artifacts") or {}).get("calibration") or {}
        if cal.get("says"):
            lines[f"[dim]{cal['says']}[/]"] = None
        if cal.get("note"):
            lines[f"[bold yellow]warning:[/] {cal['note']}"] = None
        for w in cal.get("warnings") or []:
            if w["kind"] in shown_warnings:
                where = f"{run['model']} {run['variant']}: " if "variant" in run else ""
                lines[f"[bold yellow]warning:[/] {where}{w['message']}"] = None
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    _print_int8_ranking(result)


def _print_int8_ranking(result: dict[str, Any]) -> None:
    """One line per model, setting (and machine): the fastest INT8 runtime measured, then the others."""
    ranked = result.get("int8_runtimes") or []
    for first in (e for e in ranked if e["rank"] == 1):
        others = [e for e in ranked if (e["device"], e["model"], e["variant"]) ==
                  (first["device"], first["model"], first["variant"]) and e["rank"] > 1]
        if not others:
            continue
        where = " ".join(str(x) for x in (first["device"], first["model"], first["variant"]) if x)
        rest = ", ".join(f"{e['backend']} {e['latency_ms']:.1f} ms ({e['times_fastest']:.2f}x)" for e in others)
        console.print(f"fastest INT8 runtime{' for ' + where if where else ''}: [bold]{first['backend']}[/] "
                      f"{first['latency_ms']:.1f} ms, mIoU {pct(first['miou'])}%; then {rest} (same calibration)",
                      highlight=False, soft_wrap=True)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pixels(r: dict[str, Any]) -> str:
    """'pixels %': the share of pixels labelled as the baseline row labels them (and, for ov-int8, as qdq-int8)."""
    from ..bench.report import agreement_pct

    a = agreement_pct(r)
    cell = f"{a['pixels_as_baseline_pct']:.2f}" if a["pixels_as_baseline_pct"] is not None else "-"
    if a["pixels_as_qdq_int8_pct"] is not None:
        cell += f" (qdq {a['pixels_as_qdq_int8_pct']:.2f})"
    return cell


def _bench_table(result: dict[str, Any], title: str) -> None:
    from ..bench.report import row_name

    rows = sorted(result["rows"], key=lambda r: (not r.get("latency_is_speed", True), r["latency_ms"] or 0))
    merged = result.get("merged", False)
    several = len({(r.get("model"), r.get("variant")) for r in rows}) > 1
    batch_sizes = sorted({b["batch"] for r in rows for b in r["batches"]})
    power = any(b.get("power_w") for r in rows for b in r["batches"])
    t = Table(title=title)
    cols = (["device"] if merged else []) + (["model", "setting", "GFLOPs/pass"] if several else []) + ["backend", "CRF", "mIoU %", "Δ pts", "pixels %", "latency ms", "speed-up",
                                             "model p50/p90/p99 ms", "CRF ms"] + \
        [f"img/s b{b}" for b in batch_sizes] + ["out KB", "host ms", "peak MB", "file MB"] + (["W", "mJ/img"] if power else []) + ["Pareto"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("device", "model", "setting", "backend", "CRF") else "right")
    for r in rows:
        by_b = {b["batch"]: b for b in r["batches"]}
        b1 = by_b.get(1)
        speed = r.get("latency_is_speed", True)
        mem = r["memory"].get("cuda_peak_allocated_mb") or r["memory"].get("peak_rss_mb")
        info = r.get("model_info") or {}
        cells = ([r["device"]] if merged else []) + ([r.get("model", "?"), r.get("variant", ""),
                                                      f"{info['gflops']:.1f}" if info.get("gflops") else "-"]
                                                     if several else []) + [
            row_name(r), r["crf"], pct(r["miou"]), f"{r.get('miou_delta_points', 0):+.2f}", _pixels(r),
            f"{r['latency_ms']:.1f}" if speed and r["latency_ms"] else "emulated",
            f"{r['speedup']:.2f}x" if r.get("speedup") else "-",
            "/".join(_ms(b1.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms")) if b1 and speed else "-",
            f"{r['crf_ms']['p50']:.0f}" if r.get("crf_ms") else "-"]
        cells += [_ms(by_b[b].get("images_per_s")) if b in by_b and speed else "-" for b in batch_sizes]
        cells += [f"{r['output_bytes_per_frame'] / 1e3:.0f}" if r.get("output_bytes_per_frame") else "-",
                  _ms(r.get("host_postprocess_ms")), f"{mem:.0f}" if mem else "-", f"{r['file_mb']:.1f}"]
        if power:
            cells += [f"{b1['power_w']:.1f}" if b1 and b1.get("power_w") else "-",
                      f"{b1['energy_mj_per_image']:.0f}" if b1 and b1.get("energy_mj_per_image") else "-"]
        cells.append("[bold green]★[/]" if r.get("pareto") else "")
        t.add_row(*cells)
    out.print(t)
    if not merged:
        h = rows[0].get("harness_ms") or {}
        parts = [f"{k} {v['p50']:.1f} ms" for k, v in h.items() if v]
        out.print(f"[dim]harness overhead per image, not in the latencies above (median, first backend): "
                  f"{', '.join(parts)}. Latency = model p50 at batch 1 + CRF median. 'out KB': what the model hands "
                  "the host per frame; 'host ms': the host's median from there to the label map (arg-max, the "
                  "image's size) without a CRF. 'emulated': the TensorRT QDQ model run as fake-quant arithmetic "
                  "gives the INT8 engine's accuracy, not its speed. 'pixels %': labelled as the first row without "
                  "a CRF labels them (ov-int8: also as qdq-int8, the same file).[/]")


@bench_group.command("compare")
@click.argument("results", nargs=-1, required=True, type=InputPath(path_type=Path))
@click.option("--tag", default="compare", show_default=True, callback=check_tag, help="Name of the merged files.")
@output_option("dir", "Folder for the merged JSON, CSV and PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the merged document as JSON.")
def bench_compare(results, tag, output, as_json) -> None:
    """Merge result files from several machines (e.g. a desktop GPU and a Jetson Orin)
    into one table and one plot; the Pareto front is recomputed over all of them."""
    from ..bench.report import check_not_outputs, int8_runtimes, load_result, merge, write_results

    if output:  # before reading anything: an input that the merged files would replace
        check_not_outputs(results, Path(output), tag)
    if len(results) < 2:
        console.print("[yellow]note:[/] one result file: nothing to merge, showing it alone", highlight=False)
    merged = merge([(str(p), load_result(p)) for p in results])
    merged["int8_runtimes"] = int8_runtimes(merged["rows"])
    if not merged["same_data"]:
        console.print("[yellow]warning:[/] the files measured different data (or numbers of images): their mIoU "
                      "columns are not comparable", highlight=False)
    files = write_results(merged, Path(output), tag) if output else {}
    if as_json:
        print_json({**merged, **({"files": files} if files else {})})
        return
    _bench_table(merged, title=f"{len(merged['rows'])} cells from {len(merged['sources'])} machines")
    _print_int8_ranking(merged)
    for k, v in files.items():
        out.print(f"[green]wrote[/] {v}")



# ----------------------------------------------------------------------------- compare: bench's thin alias

@main.command("compare")
@click.argument("models", nargs=-1, required=True, type=InputPath(path_type=Path))
@click.option("--data", type=InputPath(path_type=Path), required=True, help="Labelled dataset folder.")
@click.option("--num-images", type=COUNT, help="Evaluate only the first N images.")
@click.option("--warmup", default=2, type=NONNEG, show_default=True, help="Untimed calls per model first.")
@click.option("--iters", default=30, type=COUNT, show_default=True, help="Timed calls per model.")
@click.option("--threads", type=THREADS, help="Intra-op threads for PyTorch and ONNX Runtime (default: all cores).")
@output_option("file", "Write the result document (bench's format) as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def compare_cmd(models, data, num_images, warmup, iters, threads, output, as_json) -> None:
    """Several checkpoints on the same images: `bench` with PyTorch FP32 only and no CRF.

    \b
    deeplab-edge compare A.pt B.pt --data DIR
      = deeplab-edge bench --weights A.pt --weights B.pt --data DIR --backends torch-fp32 --crf none
    A .tflite beside one checkpoint adds LiteRT (bench --tflite F --backends torch-fp32,litert-int8).
    For INT8, TensorRT, CRF or test-time scales, run `deeplab-edge bench` itself: it exports and
    quantizes the checkpoints; an ONNX file alone is scored by `deeplab-edge eval --onnx FILE`."""
    from ..bench.matrix import model_files

    paths = [Path(m) for m in models]
    onnx = [p for p in paths if p.suffix.lower() == ".onnx"]
    if onnx:
        raise DeepLabEdgeError(f"{onnx[0]}: compare runs `bench`, which exports and quantizes checkpoints itself; "
                               "pass the checkpoint the ONNX came from, or score the file with `deeplab-edge eval "
                               "--onnx FILE`")
    tflites = [p for p in paths if p.suffix.lower() == ".tflite"]
    ckpts = model_files([p for p in paths if p not in tflites], option="")
    if len(tflites) > 1 or (tflites and len(ckpts) != 1):
        raise DeepLabEdgeError("compare takes one .tflite beside one checkpoint (bench runs it as that checkpoint's "
                               "litert-int8 backend); compare the others in another run")
    if not ckpts:
        raise DeepLabEdgeError("compare needs a checkpoint (.pt); give one beside the .tflite")
    tflite = tflites[0] if tflites else None
    if tflite is not None and not tflite.is_file():
        raise DeepLabEdgeError(f"{tflite}: {'is a folder' if tflite.is_dir() else 'file not found'}; pass the path of a "
                               ".tflite model")
    result = _run_matrix(ckpts, data, "auto", None, num_images, "torch-fp32" + (",litert-int8" if tflite else ""),
                         tflite, None, [], "auto",
                         dict(crf_methods=("none",), batches=(1,), warmup=warmup, iters=iters, threads=threads,
                              tflite=tflite, settings={"command": "compare"}), None)
    if emit(result, output, as_json):
        return
    from ..bench.harness import SHOWN_CALIBRATION_WARNINGS
    from ..bench.report import device_label

    _bench_table(result, title=f"{result['images']} images of {data} on {device_label(result['environment'])} "
                               "(compare = bench --backends torch-fp32 --crf none)")
    _print_notes(result, SHOWN_CALIBRATION_WARNINGS)
