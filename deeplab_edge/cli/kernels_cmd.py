"""``kernels compile`` / ``kernels bench`` (the Triton kernels), ``crf bench`` and ``crf tune``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..errors import DeepLabEdgeError
from .app import main
from .common import (InputPath, MAX_BATCH, COUNT, CRF_ITERATIONS, NONNEG, SIDE, THREADS, choices, console, emit, finite_float, int_list, out, output_option, pct,
                     print_warning, progress_bar)

# ----------------------------------------------------------------------------- kernels

@main.group("kernels")
def kernels_group() -> None:
    """Triton kernels: compile them for real GPUs (no GPU needed) and benchmark them."""


@kernels_group.command("compile")
@click.option("--arch", "archs", default="75,80,86,87,89,90,120", show_default=True,
              help="Compute capabilities: 75 (T4, RTX 20), 80 (A100), 86 (RTX 30), 87 (Jetson Orin), 89 (RTX 40, "
                   "L4), 90 (H100), 120 (RTX 50).")
@click.option("--dtype", "dtypes", default="fp16,bf16,fp32", show_default=True, help="Input dtypes.")
@output_option("file", "Write the results as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def kernels_compile(archs, dtypes, output, as_json) -> None:
    """Compile every kernel in every autotune config to a cubin for each GPU architecture,
    on this machine (Triton's bundled ptxas), and report registers, spills, shared memory,
    tensor-core MMA instructions and occupancy per config. A config that spills gets the
    reason the compiled code gives (no MMA on that architecture; spill-free sibling configs);
    exits 1 when a config spills or does not fit shared memory without such a reason."""

    from ..bench.env import environment
    from ..kernels.compile import ARCHS, compile_all, kernel_specs

    # each architecture and dtype once, in the order given: --arch 87,87 compiles for sm_87 once
    ccs = list(dict.fromkeys(int(a) for a in choices(archs, [str(a) for a in ARCHS], "architecture")))
    specs = kernel_specs(dtypes=choices(dtypes, ["fp16", "bf16", "fp32"], "dtype"))
    with progress_bar() as prog:
        task = prog.add_task("compiling", total=len(specs) * len(ccs))

        def step(spec, cc):
            prog.update(task, advance=1, description=f"sm_{cc} {spec.kernel} {spec.dtype} {spec.label}")

        results = compile_all(specs, ccs, progress=step)
    rows = [r.as_dict() for r in results]
    failed = [r for r in rows if not r["ok"] and not r["reason"]]
    explained = [r for r in rows if not r["ok"] and r["reason"]]
    result = {"environment": environment(), "archs": {f"sm_{cc}": ARCHS[cc].name for cc in ccs}, "results": rows}
    if not emit(result, output, as_json):
        t = Table(title=f"{len(rows)} kernel configs compiled for {', '.join(f'sm_{c}' for c in ccs)}")
        for col in ("kernel", "dtype", "arch", "blocks", "warps", "stages", "regs", "spill B", "smem KB",
                    "blocks/SM", "occupancy", "limited by", "ok"):
            t.add_column(col, justify="left" if col in ("kernel", "limited by") else "right")
        for r in rows:
            c = r["config"]
            t.add_row(escape(r["kernel"]), r["dtype"], r["arch"], " ".join(f"{k[6:]}{v}" for k, v in c.items()),
                      str(r["num_warps"]), str(r["num_stages"]), str(r["registers"]),
                      str(r["spill_bytes"] + r["stack_bytes"]), f"{r['shared_bytes'] / 1024:.0f}",
                      str(r["blocks_per_sm"]), f"{100 * r['occupancy']:.0f}%", r["limited_by"],
                      "[green]yes[/]" if r["ok"] else f"[{'yellow' if r['reason'] else 'red'}]{r['problem']}[/]")
        out.print(t)
        for r in explained:
            console.print(f"[yellow]{escape(r['kernel'])} {r['dtype']} {r['arch']} {r['config']}:[/] {r['problem']}: "
                          f"{escape(r['reason'])}", highlight=False, soft_wrap=True)
    if failed:
        console.print(f"[red]error:[/] {len(failed)} of {len(rows)} configs spill or exceed shared memory "
                      f"(first: {escape(failed[0]['kernel'])} {failed[0]['dtype']} {failed[0]['arch']} {failed[0]['config']}: "
                      f"{failed[0]['problem']}); shrink those tiles or stages in the kernel's config table",
                      highlight=False)
        sys.exit(1)


@kernels_group.command("bench")
@click.option("--shape", "shapes", default="all", show_default=True,
              help="Head shapes (comma-separated) or 'all': v2-resnet101-os8, v3-resnet101-os16, v3-resnet101-os8, "
                   "v3-mobilenetv2-os16.")
@click.option("--batch", "batches", default="1,8", show_default=True, help="Batch sizes (comma-separated, 1-256).")
@click.option("--dtype", "dtypes", default="fp16,fp32", show_default=True, help="Dtypes (fp16, bf16, fp32).")
@click.option("--providers", default="torch,compile,triton", show_default=True,
              help="What to time on a GPU: torch (eager, cuDNN), compile (torch.compile), triton (fused kernels).")
@click.option("--warmup", default=10, type=NONNEG, show_default=True, help="Untimed runs before timing (GPU).")
@click.option("--iters", default=50, type=COUNT, show_default=True, help="Timed runs; the median is reported (GPU).")
@click.option("--no-compile-check", is_flag=True, help="Skip compiling the kernels for sm_87/sm_90 (occupancy).")
@output_option("file", "Write the results (with the machine's metadata) as JSON to this file, e.g. "
                       "bench/results/kernels_bench_<machine>.json.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def kernels_bench(shapes, batches, dtypes, providers, warmup, iters, no_compile_check, output, as_json) -> None:
    """Fused ASPP against eager PyTorch and torch.compile on DeepLab's real head shapes.

    On a CUDA GPU: median time (CUDA events), TFLOP/s, GB/s, fraction of the roofline and
    speed-up against eager PyTorch, measured side by side. Without one: FLOPs, launches and
    bytes of each path, and roofline estimates for sm_87 / sm_90 (labelled estimates)."""
    import torch

    from ..bench import kernel_bench as kb
    from ..bench.env import environment

    # each value once, in the order given (a repeated one would be compiled and timed twice)
    names = list(kb.SHAPES) if shapes == "all" else choices(shapes, list(kb.SHAPES), "shape")
    bs = list(dict.fromkeys(int_list(batches, "--batch", MAX_BATCH)))
    dts = choices(dtypes, ["fp16", "bf16", "fp32"], "dtype")
    provs = choices(providers, list(kb.PROVIDERS), "provider")
    compiled = None
    if not no_compile_check:
        from ..kernels.compile import compile_all, kernel_specs

        with console.status("compiling the kernels for sm_87 and sm_90"):
            compiled = [r.as_dict() for r in compile_all(kernel_specs(dtypes=dts), (87, 90))]
    with console.status("counting FLOPs, launches and bytes"):
        analytic = kb.analyse(names, bs, dts, compiled)
    result: dict[str, Any] = {"environment": environment(), "analytic": analytic, "crf_analytic": kb.crf_estimate(),
                              "crf_lattice_analytic": kb.lattice_estimate(), "timings": None}
    if torch.cuda.is_available():
        with progress_bar() as prog:
            # every provider on both input layouts, but torch.compile on the runner's (NCHW) only
            per_layout = len(provs) * len(kb.LAYOUTS) - ("compile" in provs) * (len(kb.LAYOUTS) - 1)
            task = prog.add_task("timing", total=len(names) * len(bs) * len(dts) * per_layout)
            result["timings"] = kb.run(names, bs, dts, provs, warmup, iters,
                                       progress=lambda d: prog.update(task, advance=1, description=d))
    else:
        result["timing_skipped"] = "no CUDA GPU on this machine: GPU times are roofline estimates, not measurements"
    if emit(result, output, as_json):
        return
    t = Table(title="Fused ASPP vs eager PyTorch: work per forward pass (exact counts)")
    for col in ("shape", "batch", "dtype", "GFLOP", "eager launches", "eager MB", "fused launches", "fused MB",
                "H100 est. µs", "Orin est. µs", "bound", "occupancy H100/Orin"):
        t.add_column(col, justify="left" if col == "shape" else "right", no_wrap=col == "shape")
    for r in analytic:
        e90, e87 = r["estimates"]["sm_90"], r["estimates"]["sm_87"]
        t.add_row(r["shape"], str(r["batch"]), r["dtype"], f"{r['gflops']:.1f}", str(r["eager_launches"]),
                  f"{r['eager_mb']:.1f}", str(r["fused_launches"]), f"{r['fused_mb']:.1f}",
                  f"{1e3 * e90['roofline_ms_fused']:.0f}", f"{1e3 * e87['roofline_ms_fused']:.0f}", e90["bound"],
                  "/".join(f"{100 * e['best_occupancy']:.0f}%" if "best_occupancy" in e else "-" for e in (e90, e87)))
    out.print(t)
    ce, cl = result["crf_analytic"], result["crf_lattice_analytic"]
    out.print(f"CRF lattice in Triton (--crf triton; {cl['height']}x{cl['width']}, {cl['labels']} labels, "
              f"{cl['iterations']} iterations, assuming {cl['vertices']} lattice vertices = one per pixel: the real "
              f"count depends on the image, see `crf bench`): {cl['gflops']:.1f} GFLOP, {cl['mb']:.0f} MB, "
              f"{cl['launches']} launches -> est. {cl['estimates']['sm_90']['roofline_ms']:.2f} ms on H100, "
              f"{cl['estimates']['sm_87']['roofline_ms']:.1f} ms on Orin per image")
    out.print(f"CRF window in Triton (--crf triton-window; {ce['height']}x{ce['width']}, {ce['labels']} labels, "
              f"{ce['iterations']} iterations, {ce['bilateral_taps']}+{ce['spatial_taps']} taps): {ce['gflops']:.1f} "
              f"GFLOP, {ce['mb']:.0f} MB, {ce['iterations'] + 1} launches -> est. "
              f"{ce['estimates']['sm_90']['roofline_ms']:.2f} ms on H100, {ce['estimates']['sm_87']['roofline_ms']:.1f} ms "
              "on Orin per image")
    out.print("[dim]est. = roofline lower bound of the fused path from datasheet peaks (dense tensor-core FLOP/s, "
              "DRAM bandwidth): an estimate, not a measurement. Occupancy: best autotune config, from its compiled "
              "registers and shared memory.[/]")
    if result["timings"]:
        t = Table(title=f"Measured on {result['environment']['gpu']['name']} (median of {iters}, CUDA events)")
        for col in ("shape", "batch", "dtype", "layout", "provider", "ms", "p10-p90", "TFLOP/s", "GB/s",
                    "% roofline", "vs torch"):
            t.add_column(col, justify="left" if col in ("shape", "provider", "layout") else "right",
                         no_wrap=col == "shape")
        for r in result["timings"]:
            layout = r["layout"] + (" (runner)" if r.get("runner_layout") else "")
            t.add_row(r["shape"], str(r["batch"]), r["dtype"], layout, r["provider"], f"{r['median_ms']:.3f}",
                      f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}", f"{r['tflops']:.1f}", f"{r['gbs']:.0f}",
                      f"{100 * r.get('fraction_of_roofline', float('nan')):.0f}",
                      f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-")
        out.print(t)
    else:
        console.print(f"[yellow]note:[/] {result['timing_skipped']}", highlight=False)

@kernels_group.command("check")
@click.option("--device", default="auto", show_default=True,
              help="cuda, cuda:N or auto; cpu runs them in Triton's interpreter (set TRITON_INTERPRET=1), small sizes.")
@click.option("--dtype", "dtypes", default="fp32,fp16,bf16", show_default=True, help="ASPP input dtypes.")
@click.option("--crf-size", type=SIDE, help="Side of the CRF checks (default: 513 on a GPU, 24x32 on the CPU).")
@output_option("file", "Write the results (with the machine's metadata) as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def kernels_check(device, dtypes, crf_size, output, as_json) -> None:
    """Every Triton kernel against its PyTorch reference on this device, for each dtype: the fused
    ASPP (v2 sum, v3 branches) at DeepLab's four real head shapes, the lattice and window CRF
    steps at 513 x 513 with 21 labels. Compiled for the GPU, not interpreted. Exits 1 when a
    kernel is outside its tolerance."""
    from ..bench.env import environment
    from ..bench.kernel_check import check_kernels
    from ..runtime import resolve_device

    dev = resolve_device(device)
    tiny = dev.type == "cpu"
    with progress_bar() as prog:
        task = prog.add_task("checking", total=None)
        result = check_kernels(dev, choices(dtypes, ["fp32", "fp16", "bf16"], "dtype"), tiny=tiny,
                               crf_size=(crf_size, crf_size) if crf_size else None,
                               progress=lambda d: prog.update(task, description=d))
    result["environment"] = environment()
    if not emit(result, output, as_json):
        t = Table(title=f"Triton kernels against PyTorch on {result['device']}"
                        f"{' (interpreted, small sizes)' if result['interpreted'] else ''}")
        for col in ("kernel", "shape", "dtype", "max |err|", "of tolerance", "s (incl. compile)", "ok"):
            t.add_column(col, justify="left" if col in ("kernel", "shape") else "right")
        for r in result["rows"]:
            t.add_row(r["kernel"], r["shape"], r["dtype"], f"{r['max_abs_err']:.2e}", f"{100 * r['worst_ratio']:.0f}%",
                      f"{r['seconds']:.2f}", "[green]yes[/]" if r["ok"] else "[red]NO[/]")
        out.print(t)
    if not result["ok"]:
        bad = next(r for r in result["rows"] if not r["ok"])
        console.print(f"[red]error:[/] {bad['kernel']} {bad['shape']} {bad['dtype']} is {bad['max_abs_err']:.2e} off "
                      "its reference, outside the tolerance; report it with this output", highlight=False)
        sys.exit(1)

# ----------------------------------------------------------------------------- crf

@main.group("crf")
def crf_group() -> None:
    """Dense CRF (Krähenbühl & Koltun 2011) as DeepLab uses it: benchmark its implementations
    (`crf bench`), choose its parameters on held-out images (`crf tune`).

    To post-process predictions, use --crf on eval, predict and bench (--crf-params FILE for tuned ones)."""


@crf_group.command("bench")
@click.option("--weights", type=InputPath(path_type=Path), required=True, help="deeplab-edge checkpoint (.pt).")
@click.option("--data", type=InputPath(path_type=Path), required=True, help="Labelled dataset folder (VOC, ...).")
@click.option("--methods", default="pydensecrf,torch,triton,window,triton-window", show_default=True,
              help="CRF implementations, run side by side; those that cannot run here are listed as skipped.")
@click.option("--preset", type=click.Choice(["deeplab-v2", "deeplab-v1"]), default="deeplab-v2", show_default=True)
@click.option("--crf-params", type=InputPath(path_type=Path),
              help="CRF parameters from `crf tune -o FILE` (chosen on held-out images) instead of --preset.")
@click.option("--iterations", type=click.IntRange(1, CRF_ITERATIONS.max),
              help=f"Mean-field iterations, 1-{CRF_ITERATIONS.max} (default: the preset's, 10).")
@click.option("--num-images", type=COUNT, help="Use only the first N images.")
@click.option("--speed-images", default=2, type=NONNEG, show_default=True,
              help="Images also timed at --size x --size (with and without label pruning).")
@click.option("--profile", is_flag=True, help="Also time the torch lattice stage by stage on the speed images "
              "(CPU): its construction steps and each mean-field update's splat, blurs, slice, spatial pass and "
              "softmax.")
@click.option("--threads", type=THREADS, help="PyTorch's intra-op threads (default: all cores; pydensecrf uses one).")
@click.option("--size", default=513, type=SIDE, show_default=True, help="Side of the reference-speed inputs.")
@click.option("--device", default="auto", show_default=True, help="Device of the network and the torch/triton CRFs.")
@output_option("file", "Write the results as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def crf_bench(weights, data, methods, preset, crf_params, iterations, num_images, speed_images, profile, threads,
              size, device, output, as_json) -> None:
    """Time per image and mIoU gain of pydensecrf, the lattice in PyTorch and in Triton, and
    the window approximation in PyTorch and in Triton, on the same network outputs in one run."""
    from ..bench.crf_bench import CRF_METHODS, run_crf_bench
    from ..bench.env import environment
    from ..crf import PRESETS, TRITON_METHODS, with_overrides
    from ..data.datasets import open_dataset
    from ..runtime import resolve_device
    from ..runtime.spec import ModelSpec, open_segmenter

    wanted = choices(methods, list(CRF_METHODS), "CRF method")
    dev = resolve_device(device)
    if profile and (dev.type != "cpu" or speed_images == 0):
        raise DeepLabEdgeError("--profile times the torch lattice on the CPU over the speed images; "
                               f"{'add --device cpu' if dev.type != 'cpu' else 'give --speed-images 1 or more'}")
    skipped = {}
    if any(m in TRITON_METHODS for m in wanted):  # one check for both Triton methods: same device, same answer
        from ..kernels.device import triton_unavailable

        reason = triton_unavailable(dev)
        if reason:
            skipped.update({m: reason for m in wanted if m in TRITON_METHODS})
    if "pydensecrf" in wanted:
        try:
            import pydensecrf.densecrf  # noqa: F401
        except ImportError:
            skipped["pydensecrf"] = "pydensecrf is not installed (pip install pydensecrf2)"
    run_methods = [m for m in wanted if m not in skipped]
    if not run_methods:
        raise DeepLabEdgeError("no CRF method can run here (" + "; ".join(f"{m}: {r}" for m, r in skipped.items()) +
                               "); pick others with --methods")
    if crf_params is not None and click.get_current_context().get_parameter_source("preset") == \
            click.core.ParameterSource.COMMANDLINE:
        raise DeepLabEdgeError("--crf-params replaces --preset; give one of them")
    if threads:
        import torch

        torch.set_num_threads(threads)
    from ..crf import load_crf_params

    base = load_crf_params(crf_params) if crf_params is not None else PRESETS[preset]
    params = with_overrides(base, iterations=iterations)
    ds = open_dataset(data, "auto", "val").subset(num_images)
    if ds.kind == "folder":
        raise DeepLabEdgeError(f"{data}: no labelled dataset found; the CRF benchmark needs labels")
    if not ds.has_labels:
        raise DeepLabEdgeError(f"{data}: some images have no label file; crf bench scores mIoU, give labelled images")
    segmenter, _, info = open_segmenter(ModelSpec(weights=weights, device=str(dev)), warn=print_warning)
    with progress_bar() as prog:
        task = prog.add_task("crf", total=len(ds) * len(run_methods))
        res = run_crf_bench(segmenter, ds, run_methods, params, device=dev, size=size, speed_images=speed_images,
                            estimate_lattice="triton" in skipped, profile=profile,
                            progress=lambda d: prog.update(task, advance=1, description=d))
    res.update({"environment": environment(), "model": info, "data": str(data),
                "skipped": [{"method": m, "reason": r} for m, r in skipped.items()]})
    if emit(res, output, as_json):
        return
    source = f"parameters {crf_params}" if crf_params is not None else f"preset {preset}"
    t = Table(title=f"Dense CRF on {res['images']} images of {data} ({params.iterations} iterations, {source})")
    for col in ("method", "device", "mIoU %", "gain (points)", "% of pydensecrf gain", "s / image",
                f"s @ {size}² ", f"s @ {size}² all labels", "vs pydensecrf"):
        t.add_column(col, justify="left" if col in ("method", "device") else "right")
    for r in res["rows"]:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        t.add_row(r["method"], r.get("device", "-"), pct(r["miou"]), f"{r['gain_points']:+.2f}",
                  fmt(None if r.get("fraction_of_pydensecrf_gain") is None else 100 * r["fraction_of_pydensecrf_gain"],
                      ".0f"),
                  fmt(r.get("s_per_image_native"), ".3f"), fmt(r.get(f"s_per_image_{size}x{size}"), ".3f"),
                  fmt(r.get(f"s_per_image_{size}x{size}_all_labels"), ".3f"),
                  fmt(r.get("speedup_vs_pydensecrf"), ".2f") + ("x" if r.get("speedup_vs_pydensecrf") else ""))
    out.print(t)
    for m, reason in skipped.items():
        console.print(f"[yellow]skipped {m}:[/] {reason}", highlight=False)
    _print_profile(res.get("torch_profile"), size)
    est = res.get("triton_lattice_estimate")
    if est:
        out.print(f"triton (lattice) estimate, not a measurement: {est['mean_ms']['sm_90']:.2f} ms per image on H100, "
                  f"{est['mean_ms']['sm_87']:.1f} ms on Orin (roofline lower bound at {size}x{size}, from the "
                  f"{len(est['images'])} timed images' real lattice sizes)")


def _print_profile(prof: dict | None, size: int) -> None:
    """`crf bench --profile`'s table: the torch lattice's stages, median over the speed images."""
    if not prof:
        return
    pt = Table(title=f"torch lattice, stage by stage (median of {len(prof['images'])} images at {size}x{size}, "
                     f"pruned labels; {prof['images'][0]['vertices']} lattice vertices for "
                     f"{prof['images'][0]['points']} pixels in the first)")
    pt.add_column("stage")
    pt.add_column("ms", justify="right")
    for k, v in prof["median_build_ms"].items():
        pt.add_row(f"build: {k}", f"{v:.1f}")
    for k, v in prof["median_ms_per_iteration"].items():
        pt.add_row(f"per iteration: {k}", f"{v:.1f}")
    out.print(pt)


def _grid_values(ctx, param, value: str | None) -> tuple[float, ...] | None:
    """A comma-separated list of finite numbers > 0 (a CRF grid axis)."""
    if value is None:
        return None
    try:
        values = tuple(finite_float(v.strip(), param.opts[-1]) for v in value.split(","))
    except DeepLabEdgeError as e:
        raise click.BadParameter(str(e), ctx, param) from None
    if any(v <= 0 for v in values):
        raise click.BadParameter(f"{value!r} has a value <= 0; give positive numbers, e.g. 3,4,5", ctx, param)
    from ..crf.params import PARAM_RANGES

    lo, hi = PARAM_RANGES[param.name]
    if any(not lo <= v <= hi for v in values):
        raise click.BadParameter(f"{value!r} has a value outside [{lo:g}, {hi:g}], the range the CRF computes in",
                                 ctx, param)
    return tuple(dict.fromkeys(values))


@crf_group.command("tune")
@click.option("--weights", type=InputPath(path_type=Path), required=True, help="deeplab-edge checkpoint (.pt).")
@click.option("--data", type=InputPath(path_type=Path), required=True,
              help="Labelled images to choose on: held out from what you report (e.g. the train split, never val).")
@click.option("--split", default="train", show_default=True, help="Split of --data to choose on.")
@click.option("--sample", default=24, type=COUNT, show_default=True,
              help="Images to choose on, spread evenly over the split (all of them if it has fewer).")
@click.option("--method", type=click.Choice(["torch", "pydensecrf", "window"]), default="torch", show_default=True,
              help="CRF implementation the search runs (the torch lattice equals pydensecrf's).")
@click.option("--preset", type=click.Choice(["deeplab-v2", "deeplab-v1"]), default="deeplab-v2", show_default=True,
              help="Parameters not searched (w2, theta_gamma, iterations) come from this preset.")
@click.option("--w1", "w1", callback=_grid_values, help="Bilateral weights to try (default 3,4,5).")
@click.option("--theta-alpha", callback=_grid_values, help="Bilateral position scales to try (default 30,50,70,90).")
@click.option("--theta-beta", callback=_grid_values, help="Bilateral colour scales to try (default 3,5).")
@click.option("--device", default="auto", show_default=True, help="Device of the network and the CRF.")
@output_option("file", "Write the parameter file (for --crf-params) and every point's mIoU here.",
               example="crf_params.json")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def crf_tune(weights, data, split, sample, method, preset, w1, theta_alpha, theta_beta, device, output,
             as_json) -> None:
    """Choose the CRF's parameters by grid search on held-out labelled images, as DeepLab did
    (w2 and theta_gamma fixed; w1, theta_alpha, theta_beta searched): the network runs once per
    image, every point's CRF on the same logits. Writes a file `eval`, `predict` and `bench`
    take with --crf-params; report results on other images than these."""
    from ..bench.crf_tune import DEFAULT_GRID, tune_crf
    from ..data.datasets import open_dataset
    from ..runtime import resolve_device
    from ..runtime.spec import ModelSpec, open_segmenter

    grid = {k: v if v is not None else DEFAULT_GRID[k]
            for k, v in (("w1", w1), ("theta_alpha", theta_alpha), ("theta_beta", theta_beta))}
    dev = resolve_device(device)
    ds = open_dataset(data, "auto", split)
    if not ds.has_labels:
        raise DeepLabEdgeError(f"{data}: some images have no label file; the search scores mIoU, give labelled images")
    n = min(sample, len(ds))
    ds = ds.take([round(i * (len(ds) - 1) / max(n - 1, 1)) for i in range(n)])
    segmenter, _, info = open_segmenter(ModelSpec(weights=weights, device=str(dev)), warn=print_warning)
    points = len(grid["w1"]) * len(grid["theta_alpha"]) * len(grid["theta_beta"])
    with progress_bar() as prog:
        task = prog.add_task(f"{points} CRF settings x {len(ds)} images", total=len(ds))
        res = tune_crf(segmenter, ds, grid=grid, preset=preset, method=method,
                       device=str(dev) if method != "pydensecrf" else "cpu", model=str(weights),
                       on_image=lambda _s: prog.advance(task))
    if emit(res, output, as_json):
        return
    t = Table(title=f"CRF grid on {res['images']} images of {data} ({split}), {method}")
    for col in ("w1", "theta_alpha", "theta_beta", "mIoU %", "gain (points)"):
        t.add_column(col, justify="right")
    for p in sorted(res["points"], key=lambda p: -p["miou"])[:10]:
        t.add_row(*(f"{p['params'][k]:g}" for k in ("w1", "theta_alpha", "theta_beta")), pct(p["miou"]),
                  f"{100 * (p['miou'] - res['no_crf_miou']):+.2f}")
    out.print(t)
    b = res["params"]
    out.print(f"best: w1 {b['w1']:g}, theta_alpha {b['theta_alpha']:g}, theta_beta {b['theta_beta']:g} "
              f"({pct(res['best_miou'])}% against {pct(res['no_crf_miou'])}% without the CRF, "
              f"{pct(res['preset_miou'])}% with {preset}'s own)")
    for e in res["edge"]:
        console.print(f"[yellow]note:[/] the best {e['param']} ({e['value']:g}) is the {e['side']} value tried: the "
                      f"optimum may lie beyond it; extend --{e['param'].replace('_', '-')}", highlight=False)
