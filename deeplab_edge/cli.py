"""The ``deeplab-edge`` command line.

Logs and progress go to stderr (one rich console); results go to stdout as a rich table,
or as JSON with ``--json``. Bad input ends with one red line naming the problem and the
fix, and exit code 2 (``--verbose`` shows the traceback).
"""

from __future__ import annotations

import errno
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import DeepLabEdgeError

console = Console(stderr=True)
# Results: wide enough for the tables when stdout is a pipe or a file.
out = Console(width=None if sys.stdout.isatty() else 160)


# Numeric option types: a value outside the range is a one-line error when it is parsed, and
# `--help` shows the range.
COUNT = click.IntRange(min=1)            # images, iterations, batch sizes, threads...
NONNEG = click.IntRange(min=0)           # warm-up calls, layers kept in float, DLA core...
SIDE = click.IntRange(32, 4096)          # an input side in pixels (4096 x 4096 logits: ~1.4 GB for 21 classes)
THREADS = click.IntRange(1, 1024)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that staged outputs are cleaned up as on Ctrl-C."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def _os_error_line(e: OSError) -> str | None:
    """One line for the OS errors a user can fix (disk full, permissions, read-only); None for others."""
    where = e.filename or "the output"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}: no space left on the device; free some space or write to another disk (nothing was kept)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: {e.strerror.lower()}; choose a path you can read or write"
    if e.errno == errno.ENAMETOOLONG:
        return f"{where}: file name too long; choose a shorter path"
    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return f"{where}: {e.strerror.lower()}; check the path"
    return None


class _Group(click.Group):
    """The command group: turns every user error into one red line and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        prev = None
        if threading.current_thread() is threading.main_thread():
            prev = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except click.exceptions.NoArgsIsHelpError as e:
                e.show()
                rv = e.exit_code
            except click.ClickException as e:  # click's usage errors: one line instead of its usage block
                hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) is not None else ""
                console.print(f"[bold red]error:[/] {escape(e.format_message())}{hint}", highlight=False, soft_wrap=True,
                              markup=True)
                rv = e.exit_code
            except click.Abort:
                console.print("[yellow]interrupted[/]")
                rv = 130
        finally:
            if prev is not None:
                signal.signal(signal.SIGTERM, prev)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (DeepLabEdgeError, OSError) as e:
            line = str(e) if isinstance(e, DeepLabEdgeError) else _os_error_line(e)
            if line is None:
                raise
            if ctx.obj and ctx.obj.get("verbose"):
                console.print_exception()
            console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            ctx.exit(2)
        except Terminated:
            console.print("[yellow]terminated[/]")
            ctx.exit(143)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            ctx.exit(130)


def _check_output(kind: str, example: str = "result.json"):
    """A click callback checking an output path when it is parsed (before any work)."""
    from .outputs import check_output_dir, check_output_file

    def check(ctx, param, value):
        if value is None:
            return None
        opt = param.opts[-1] if param.opts else param.name
        try:
            return check_output_file(value, opt, example) if kind == "file" else check_output_dir(value, opt)
        except DeepLabEdgeError as e:
            raise click.BadParameter(str(e).removeprefix(f"{opt} "), ctx, param) from None
    return check


def _check_tag(ctx, param, value):
    """A --tag names files: letters, digits, '.', '_' and '-' only (no folders, no spaces)."""
    import re

    if value is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", value):
        raise click.BadParameter(f"{value!r} has characters other than letters, digits, '.', '_' and '-'; choose "
                                 "a plain name such as orin-maxn", ctx, param)
    return value


def output_option(kind: str, help: str, *, required: bool = False, example: str = "result.json",
                  names: tuple[str, ...] = ("-o", "--output"), dest: str | None = None):
    """``-o/--output`` as a file or a folder, checked as soon as it is parsed."""
    decls = list(names) + ([dest] if dest else [])
    return click.option(*decls, type=click.Path(), required=required, help=help, callback=_check_output(kind, example))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="deeplab-edge")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """DeepLab from a PyTorch model to fast, measured inference on GPUs and Jetson.

    \b
    Typical flow:
      deeplab-edge models
      deeplab-edge import ../shared/models/deeplabv3_mnv2_pascal_quant.tflite -o mnv2_voc.pt
      deeplab-edge eval --weights mnv2_voc.pt --data ../shared/data/voc2012_samples
      deeplab-edge predict --weights mnv2_voc.pt image.jpg -o out/
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _write_json(obj: Any, path: Path) -> None:
    from .outputs import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str))


def _emit(result: Any, output: Path | None, as_json: bool) -> bool:
    """Write ``result`` to ``output`` (if given) and print it as JSON (if asked); True when printed."""
    if output:
        _write_json(result, output)
    if as_json:
        _print_json(result)
    return as_json


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


# ----------------------------------------------------------------------------- models

@main.command("models")
@click.option("--size", default=513, type=SIDE, show_default=True, help="Input side (square) for the GFLOPs column.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_cmd(size: int, as_json: bool) -> None:
    """List the model architectures with parameters and GFLOPs, computed from the models.

    GFLOPs count 2 per multiply-accumulate of every conv at SIZE x SIZE (shape propagation
    on PyTorch's meta device: nothing is allocated or run)."""
    import torch

    from .models import MODELS, count_flops, count_params

    rows = []
    for name, info in MODELS.items():
        with torch.device("meta"):
            model = info.builder()
        cfg = model.config
        rows.append({"name": name, "version": info.version, "backbone": info.backbone,
                     "output_stride": cfg["output_stride"], "aspp_rates": cfg["aspp_rates"],
                     "params": count_params(model), "gflops": count_flops(model, size, size) / 1e9,
                     "input": f"{size}x{size}", "torchvision_keys": info.torchvision_compatible,
                     "summary": info.summary})
    if as_json:
        _print_json(rows)
        return
    t = Table(title=f"deeplab-edge models (GFLOPs at {size}x{size})")
    for col, just in [("name", "left"), ("ver", "left"), ("backbone", "left"), ("OS", "right"),
                      ("ASPP rates", "left"), ("params (M)", "right"), ("GFLOPs", "right"), ("torchvision keys", "left")]:
        t.add_column(col, justify=just)
    for r in rows:
        t.add_row(r["name"], r["version"], r["backbone"], str(r["output_stride"]),
                  "/".join(map(str, r["aspp_rates"])) or "none", f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.1f}",
                  "yes" if r["torchvision_keys"] else "")
    out.print(t)


# ----------------------------------------------------------------------------- import

@main.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@output_option("file", "Checkpoint to write (.pt).", required=True, example="model.pt")
@click.option("--labels", type=click.Path(path_type=Path), help="Class names, one per line (default: VOC's 21).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def import_cmd(source: Path, output: Path, labels: Path | None, as_json: bool) -> None:
    """Convert a Google DeepLab-v3 MobileNetV2 TFLite model into a deeplab-edge checkpoint.

    The graph is read op by op (any depth multiplier and class count); quantized weights
    are dequantized and the interpreter's input normalisation and input size are recorded
    as the checkpoint's preprocessing."""
    from .checkpoint import save_checkpoint
    from .models import count_params
    from .tflite_import import import_tflite

    t0 = time.perf_counter()
    model, meta = import_tflite(source, labels)
    save_checkpoint(model, meta, output)
    summary = {"output": str(output), "arch": model.config["arch"], "num_classes": model.num_classes,
               "output_stride": model.config["output_stride"], "aspp_rates": model.config["aspp_rates"],
               "blocks": meta["source"]["blocks"], "params": count_params(model),
               "preprocess": meta["preprocess"], "source_sha256": meta["source"]["sha256"],
               "bytes": output.stat().st_size, "seconds": time.perf_counter() - t0}
    summary["warnings"] = meta.get("warnings", [])
    for w in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if as_json:
        _print_json(summary)
    else:
        out.print(f"[green]wrote[/] {output} ({summary['bytes'] / 1e6:.1f} MB): {summary['arch']}, "
                  f"{summary['num_classes']} classes, OS {summary['output_stride']}, ASPP rates "
                  f"{summary['aspp_rates'] or 'none'}, {summary['blocks']} blocks, "
                  f"{summary['params'] / 1e6:.2f} M params; input {meta['preprocess']['size']}px, "
                  f"mean {meta['preprocess']['mean'][0]:g}, std {meta['preprocess']['std'][0]:g}")


# ----------------------------------------------------------------------------- shared

def _model_options(f):
    f = click.option("--weights", type=click.Path(path_type=Path),
                     help="deeplab-edge checkpoint (.pt) or torchvision state dict (.pth).")(f)
    f = click.option("--tflite", type=click.Path(path_type=Path),
                     help="Run a DeepLab .tflite model with the LiteRT interpreter instead.")(f)
    f = click.option("--onnx", "onnx_path", type=click.Path(path_type=Path),
                     help="Run an ONNX model from `deeplab-edge export` with ONNX Runtime instead.")(f)
    f = click.option("--engine", "engine_path", type=click.Path(path_type=Path),
                     help="Run a TensorRT engine from `deeplab-edge build` (its manifest beside it).")(f)
    f = click.option("--arch", help="Architecture of a plain state dict (guessed from its keys if omitted).")(f)
    f = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")(f)
    f = click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
                     show_default=True, help="Model dtype (PyTorch backend).")(f)
    f = click.option("--input-size", type=SIDE, help="Override the checkpoint's input side (resize long side + pad).")(f)
    f = click.option("--crf", "crf_method",
                     type=click.Choice(["none", "pydensecrf", "torch", "triton", "window", "triton-window"]),
                     default="none", show_default=True,
                     help="Dense CRF after the network: pydensecrf (reference, CPU), torch (the same "
                          "permutohedral lattice in PyTorch), triton (that lattice in Triton kernels; GPU), "
                          "window (a cheaper truncated-window approximation in PyTorch, less accurate), "
                          "triton-window (the window approximation, one Triton launch per iteration; GPU).")(f)
    f = click.option("--crf-preset", type=click.Choice(["deeplab-v2", "deeplab-v1"]), default="deeplab-v2",
                     show_default=True, help="CRF parameters: DeepLab-v2's VOC values (w1 4, theta_alpha 67, "
                                             "theta_beta 3, w2 3, theta_gamma 1) or DeepLab-v1's.")(f)
    f = click.option("--crf-iterations", type=NONNEG, help="Mean-field iterations (default: the preset's, 10).")(f)
    f = click.option("--backend", type=click.Choice(["torch", "triton"]), default="torch", show_default=True,
                     help="PyTorch model as is, or with its ASPP head swapped for the fused Triton kernels "
                          "(needs a CUDA GPU; TRITON_INTERPRET=1 runs them slowly on the CPU).")(f)
    return f


def _crf_stage(method: str, preset: str, iterations: int | None, device: str):
    """The --crf options as a Segmenter post-processing stage (None for --crf none)."""
    if method == "none":
        if iterations is not None:
            raise DeepLabEdgeError("--crf-iterations needs a CRF; add --crf torch (or pydensecrf, triton, window, "
                                   "triton-window)")
        return None
    from .crf import DEVICE_METHODS, PRESETS, CRFStage, with_overrides
    from .runtime import resolve_device

    params = with_overrides(PRESETS[preset], iterations=iterations)
    dev = resolve_device(device) if method in DEVICE_METHODS else "cpu"
    return CRFStage(method, params, dev)


def _segmenter(weights: Path | None, tflite: Path | None, onnx_path: Path | None, arch: str | None, device: str,
               precision: str, input_size: int | None, threads: int | None = None, backend: str = "torch",
               crf: tuple[str, str, int | None] = ("none", "deeplab-v2", None), engine: Path | None = None):
    """(Segmenter, class names or None, info) for the model options of eval / predict / compare."""
    from .inference import Segmenter
    from .runtime import open_runner

    given = [(p, b) for p, b in ((weights, backend), (onnx_path, "onnxruntime"), (tflite, "litert"),
                                 (engine, "tensorrt")) if p is not None]
    if len(given) != 1:
        raise DeepLabEdgeError(f"{'no model' if not given else 'several models'} given; pass exactly one of "
                               "--weights FILE, --onnx FILE, --tflite FILE or --engine FILE")
    if backend != "torch" and weights is None:
        raise DeepLabEdgeError(f"--backend {backend} runs a PyTorch checkpoint; use it with --weights, not "
                               "--onnx/--tflite/--engine")
    stage = _crf_stage(*crf, device)
    path, be = given[0]
    runner = open_runner(path, backend=be, precision=precision, device=device, threads=threads, arch=arch,
                         input_size=input_size)
    for w in runner.info.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    info = {k: v for k, v in runner.info.items() if k != "warnings"}
    info.update({"crf": crf[0]} if stage is None else {"crf": crf[0], "crf_params": stage.params.as_dict()})
    return Segmenter(runner, runner.preprocess, runner.num_classes, stage), runner.classes or None, info


# ----------------------------------------------------------------------------- eval

@main.command("eval")
@_model_options
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Dataset folder: VOC (VOCdevkit/VOC2012), Cityscapes, CamVid (SegNet layout).")
@click.option("--dataset", "kind", type=click.Choice(["auto", "voc", "cityscapes", "camvid"]), default="auto",
              show_default=True, help="Dataset layout.")
@click.option("--split", default="val", show_default=True, help="Split name (ImageSets/Segmentation/<split>.txt...).")
@click.option("--num-images", type=COUNT, help="Evaluate only the first N images.")
@click.option("--batch-size", default=1, type=COUNT, show_default=True, help="Images per forward pass.")
@click.option("--reference", "reference_dir", type=click.Path(path_type=Path),
              help="Folder of <id>.png label maps (e.g. another runtime's predictions): report pixel agreement.")
@output_option("file", "Write the full results as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of tables.")
def eval_cmd(weights, tflite, onnx_path, engine_path, arch, device, precision, input_size, backend, crf_method, crf_preset,
             crf_iterations, data, kind, split, num_images, batch_size, reference_dir, output, as_json) -> None:
    """Evaluate mIoU, per-class IoU and pixel accuracy on a labelled dataset.

    mIoU is the mean over classes present in the labels or the predictions (non-empty
    union), from one confusion matrix over all images; label 255 (and CamVid's void) is
    ignored."""
    from .data.datasets import open_dataset
    from .inference import evaluate

    if reference_dir is not None and not Path(reference_dir).is_dir():
        raise DeepLabEdgeError(f"{reference_dir}: reference folder not found; pass a folder of <id>.png label maps")
    segmenter, classes, info = _segmenter(weights, tflite, onnx_path, arch, device, precision, input_size,
                                          backend=backend, crf=(crf_method, crf_preset, crf_iterations),
                                          engine=engine_path)
    ds = open_dataset(data, kind, split).subset(num_images)
    if ds.kind == "folder":
        raise DeepLabEdgeError(f"{data}: no VOC/Cityscapes/CamVid layout found; eval needs labels "
                               "(use predict for plain images)")
    if ds.num_classes != segmenter.num_classes:
        raise DeepLabEdgeError(f"the model predicts {segmenter.num_classes} classes but {ds.kind} has "
                               f"{ds.num_classes}; use a model trained for this dataset")
    classes = classes or ds.classes
    with _progress() as prog:
        task = prog.add_task(f"eval {ds.kind}/{split}", total=len(ds))
        res = evaluate(segmenter, ds, batch_size=batch_size, reference_dir=reference_dir,
                       on_image=lambda _sid: prog.advance(task))
    res = {"model": info, "data": {"path": str(data), "kind": ds.kind, "split": split},
           "classes": classes, **res}
    if _emit(res, output, as_json):
        return
    t = Table(title=f"{ds.kind} {split}: {res['images']} images")
    t.add_column("class")
    t.add_column("IoU %", justify="right")
    t.add_column("acc %", justify="right")
    for name, iou, acc in zip(classes, res["class_iou"], res["class_acc"]):
        if iou is not None:
            t.add_row(name, _pct(iou), _pct(acc))
    out.print(t)
    line = (f"mIoU [bold]{_pct(res['miou'])}%[/] over {res['classes_counted']} classes, pixel acc "
            f"{_pct(res['pixel_acc'])}%, mean acc {_pct(res['mean_acc'])}%")
    if res.get("reference_agreement") is not None:
        line += f", agreement with reference {_pct(res['reference_agreement'])}%"
    tm = res["timing"]
    line += (f"\nmodel {tm['model_ms_p50']:.1f} ms/call (median), preprocess {1e3 * tm['preprocess_s'] / res['images']:.1f}"
             f" ms/img, postprocess {1e3 * tm['postprocess_s'] / res['images']:.1f} ms/img on {info.get('device', 'cpu')}")
    if info.get("crf", "none") != "none":
        line += f"; CRF ({info['crf']}) {1e3 * tm['crf_s'] / res['images']:.0f} ms/img"
    out.print(line)
    if output:
        out.print(f"[green]wrote[/] {output}")


# ----------------------------------------------------------------------------- predict

@main.command("predict")
@_model_options
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--video", type=click.Path(path_type=Path), help="Segment every frame of a video file instead.")
@click.option("--camera", type=NONNEG, help="Segment a live camera (OpenCV index, e.g. 0) instead.")
@click.option("--max-frames", type=COUNT, help="With --video/--camera: stop after N frames.")
@output_option("dir", "Output folder (created if missing).", required=True)
@click.option("--alpha", default=0.5, type=click.FloatRange(0, 1), show_default=True, help="Overlay opacity of the colour mask.")
@click.option("--json", "as_json", is_flag=True, help="Print per-image class fractions as JSON.")
def predict_cmd(weights, tflite, onnx_path, engine_path, arch, device, precision, input_size, backend, crf_method,
                crf_preset, crf_iterations, inputs, video, camera, max_frames, output, alpha, as_json) -> None:
    """Segment images (files or folders): writes <name>_mask.png (palette PNG whose pixel
    values are class indices) and <name>_overlay.png (mask blended over the image).

    With --video FILE or --camera N: every frame, with the live frame rate on the console,
    into <name>_overlay.mp4 (needs OpenCV: pip install 'deeplab-edge[video]'; JetPack has it)."""
    import numpy as np

    from .data.datasets import ImageFolder, voc_palette
    from .data.io import save_png
    from .visualize import overlay

    if sum(bool(x) for x in (inputs, video is not None, camera is not None)) != 1:
        raise DeepLabEdgeError(f"{'nothing' if not (inputs or video or camera is not None) else 'several sources'} to "
                               "segment; give image files or folders, or --video FILE, or --camera N (one of them)")
    if video is not None and not Path(video).is_file():
        raise DeepLabEdgeError(f"{video}: video file not found; check the path")
    segmenter, classes, info = _segmenter(weights, tflite, onnx_path, arch, device, precision, input_size,
                                          backend=backend, crf=(crf_method, crf_preset, crf_iterations),
                                          engine=engine_path)
    if video is not None or camera is not None:
        from .stream import segment_stream

        res = segment_stream(segmenter, str(video) if video is not None else camera, output, alpha=alpha,
                             max_frames=max_frames, classes=classes, console=console)
        if as_json:
            _print_json({"model": info, **res})
        else:
            out.print(f"[green]wrote[/] {res['output']}: {res['frames']} frames at {res['fps']:.1f} FPS end to end "
                      f"(model {res['model_ms_p50']:.1f} ms median per frame)")
        return
    ds = ImageFolder(list(inputs))
    stems = {s.id: s.id.replace("/", "_") for s in ds.samples}
    if len(set(stems.values())) != len(stems):
        same = [i for i in stems if list(stems.values()).count(stems[i]) > 1][:2]
        raise DeepLabEdgeError(f"inputs {same[0]!r} and {same[1]!r} would both be written as "
                               f"{stems[same[0]]}_mask.png; rename one or predict them into different -o folders")
    classes = classes or [f"class_{i}" for i in range(segmenter.num_classes)]
    palette = voc_palette()
    results = []
    with _progress() as prog:
        task = prog.add_task("predict", total=len(ds))
        for sid, image, _ in ds:
            labels = segmenter.predict(image)
            stem = stems[sid]
            mask_path, over_path = output / f"{stem}_mask.png", output / f"{stem}_overlay.png"
            save_png(labels, mask_path, palette)
            save_png(overlay(image, labels, palette, alpha), over_path)
            counts = np.bincount(labels.ravel(), minlength=segmenter.num_classes)
            frac = {classes[c]: float(counts[c] / labels.size) for c in np.nonzero(counts)[0]}
            results.append({"id": sid, "mask": str(mask_path), "overlay": str(over_path), "classes": frac})
            prog.advance(task)
    if as_json:
        _print_json({"model": info, "images": results})
        return
    t = Table(title=f"{len(results)} images -> {output}")
    t.add_column("image")
    t.add_column("classes (pixel %)")
    for r in results:
        t.add_row(r["id"], ", ".join(f"{k} {100 * v:.1f}" for k, v in sorted(r["classes"].items(),
                                                                           key=lambda kv: -kv[1])))
    out.print(t)


# ----------------------------------------------------------------------------- export

@main.command("export")
@click.option("--weights", type=click.Path(path_type=Path), required=True, help="Checkpoint (.pt/.pth).")
@click.option("--arch", help="Architecture of a plain state dict (guessed from its keys if omitted).")
@output_option("file", "ONNX file to write.", required=True, example="model.onnx")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Images for the parity check (dataset folder, image folder or file).")
@click.option("--parity-images", default=4, type=COUNT, show_default=True, help="How many images the parity check uses.")
@click.option("--opset", default=17, type=click.IntRange(17, 20), show_default=True,
              help="ONNX opset (17 to 20: the newest PyTorch's TorchScript-based exporter writes).")
@click.option("--dynamic", default="", help="Dynamic axes, comma separated: batch, hw.")
@click.option("--input-size", type=SIDE, help="Input side (default: the checkpoint's preprocessing).")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True,
              help="PyTorch's TorchScript-based exporter (fast) or the torch.export-based one.")
@click.option("--no-simplify", is_flag=True, help="Skip onnxslim.")
@click.option("--fp16", is_flag=True, help="Export in float16 (weights, input, output); parity still against fp32.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export_cmd(weights, arch, output, data, parity_images, opset, dynamic, input_size, exporter, no_simplify,
               fp16, as_json) -> None:
    """Export a checkpoint to ONNX: checker-clean, simplified, with deeplab-edge metadata, and
    checked against PyTorch with ONNX Runtime on real images (fails below 99.9% argmax agreement)."""
    from .checkpoint import load_checkpoint
    from .data.datasets import open_dataset
    from .export import export_onnx

    loaded = load_checkpoint(weights, arch=arch)
    ds = open_dataset(data).subset(parity_images)
    images = [ds.load(i)[1] for i in range(len(ds))]
    dyn = [d.strip() for d in dynamic.split(",") if d.strip()]
    with console.status("exporting..."):
        rep = export_onnx(loaded, output, images, input_size=input_size, opset=opset, dynamic=dyn,
                          exporter=exporter, simplify=not no_simplify, fp16=fp16)
    if as_json:
        _print_json(rep.as_dict())
        return
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in rep.steps_s.items())
    out.print(f"[green]wrote[/] {rep.path} ({rep.bytes / 1e6:.1f} MB, opset {rep.opset}, input "
              f"{'x'.join(map(str, rep.input_shape))}, {rep.nodes_exported} -> {rep.nodes_final} nodes; {steps})\n"
              f"parity on {rep.parity['images']} real images ({rep.parity['provider']}): argmax agreement "
              f"{100 * rep.parity['agreement']:.3f}%, max |logit diff| {rep.parity['max_abs_diff']:.2e}")


# ----------------------------------------------------------------------------- calibrate

@main.command("calibrate")
@click.option("--weights", type=click.Path(path_type=Path), help="Checkpoint: exported to OUT/model_fp32.onnx first.")
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), help="An FP32 ONNX from `deeplab-edge export`.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Calibration images: a dataset folder (VOC/Cityscapes/CamVid) or a plain image folder.")
@click.option("--num", default=256, type=COUNT, show_default=True,
              help="Images to use (the first N in sorted order; fewer are used, with a warning, if fewer exist).")
@click.option("--method", type=click.Choice(["entropy", "minmax", "percentile", "mse"]), default="entropy",
              show_default=True, help="How activation ranges are chosen from the histograms.")
@click.option("--percentile", default=99.99, type=click.FloatRange(50, 100, min_open=True), show_default=True, help="Percentile for --method percentile.")
@click.option("--keep-float", "keep_float_top", default=0, type=NONNEG, show_default=True,
              help="Leave the K most sensitive Convs in float (runs the sensitivity analysis).")
@click.option("--keep-float-layer", "keep_float", multiple=True, help="A Conv node name to leave in float (repeatable).")
@click.option("--sensitivity", is_flag=True, help="Rank every Conv by the mIoU cost of quantizing it alone.")
@click.option("--sensitivity-data", type=click.Path(path_type=Path),
              help="Labelled held-out data for the sensitivity analysis (default: --data beyond the first --num).")
@click.option("--sensitivity-num", type=COUNT, help="Images of the held-out split to use.")
@click.option("--sensitivity-mode", type=click.Choice(["float-one", "quantize-one"]), default="float-one",
              show_default=True, help="Score each Conv by the mIoU regained when only it stays float, or lost "
              "when only it is quantized.")
@click.option("--trt-version", default="8.6.1", show_default=True, help="TensorRT version named in the cache header.")
@click.option("--no-cpu-int8", is_flag=True, help="Skip the ONNX Runtime CPU INT8 model.")
@output_option("dir", "Output folder (created if missing; all files land together or none does).", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def calibrate_cmd(weights, onnx_path, data, num, method, percentile, keep_float_top, keep_float, sensitivity,
                  sensitivity_data, sensitivity_num, sensitivity_mode, trt_version, no_cpu_int8, output,
                  as_json) -> None:
    """INT8 post-training calibration on real images.

    \b
    Writes to OUTPUT/:
      calibration.cache     TensorRT calibration cache (TensorRT 8.5-10, trtexec --calib)
      model_qdq.onnx        TensorRT QDQ model (symmetric s8; TensorRT 10+/11); `eval --onnx`
                            measures it by exact fake-quant emulation
      model_cpu_int8.onnx   ONNX Runtime CPU INT8 model (u8 activations, s8 weights)
      ranges.json           every tensor's max|x| and chosen threshold
      sensitivity.json      with --sensitivity or --keep-float K: Convs ranked by mIoU cost
    Same inputs and method give byte-identical files."""
    import warnings

    from .calibration import calibrate
    from .outputs import staged_dir

    if (weights is None) == (onnx_path is None):
        raise DeepLabEdgeError(f"{'no model' if weights is onnx_path is None else 'both --weights and --onnx'} given; "
                               "pass exactly one of --weights FILE or --onnx FILE")
    # with --weights the export lands in OUTPUT too: stage it with the calibration, all or nothing
    with staged_dir(output) as stage, _progress() as prog, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if weights is not None:
            from .checkpoint import load_checkpoint
            from .data.datasets import open_dataset
            from .export import export_onnx

            loaded = load_checkpoint(weights)
            ds = open_dataset(data).subset(4)
            onnx_path = stage / "model_fp32.onnx"
            with console.status("exporting FP32 ONNX..."):
                export_onnx(loaded, onnx_path, [ds.load(i)[1] for i in range(len(ds))])

        def progress(desc: str, total: int):
            task = prog.add_task(desc, total=total)
            return lambda: prog.advance(task)

        rep = calibrate(onnx_path, data, stage, num=num, method=method, percentile=percentile,
                        keep_float=tuple(keep_float), trt_version=trt_version, cpu_int8=not no_cpu_int8,
                        keep_float_top=keep_float_top, sensitivity=sensitivity, sensitivity_data=sensitivity_data,
                        sensitivity_num=sensitivity_num, sensitivity_mode=sensitivity_mode, progress=progress)
    # the report names the files where they landed
    rep = {k: str(output / Path(v).name) if isinstance(v, str) and Path(v).parent == stage else v
           for k, v in rep.items()}
    for w in caught:
        if "calibrating on all" in str(w.message) or "not held out" in str(w.message):
            console.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)
    if as_json:
        _print_json(rep)
        return
    if "sensitivity_top" in rep:
        gain = rep["sensitivity_mode"] == "float-one"
        t = Table(title=f"most sensitive Convs ({rep['sensitivity_mode']}; FP32 mIoU "
                        f"{_pct(rep['sensitivity_fp32_miou'])}%, all-INT8 {_pct(rep['sensitivity_int8_miou'])}%)")
        t.add_column("rank", justify="right")
        t.add_column("Conv")
        t.add_column("mIoU %", justify="right")
        t.add_column("gain if float (points)" if gain else "cost if quantized (points)", justify="right")
        for i, r in enumerate(rep["sensitivity_top"], 1):
            t.add_row(str(i), r["layer"], _pct(r["miou"]), f"{100 * r['score']:.2f}")
        out.print(t)
    out.print(f"[green]calibrated[/] {rep['images']} images, method {rep['method']}: {rep['tensors']} tensor scales, "
              f"{rep['quantized_convs']} Convs quantized")
    for key in ("cache", "qdq_onnx", "cpu_int8_onnx", "ranges"):
        if key in rep:
            out.print(f"  {key:14s} {rep[key]}")


# ----------------------------------------------------------------------------- build

@main.command("build")
@click.option("--weights", type=click.Path(path_type=Path), help="deeplab-edge checkpoint: exported to ONNX first.")
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path),
              help="Or an FP32 ONNX from `deeplab-edge export` (e.g. a bundle's NAME_fp32.onnx).")
@click.option("--data", type=click.Path(path_type=Path), help="Real images for the export's parity check.")
@click.option("--int8", is_flag=True, help="INT8 engine (needs --calib-data, --calib-cache or --qdq).")
@click.option("--fp16", is_flag=True, help="FP16 for the layers not in INT8 (or an FP16 engine without --int8).")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Calibrate here on these images.")
@click.option("--calib-cache", type=click.Path(path_type=Path), help="A TensorRT calibration cache (TensorRT 8.5-10).")
@click.option("--qdq", type=click.Path(path_type=Path), help="A TensorRT QDQ model from `deeplab-edge calibrate`.")
@click.option("--calib-method", type=click.Choice(["entropy", "minmax", "percentile", "mse"]), default="entropy",
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
@click.option("--timing-cache", type=click.Path(path_type=Path), help="Read and update this timing cache.")
@output_option("file", "Engine file, e.g. out/model.engine (the bundle goes beside it).", required=True,
               example="model.engine")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def build_cmd(weights, onnx_path, data, int8, fp16, calib_data, calib_cache, qdq, calib_method, calib_num,
              keep_float_top, int8_route, shapes, dla_core, allow_gpu_fallback, workspace_mb, timing_cache, output,
              as_json) -> None:
    """Checkpoint -> ONNX -> INT8 calibration -> TensorRT engine, with a manifest beside it.

    \b
    Where TensorRT or a CUDA GPU is missing (as on a CPU build machine), it writes the
    deployment bundle instead and says so: NAME_fp32.onnx, NAME_qdq.onnx, NAME.cache,
    NAME.engine.json (manifest) and NAME_build_engine.sh, which builds the engine on the
    target (Jetson or GPU box) with `deeplab-edge build` or `trtexec` and the same flags.
    \b
    INT8: explicit quantization from the QDQ model is the default route (TensorRT 11 accepts
    nothing else); --int8-route cache uses the calibration cache on TensorRT 8.5-10."""
    from .build import build

    man = build(output=output, weights=weights, onnx=onnx_path, data=data, int8=int8, fp16=fp16, calib_data=calib_data,
                calib_cache=calib_cache, qdq=qdq, calib_method=calib_method, calib_num=calib_num,
                keep_float_top=keep_float_top, int8_route=int8_route, shapes=shapes, dla_core=dla_core,
                gpu_fallback=allow_gpu_fallback, workspace_mb=workspace_mb, timing_cache=timing_cache,
                log=lambda s: console.print(f"[dim]{s}[/]", highlight=False))
    if as_json:
        _print_json(man)
        return
    for key, path in man["files"].items():
        out.print(f"[green]wrote[/] {path} ({Path(path).stat().st_size / 1e6:.2f} MB)  [dim]{key}[/]")
    if man["engine_built"]:
        out.print(f"engine built with TensorRT {man['tensorrt']} for {man['gpu']['name']} in {man['build_s']:.0f} s")
    else:
        console.print(f"[yellow]the engine itself was not built:[/] {man['not_built_reason']}", highlight=False,
                      soft_wrap=True)


# ----------------------------------------------------------------------------- doctor

@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor_cmd(as_json: bool) -> None:
    """What this machine has (PyTorch, CUDA, cuDNN, Triton, TensorRT, ONNX Runtime providers,
    GPU, Jetson model, L4T, power mode, power telemetry) and which bench backends will work here."""
    import torch

    from .bench.env import environment
    from .bench.harness import BACKENDS, select_backends
    from .runtime import resolve_device

    env = environment()
    info: dict[str, Any] = {"environment": env,
                            "torch": {"version": torch.__version__, "cuda": torch.version.cuda,
                                      "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                                      else None, "cuda_available": torch.cuda.is_available()}}
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime_providers"] = None
    from .bench.power import JtopSampler, TegrastatsSampler

    # bench uses jetson-stats when its service answers, else tegrastats
    info["power_telemetry"] = ("jetson-stats (installed)" if JtopSampler().available else
                               "tegrastats" if TegrastatsSampler().available else None)
    run, skipped = select_backends("all", resolve_device("auto"))
    info["backends"] = {b.name: {"ok": True} for b in run}
    info["backends"].update({s["backend"]: {"ok": False, "reason": s["reason"]} for s in skipped})
    info["backends"] = {n: info["backends"][n] for n in BACKENDS}
    if as_json:
        _print_json(info)
        return
    t = Table(title="deeplab-edge doctor", show_header=False)
    v = env["versions"]
    gpu = env.get("gpu")
    j = env.get("jetson")
    rows = [("python", env["python"]), ("deeplab-edge", v.get("deeplab-edge")),
            ("cpu", f"{env['cpu']} ({env['cpu_count']} cores)"),
            ("torch", f"{info['torch']['version']} (CUDA {info['torch']['cuda'] or 'none'}, cuDNN "
                      f"{info['torch']['cudnn'] or 'none'})"),
            ("gpu", f"{gpu['name']} (sm {gpu['compute_capability']}, {gpu['memory_gib']:.0f} GiB, driver "
                    f"{gpu['driver']})" if gpu else "none"),
            ("triton", v.get("triton") or "not installed"), ("tensorrt", v.get("tensorrt") or "not installed"),
            ("onnxruntime", f"{v.get('onnxruntime')} ({', '.join(info['onnxruntime_providers'] or [])})"
                            if v.get("onnxruntime") else "not installed"),
            ("jetson", f"{j['model']}, L4T {j['l4t']}, power mode {j.get('power_mode')}" if j else "no"),
            ("power telemetry", info["power_telemetry"] or "none (neither jetson-stats nor tegrastats: bench reports "
                                                           "no power)")]
    for k, val in rows:
        t.add_row(k, str(val))
    out.print(t)
    t = Table(title="bench backends on this machine")
    t.add_column("backend")
    t.add_column("works")
    t.add_column("why not")
    for name, b in info["backends"].items():
        t.add_row(name, "[green]yes[/]" if b["ok"] else "[red]no[/]", b.get("reason", ""))
    out.print(t)


# ----------------------------------------------------------------------------- compare

@main.command("compare")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Labelled dataset folder.")
@click.option("--num-images", type=COUNT, help="Evaluate only the first N images.")
@click.option("--warmup", default=2, type=NONNEG, show_default=True, help="Untimed forward passes per model first.")
@click.option("--threads", type=THREADS, help="Intra-op threads for PyTorch and ONNX Runtime (default: all cores).")
@output_option("file", "Write the results as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def compare_cmd(models, data, num_images, warmup, threads, output, as_json) -> None:
    """Accuracy against speed of several models on the same images, in one run.

    MODELS are checkpoints (.pt/.pth, PyTorch fp32), ONNX files (FP32, TensorRT QDQ emulated,
    CPU INT8 — told apart by their metadata) or .tflite files. Latency is the model call only
    (preprocessing and postprocessing are reported apart), median over the images after
    WARMUP untimed calls; speed-up and mIoU change are against the first model."""
    import numpy as np
    import torch

    from .data.datasets import open_dataset
    from .inference import Segmenter, evaluate
    from .runtime import backend_for, open_runner

    if threads:
        torch.set_num_threads(threads)
    ds = open_dataset(data).subset(num_images)
    rows = []
    for path in models:
        runner = open_runner(path, device="auto" if backend_for(path) == "torch" else "cpu", threads=threads)
        seg, info = Segmenter(runner, runner.preprocess, runner.num_classes), runner.info
        kind = info.get("precision") or "fp32"
        method = (info.get("calibration") or {}).get("method")
        if method:
            kind += f" ({method})"
        backend = info["backend"]
        if backend == "torch":
            backend += f" ({info['device']})"
        elif backend == "onnxruntime" and not info.get("ort_graph_optimizations", True):
            backend += " (QDQ emulated)"
        if ds.num_classes != seg.num_classes:
            raise DeepLabEdgeError(f"{path}: predicts {seg.num_classes} classes, the data has {ds.num_classes}; compare models trained "
                                   "for this dataset")
        image = ds.load(0)[1]
        for _ in range(warmup):
            seg.predict(image)
        with _progress() as prog:
            task = prog.add_task(path.name, total=len(ds))
            res = evaluate(seg, ds, on_image=lambda _s: prog.advance(task))
        calls = np.asarray(seg.timing.model_calls) * 1e3
        rows.append({"model": str(path), "backend": backend, "precision": kind, "miou": res["miou"],
                     "pixel_acc": res["pixel_acc"], "latency_ms_p50": float(np.percentile(calls, 50)),
                     "latency_ms_p90": float(np.percentile(calls, 90)),
                     "preprocess_ms": 1e3 * res["timing"]["preprocess_s"] / res["images"],
                     "postprocess_ms": 1e3 * res["timing"]["postprocess_s"] / res["images"],
                     "bytes": path.stat().st_size, "images": res["images"]})
    base = rows[0]
    for r in rows:
        r["miou_change_points"] = 100 * (r["miou"] - base["miou"])
        r["speedup"] = base["latency_ms_p50"] / r["latency_ms_p50"]
    import platform

    result = {"data": str(data), "images": len(ds), "threads": threads or torch.get_num_threads(),
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "torch": torch.__version__}, "rows": rows}
    if _emit(result, output, as_json):
        return
    t = Table(title=f"{len(ds)} images of {data} (model latency: median per image, {result['threads']} threads)")
    for col, just in [("model", "left"), ("backend", "left"), ("precision", "left"), ("mIoU %", "right"),
                      ("Δ points", "right"), ("ms p50", "right"), ("ms p90", "right"), ("speed-up", "right"),
                      ("MB", "right")]:
        t.add_column(col, justify=just)
    for r in rows:
        t.add_row(r["model"], r["backend"], r["precision"], _pct(r["miou"]),
                  f"{r['miou_change_points']:+.2f}", f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_p90']:.1f}",
                  f"{r['speedup']:.2f}x", f"{r['bytes'] / 1e6:.1f}")
    out.print(t)


# ----------------------------------------------------------------------------- kernels

def _int_list(value: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise DeepLabEdgeError(f"{what} {value!r} is not a list of integers; give comma-separated integers >= 1, "
                               "e.g. 1,8") from None
    if not out or min(out) < 1:
        raise DeepLabEdgeError(f"{what} {value!r} has a value below 1; give comma-separated integers >= 1, e.g. 1,8")
    return out


def _choices(value: str, allowed, what: str) -> list[str]:
    out = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in out if v not in allowed]
    if bad or not out:
        raise DeepLabEdgeError(f"unknown {what} {', '.join(bad) if bad else repr(value)}; "
                               f"choose from {', '.join(allowed)}")
    return out


@main.group("kernels")
def kernels_group() -> None:
    """Triton kernels: compile them for real GPUs (no GPU needed) and benchmark them."""


@kernels_group.command("compile")
@click.option("--arch", "archs", default="87,90", show_default=True,
              help="Compute capabilities: 87 (Jetson Orin), 90 (H100).")
@click.option("--dtype", "dtypes", default="fp16,bf16,fp32", show_default=True, help="Input dtypes.")
@output_option("file", "Write the results as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def kernels_compile(archs, dtypes, output, as_json) -> None:
    """Compile every kernel in every autotune config to a cubin for each GPU architecture,
    on this machine (Triton's bundled ptxas), and report registers, spills, shared memory
    and occupancy per config. Exits 1 when a config spills or does not fit shared memory."""

    from .bench.env import environment
    from .kernels.compile import ARCHS, compile_all, kernel_specs

    ccs = [int(a) for a in _choices(archs, [str(a) for a in ARCHS], "architecture")]
    specs = kernel_specs(dtypes=_choices(dtypes, ["fp16", "bf16", "fp32"], "dtype"))
    with _progress() as prog:
        task = prog.add_task("compiling", total=len(specs) * len(ccs))

        def step(spec, cc):
            prog.update(task, advance=1, description=f"sm_{cc} {spec.kernel} {spec.dtype} {spec.label}")

        results = compile_all(specs, ccs, progress=step)
    rows = [r.as_dict() for r in results]
    failed = [r for r in rows if not r["ok"]]
    result = {"environment": environment(), "archs": {f"sm_{cc}": ARCHS[cc].name for cc in ccs}, "results": rows}
    if not _emit(result, output, as_json):
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
                      "[green]yes[/]" if r["ok"] else f"[red]{r['problem']}[/]")
        out.print(t)
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
@click.option("--batch", "batches", default="1,8", show_default=True, help="Batch sizes.")
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

    from .bench import kernels as kb
    from .bench.env import environment

    names = list(kb.SHAPES) if shapes == "all" else _choices(shapes, list(kb.SHAPES), "shape")
    bs = _int_list(batches, "--batch")
    dts = _choices(dtypes, ["fp16", "bf16", "fp32"], "dtype")
    provs = _choices(providers, list(kb.PROVIDERS), "provider")
    compiled = None
    if not no_compile_check:
        from .kernels.compile import compile_all, kernel_specs

        with console.status("compiling the kernels for sm_87 and sm_90"):
            compiled = [r.as_dict() for r in compile_all(kernel_specs(dtypes=dts))]
    with console.status("counting FLOPs, launches and bytes"):
        analytic = kb.analyse(names, bs, dts, compiled)
    result: dict[str, Any] = {"environment": environment(), "analytic": analytic, "crf_analytic": kb.crf_estimate(),
                              "crf_lattice_analytic": kb.lattice_estimate(), "timings": None}
    if torch.cuda.is_available():
        with _progress() as prog:
            task = prog.add_task("timing", total=len(names) * len(bs) * len(dts) * len(provs))
            result["timings"] = kb.run(names, bs, dts, provs, warmup, iters,
                                       progress=lambda d: prog.update(task, advance=1, description=d))
    else:
        result["timing_skipped"] = "no CUDA GPU on this machine: GPU times are roofline estimates, not measurements"
    if _emit(result, output, as_json):
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
        for col in ("shape", "batch", "dtype", "provider", "ms", "p10-p90", "TFLOP/s", "GB/s", "% roofline",
                    "vs torch"):
            t.add_column(col, justify="left" if col in ("shape", "provider") else "right", no_wrap=col == "shape")
        for r in result["timings"]:
            t.add_row(r["shape"], str(r["batch"]), r["dtype"], r["provider"], f"{r['median_ms']:.3f}",
                      f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}", f"{r['tflops']:.1f}", f"{r['gbs']:.0f}",
                      f"{100 * r.get('fraction_of_roofline', float('nan')):.0f}",
                      f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-")
        out.print(t)
    else:
        console.print(f"[yellow]note:[/] {result['timing_skipped']}", highlight=False)


# ----------------------------------------------------------------------------- crf

@main.group("crf")
def crf_group() -> None:
    """Dense CRF (Krähenbühl & Koltun 2011) as DeepLab uses it: benchmark its implementations.

    To post-process predictions, use --crf on eval and predict."""


@crf_group.command("bench")
@click.option("--weights", type=click.Path(path_type=Path), required=True, help="deeplab-edge checkpoint (.pt).")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Labelled dataset folder (VOC, ...).")
@click.option("--methods", default="pydensecrf,torch,triton,window,triton-window", show_default=True,
              help="CRF implementations, run side by side; those that cannot run here are listed as skipped.")
@click.option("--preset", type=click.Choice(["deeplab-v2", "deeplab-v1"]), default="deeplab-v2", show_default=True)
@click.option("--iterations", type=NONNEG, help="Mean-field iterations (default: the preset's, 10).")
@click.option("--num-images", type=COUNT, help="Use only the first N images.")
@click.option("--speed-images", default=2, type=NONNEG, show_default=True,
              help="Images also timed at --size x --size (with and without label pruning).")
@click.option("--size", default=513, type=SIDE, show_default=True, help="Side of the reference-speed inputs.")
@click.option("--device", default="auto", show_default=True, help="Device of the network and the torch/triton CRFs.")
@output_option("file", "Write the results as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def crf_bench(weights, data, methods, preset, iterations, num_images, speed_images, size, device, output,
              as_json) -> None:
    """Time per image and mIoU gain of pydensecrf, the lattice in PyTorch and in Triton, and
    the window approximation in PyTorch and in Triton, on the same network outputs in one run."""
    from .bench.crf import CRF_METHODS, run_crf_bench
    from .bench.env import environment
    from .crf import PRESETS, TRITON_METHODS, with_overrides
    from .data.datasets import open_dataset
    from .runtime import resolve_device

    wanted = _choices(methods, list(CRF_METHODS), "CRF method")
    dev = resolve_device(device)
    skipped = {}
    if any(m in TRITON_METHODS for m in wanted):  # one check for both Triton methods: same device, same answer
        from .kernels.device import triton_unavailable

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
    params = with_overrides(PRESETS[preset], iterations=iterations)
    segmenter, _, info = _segmenter(weights, None, None, None, str(dev), "fp32", None)
    ds = open_dataset(data, "auto", "val").subset(num_images)
    if ds.kind == "folder":
        raise DeepLabEdgeError(f"{data}: no labelled dataset found; the CRF benchmark needs labels")
    with _progress() as prog:
        task = prog.add_task("crf", total=len(ds) * len(run_methods))
        res = run_crf_bench(segmenter, ds, run_methods, params, device=dev, size=size, speed_images=speed_images,
                            estimate_lattice="triton" in skipped,
                            progress=lambda d: prog.update(task, advance=1, description=d))
    res.update({"environment": environment(), "model": info, "data": str(data),
                "skipped": [{"method": m, "reason": r} for m, r in skipped.items()]})
    if _emit(res, output, as_json):
        return
    t = Table(title=f"Dense CRF on {res['images']} images of {data} ({params.iterations} iterations, preset {preset})")
    for col in ("method", "device", "mIoU %", "gain (points)", "% of pydensecrf gain", "s / image",
                f"s @ {size}² ", f"s @ {size}² all labels", "vs pydensecrf"):
        t.add_column(col, justify="left" if col in ("method", "device") else "right")
    for r in res["rows"]:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        t.add_row(r["method"], r.get("device", "-"), _pct(r["miou"]), f"{r['gain_points']:+.2f}",
                  fmt(None if r.get("fraction_of_pydensecrf_gain") is None else 100 * r["fraction_of_pydensecrf_gain"],
                      ".0f"),
                  fmt(r.get("s_per_image_native"), ".3f"), fmt(r.get(f"s_per_image_{size}x{size}"), ".3f"),
                  fmt(r.get(f"s_per_image_{size}x{size}_all_labels"), ".3f"),
                  fmt(r.get("speedup_vs_pydensecrf"), ".2f") + ("x" if r.get("speedup_vs_pydensecrf") else ""))
    out.print(t)
    for m, reason in skipped.items():
        console.print(f"[yellow]skipped {m}:[/] {reason}", highlight=False)
    est = res.get("triton_lattice_estimate")
    if est:
        out.print(f"triton (lattice) estimate, not a measurement: {est['mean_ms']['sm_90']:.2f} ms per image on H100, "
                  f"{est['mean_ms']['sm_87']:.1f} ms on Orin (roofline lower bound at {size}x{size}, from the "
                  f"{len(est['images'])} timed images' real lattice sizes)")


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
              help="Images to calibrate the INT8 models on (default: the benchmark's own images, flagged).")
@click.option("--calib-num", default=256, type=COUNT, show_default=True, help="Calibration images (at most).")
@click.option("--calib-method", type=click.Choice(["entropy", "minmax", "percentile", "mse"]), default="entropy",
              show_default=True, help="Activation ranges of the TensorRT QDQ model and cache.")
@click.option("--engine", "engine_files", multiple=True,
              help="A TensorRT engine for the trt-* backends, as PRECISION=FILE (repeatable).")
@click.option("--tflite", type=click.Path(path_type=Path),
              help="A .tflite model for the litert-int8 backend (LiteRT, XNNPACK), e.g. the file the checkpoint was "
                   "imported from: Google's own runtime beside the others.")
@output_option("dir", "Keep the ONNX / INT8 models in this folder and reuse them next time (default: a "
                      "temporary folder).", names=("--artifacts",))
@click.option("--tag", callback=_check_tag,
              help="Name of the result files: letters, digits, '.', '_', '-' (default: from this machine's GPU or CPU).")
@output_option("dir", "Folder for bench_<tag>.json, .csv and .png (e.g. bench/results/).")
@click.option("--no-plot", is_flag=True, help="Skip the PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the result document as JSON instead of tables.")
@click.pass_context
def bench_group(ctx, weights, arch, data, kind, split, num_images, backends, crf_methods, crf_preset, batches, iters,
                warmup, device, threads, calib_data, calib_num, calib_method, engine_files, tflite, artifacts, tag,
                output, no_plot, as_json) -> None:
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
    import tempfile

    import torch

    from .bench.harness import CRF_CHOICES, default_tag, device_label, run_bench, select_backends
    from .bench.power import power_sampler
    from .bench.report import write_results
    from .data.datasets import open_dataset
    from .runtime import resolve_device

    if weights is None or data is None:
        raise DeepLabEdgeError("bench needs --weights FILE and --data DIR (see `deeplab-edge bench --help`)")
    if not Path(weights).is_file():
        raise DeepLabEdgeError(f"{weights}: checkpoint not found; create one with `deeplab-edge import` or pass a .pt")
    if tflite is not None and not Path(tflite).is_file():
        raise DeepLabEdgeError(f"--tflite {tflite}: file not found; check the path")
    bs = sorted(set(_int_list(batches, "--batch")) | {1})
    crfs = _choices(crf_methods, list(CRF_CHOICES), "CRF option")
    engines = _engine_map(engine_files)
    dev = resolve_device(device)
    chosen, skipped = select_backends(backends, dev, tflite=tflite is not None)
    if not chosen:
        raise DeepLabEdgeError("no backend can run on this machine with these options: " + "; ".join(
            f"{s['backend']} ({s['reason']})" for s in skipped) + "; pick others with --backends (see "
            "`deeplab-edge doctor`)")
    ds = open_dataset(data, kind, split).subset(num_images)
    sampler = power_sampler()
    with tempfile.TemporaryDirectory(prefix="deeplab-edge-bench-") as tmp, _progress() as prog:
        state: dict[str, Any] = {}

        def progress(desc: str, total: int):
            if "task" in state:
                prog.remove_task(state["task"])
            state["task"] = prog.add_task(desc, total=total)
            return lambda _item: prog.advance(state["task"])

        result = run_bench(Path(weights), ds, backends=chosen, crf_methods=crfs, crf_preset=crf_preset, batches=bs,
                           warmup=warmup, iters=iters, device=device, arch=arch, threads=threads,
                           work=Path(artifacts) if artifacts else Path(tmp), calib_data=calib_data,
                           calib_num=calib_num, calib_method=calib_method, engines=engines, tflite=tflite,
                           power=sampler, skipped=skipped, settings={"split": split, "requested": backends},
                           progress=progress, log=lambda s: console.print(f"[dim]{s}[/]", highlight=False))
    env = result["environment"]
    files = write_results(result, Path(output), tag or default_tag(env), png=not no_plot) if output else {}
    result_files = {"files": files} if files else {}
    if as_json:
        _print_json({**result, **result_files})
        return
    _bench_table(result, title=f"{len(ds)} images of {data} on {device_label(env)}")
    for s in result["skipped"]:
        console.print(f"[yellow]skipped {s['backend']}:[/] {s['reason']}", highlight=False, soft_wrap=True)
    for s in result["skipped_crf"]:
        console.print(f"[yellow]skipped CRF {s['crf']}:[/] {s['reason']}", highlight=False, soft_wrap=True)
    cal = (result.get("artifacts") or {}).get("calibration") or {}
    if cal.get("note"):
        console.print(f"[yellow]note:[/] {cal['note']}", highlight=False, soft_wrap=True)
    for k, v in files.items():
        out.print(f"[green]wrote[/] {v}")


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
            r["backend"], r["crf"], _pct(r["miou"]), f"{r.get('miou_delta_points', 0):+.2f}",
            f"{r['latency_ms']:.1f}" if speed and r["latency_ms"] else "emulated",
            f"{r['speedup']:.2f}x" if r.get("speedup") else "-",
            f"{b1['p50_ms']:.1f}/{b1['p90_ms']:.1f}/{b1['p99_ms']:.1f}" if b1 and speed else "-",
            f"{r['crf_ms']['p50']:.0f}" if r.get("crf_ms") else "-"]
        cells += [f"{by_b[b]['images_per_s']:.1f}" if b in by_b and speed else "-" for b in batch_sizes]
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
@click.option("--tag", default="compare", show_default=True, callback=_check_tag, help="Name of the merged files.")
@output_option("dir", "Folder for the merged JSON, CSV and PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the merged document as JSON.")
def bench_compare(results, tag, output, as_json) -> None:
    """Merge result files from several machines (e.g. a desktop GPU and a Jetson Orin)
    into one table and one plot; the Pareto front is recomputed over all of them."""
    from .bench.report import load_result, merge, write_results

    if len(results) < 2:
        console.print("[yellow]note:[/] one result file: nothing to merge, showing it alone", highlight=False)
    merged = merge([(str(p), load_result(p)) for p in results])
    if not merged["same_data"]:
        console.print("[yellow]warning:[/] the files measured different data (or numbers of images): their mIoU "
                      "columns are not comparable", highlight=False)
    files = write_results(merged, Path(output), tag) if output else {}
    if as_json:
        _print_json({**merged, **({"files": files} if files else {})})
        return
    _bench_table(merged, title=f"{len(merged['rows'])} cells from {len(merged['sources'])} machines")
    for k, v in files.items():
        out.print(f"[green]wrote[/] {v}")


bench_group.add_command(kernels_bench, "kernels")


# ----------------------------------------------------------------------------- info

@main.command("info")
@click.argument("weights", type=click.Path(path_type=Path))
@click.option("--arch", help="Architecture of a plain state dict (guessed from its keys if omitted).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_cmd(weights: Path, arch: str | None, as_json: bool) -> None:
    """Show what a checkpoint holds: architecture, classes, preprocessing, source."""
    from .checkpoint import load_checkpoint
    from .models import count_params

    loaded = load_checkpoint(weights, arch=arch)
    res = {"file": str(weights), "config": loaded.model.config, "params": count_params(loaded.model),
           **loaded.meta}
    if as_json:
        _print_json(res)
        return
    t = Table(show_header=False, title=str(weights))
    for k in ("config", "params", "classes", "preprocess", "source", "sha256"):
        if k in res:
            v = res[k]
            if k == "config":
                v = {kk: vv for kk, vv in v.items() if kk != "blocks"}
            t.add_row(k, json.dumps(v, default=str) if not isinstance(v, str) else v)
    out.print(t)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
