"""``bench``, ``bench compare`` and ``bench kernels``: accuracy against speed on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.table import Table

from ..errors import DeepLabEdgeError
from .app import main
from .common import (CALIB_METHODS, COUNT, NONNEG, THREADS, check_tag, choices, console, int_list, out, output_option,
                     output_stride_option, parse_scales, pct, print_json, progress_bar)

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
@click.option("--weights", type=click.Path(path_type=Path), help="deeplab-edge checkpoint (.pt) to benchmark.")
@click.option("--arch", help="Architecture of a plain state dict (guessed from its keys if omitted).")
@click.option("--data", type=click.Path(path_type=Path), help="Labelled dataset folder (VOC, Cityscapes, CamVid).")
@click.option("--dataset", "kind", type=click.Choice(["auto", "voc", "cityscapes", "camvid"]), default="auto",
              show_default=True, help="Dataset layout.")
@click.option("--split", default="val", show_default=True, help="Split name.")
@click.option("--num-images", type=COUNT, help="Use only the first N images.")
@click.option("--backends", default="auto", show_default=True,
              help="auto (what runs well here), all, or a comma-separated list of: " + ", ".join(
                  ["torch-fp32", "torch-fp16", "torch-bf16", "compile-fp32", "compile-fp16", "triton-fp32",
                   "triton-fp16", "ort-fp32", "ort-int8", "litert-int8", "qdq-int8", "trt-fp32", "trt-fp16", "trt-int8"]) +
                   ". Those that cannot run are listed as skipped, with the reason.")
@click.option("--crf", "crf_methods", default="none,torch", show_default=True,
              help="CRF options crossed with every backend: none, pydensecrf, torch, triton, window, "
                   "triton-window.")
@click.option("--crf-preset", type=click.Choice(["deeplab-v2", "deeplab-v1"]), default="deeplab-v2",
              show_default=True, help="CRF parameters.")
@click.option("--batch", "batches", default="1", show_default=True,
              help="Batch sizes of the latency pass (comma-separated); 1 is always included.")
@click.option("--iters", default=30, type=COUNT, show_default=True, help="Timed calls per backend and batch size.")
@click.option("--warmup", default=5, type=NONNEG, show_default=True, help="Untimed calls before them.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto (PyTorch backends).")
@click.option("--threads", type=THREADS, help="Intra-op threads for PyTorch and ONNX Runtime (default: all cores).")
@click.option("--calib-data", type=click.Path(path_type=Path),
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
@click.option("--engine", "engine_files", multiple=True,
              help="A TensorRT engine for the trt-* backends, as PRECISION=FILE (repeatable).")
@click.option("--scales", callback=parse_scales, default="1", show_default=True,
              help="Test-time input scales for the PyTorch backends, comma-separated: logits averaged over them "
                   "(latency covers every scale); other backends are skipped.")
@click.option("--flip", is_flag=True, help="Also average the mirrored image's logits (PyTorch backends).")
@output_stride_option("Run the checkpoint's weights at this output stride on every backend (the ONNX and INT8 "
                      "models are exported so); 8 is DeepLab-v3's evaluation setting for models trained at 16.")
@click.option("--tflite", type=click.Path(path_type=Path),
              help="A .tflite model for the litert-int8 backend (LiteRT, XNNPACK), e.g. the file the checkpoint was "
                   "imported from: Google's own runtime beside the others.")
@output_option("dir", "Keep the ONNX / INT8 models in this folder and reuse them next time (default: a "
                      "temporary folder).", names=("--artifacts",))
@click.option("--tag", callback=check_tag,
              help="Name of the result files: letters, digits, '.', '_', '-' (default: from this machine's GPU or CPU).")
@output_option("dir", "Folder for bench_<tag>.json, .csv and .png (e.g. bench/results/).")
@click.option("--no-plot", is_flag=True, help="Skip the PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the result document as JSON instead of tables.")
@click.pass_context
def bench_group(ctx, weights, arch, data, kind, split, num_images, backends, crf_methods, crf_preset, batches, iters,
                warmup, device, threads, calib_data, calib_folds, calib_on_eval, calib_num, calib_method, engine_files, scales, flip, output_stride,
                tflite, artifacts, tag, output, no_plot, as_json) -> None:
    """Accuracy against speed of every backend x CRF option on this machine, in one run.

    \b
    Each cell: mIoU (per-class IoU in the JSON) on the dataset; model latency p50/p90/p99
    and throughput per batch size (warm-up first, every call synchronised); CRF time; peak
    memory; model file size; on a Jetson, power and energy per image (jetson-stats, else tegrastats).
    Data loading, preprocessing and post-processing are timed apart (harness overhead).
    The table is sorted by latency (model p50 at batch 1 + CRF median) with the
    Pareto-optimal cells marked; JSON, CSV and a PNG plot go to -o DIR.

    \b
    Subcommands:
      deeplab-edge bench compare A.json B.json ...   merge several machines' results
      deeplab-edge bench kernels                     fused-ASPP micro-benchmarks"""
    if ctx.invoked_subcommand is not None:
        return
    from ..bench.harness import CRF_CHOICES, SHOWN_CALIBRATION_WARNINGS, run_bench, select_backends
    from ..bench.power import power_sampler
    from ..bench.report import default_tag, device_label, write_results
    from ..data.datasets import open_dataset
    from ..interrupts import temp_dir
    from ..runtime import resolve_device

    if weights is None or data is None:
        raise DeepLabEdgeError("bench needs --weights FILE and --data DIR (see `deeplab-edge bench --help`)")
    if not Path(weights).is_file():
        raise DeepLabEdgeError(f"{weights}: checkpoint not found; create one with `deeplab-edge import` or pass a .pt")
    if tflite is not None and not Path(tflite).is_file():
        raise DeepLabEdgeError(f"--tflite {tflite}: file not found; check the path")
    if (calib_data is not None or calib_on_eval) and \
            ctx.get_parameter_source("calib_folds") == ParameterSource.COMMANDLINE:
        raise DeepLabEdgeError(f"--calib-folds splits the benchmark's images when there is nothing else to calibrate "
                               f"on; drop it or {'--calib-data' if calib_data is not None else '--calib-on-eval'}")
    bs = sorted(set(int_list(batches, "--batch")) | {1})
    crfs = choices(crf_methods, list(CRF_CHOICES), "CRF option")
    engines = _engine_map(engine_files)
    dev = resolve_device(device)
    chosen, skipped = select_backends(backends, dev, tflite=tflite is not None)
    if not chosen:
        raise DeepLabEdgeError("no backend can run on this machine with these options: " + "; ".join(
            f"{s['backend']} ({s['reason']})" for s in skipped) + "; pick others with --backends (see "
            "`deeplab-edge doctor`)")
    ds = open_dataset(data, kind, split).subset(num_images)
    sampler = power_sampler()
    with temp_dir("deeplab-edge-bench-") as tmp, progress_bar() as prog:
        state: dict[str, Any] = {}

        def progress(desc: str, total: int):
            if "task" in state:
                prog.remove_task(state["task"])
            state["task"] = prog.add_task(desc, total=total)
            return lambda _item: prog.advance(state["task"])

        result = run_bench(Path(weights), ds, backends=chosen, crf_methods=crfs, crf_preset=crf_preset, batches=bs,
                           warmup=warmup, iters=iters, device=device, arch=arch, threads=threads,
                           work=Path(artifacts) if artifacts else Path(tmp), calib_data=calib_data,
                           calib_folds=calib_folds, calib_on_eval=calib_on_eval,
                           calib_num=calib_num, calib_method=calib_method, engines=engines, tflite=tflite,
                           scales=scales, flip=flip, output_stride=output_stride,
                           power=sampler, skipped=skipped, settings={"split": split, "requested": backends},
                           progress=progress, log=lambda s: console.print(f"[dim]{s}[/]", highlight=False))
    env = result["environment"]
    files = write_results(result, Path(output), tag or default_tag(env), png=not no_plot) if output else {}
    result_files = {"files": files} if files else {}
    if as_json:
        print_json({**result, **result_files})
        return
    _bench_table(result, title=f"{len(ds)} images of {data} on {device_label(env)}")
    _print_notes(result, SHOWN_CALIBRATION_WARNINGS)
    for k, v in files.items():
        out.print(f"[green]wrote[/] {v}")


def _print_notes(result: dict[str, Any], shown_warnings: tuple[str, ...]) -> None:
    """What was skipped, where INT8 was calibrated, and the calibration warnings worth a user's attention."""
    for s in result["skipped"]:
        console.print(f"[yellow]skipped {s['backend']}:[/] {s['reason']}", highlight=False, soft_wrap=True)
    for s in result["skipped_crf"]:
        console.print(f"[yellow]skipped CRF {s['crf']}:[/] {s['reason']}", highlight=False, soft_wrap=True)
    cal = (result.get("artifacts") or {}).get("calibration") or {}
    if cal.get("says"):
        console.print(f"[dim]{cal['says']}[/]", highlight=False, soft_wrap=True)
    if cal.get("note"):
        console.print(f"[bold yellow]warning:[/] {cal['note']}", highlight=False, soft_wrap=True)
    for w in cal.get("warnings") or []:
        if w["kind"] in shown_warnings:
            console.print(f"[bold yellow]warning:[/] {w['message']}", highlight=False, soft_wrap=True)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _bench_table(result: dict[str, Any], title: str) -> None:
    rows = sorted(result["rows"], key=lambda r: (not r.get("latency_is_speed", True), r["latency_ms"] or 0))
    merged = result.get("merged", False)
    batch_sizes = sorted({b["batch"] for r in rows for b in r["batches"]})
    power = any(b.get("power_w") for r in rows for b in r["batches"])
    t = Table(title=title)
    cols = (["device"] if merged else []) + ["backend", "CRF", "mIoU %", "Δ pts", "latency ms", "speed-up",
                                             "model p50/p90/p99 ms", "CRF ms"] + \
        [f"img/s b{b}" for b in batch_sizes] + ["peak MB", "file MB"] + (["W", "mJ/img"] if power else []) + ["Pareto"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("device", "backend", "CRF") else "right")
    for r in rows:
        by_b = {b["batch"]: b for b in r["batches"]}
        b1 = by_b.get(1)
        speed = r.get("latency_is_speed", True)
        mem = r["memory"].get("cuda_peak_allocated_mb") or r["memory"].get("peak_rss_mb")
        cells = ([r["device"]] if merged else []) + [
            r["backend"], r["crf"], pct(r["miou"]), f"{r.get('miou_delta_points', 0):+.2f}",
            f"{r['latency_ms']:.1f}" if speed and r["latency_ms"] else "emulated",
            f"{r['speedup']:.2f}x" if r.get("speedup") else "-",
            "/".join(_ms(b1.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms")) if b1 and speed else "-",
            f"{r['crf_ms']['p50']:.0f}" if r.get("crf_ms") else "-"]
        cells += [_ms(by_b[b].get("images_per_s")) if b in by_b and speed else "-" for b in batch_sizes]
        cells += [f"{mem:.0f}" if mem else "-", f"{r['file_mb']:.1f}"]
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
                  f"{', '.join(parts)}. Latency = model p50 at batch 1 + CRF median. 'emulated': the TensorRT "
                  "QDQ model run as fake-quant arithmetic gives the INT8 engine's accuracy, not its speed.[/]")


@bench_group.command("compare")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--tag", default="compare", show_default=True, callback=check_tag, help="Name of the merged files.")
@output_option("dir", "Folder for the merged JSON, CSV and PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the merged document as JSON.")
def bench_compare(results, tag, output, as_json) -> None:
    """Merge result files from several machines (e.g. a desktop GPU and a Jetson Orin)
    into one table and one plot; the Pareto front is recomputed over all of them."""
    from ..bench.report import check_not_outputs, load_result, merge, write_results

    if output:  # before reading anything: an input that the merged files would replace
        check_not_outputs(results, Path(output), tag)
    if len(results) < 2:
        console.print("[yellow]note:[/] one result file: nothing to merge, showing it alone", highlight=False)
    merged = merge([(str(p), load_result(p)) for p in results])
    if not merged["same_data"]:
        console.print("[yellow]warning:[/] the files measured different data (or numbers of images): their mIoU "
                      "columns are not comparable", highlight=False)
    files = write_results(merged, Path(output), tag) if output else {}
    if as_json:
        print_json({**merged, **({"files": files} if files else {})})
        return
    _bench_table(merged, title=f"{len(merged['rows'])} cells from {len(merged['sources'])} machines")
    for k, v in files.items():
        out.print(f"[green]wrote[/] {v}")

