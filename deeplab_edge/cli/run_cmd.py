"""``eval``, ``predict`` and ``compare``: a model file through the runtime on real images."""

from __future__ import annotations

import functools
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..errors import DeepLabEdgeError
from .app import main
from .common import (COUNT, CRF_ITERATIONS, NONNEG, SIDE, THREADS, Finite, console, emit, finite_float, out,
                     output_option, output_stride_option, pct, print_json, progress_bar)

# ----------------------------------------------------------------------------- shared

MODEL_OPTIONS = ("weights", "tflite", "onnx_path", "engine_path", "arch", "device", "precision", "input_size",
                 "output_stride", "crf_method", "crf_preset", "crf_iterations", "backend", "scales", "flip")


def model_options(f):
    """The model options of eval / predict, handed to the command as one dict ``model`` (see
    :func:`model_from_options`)."""
    command = f

    @functools.wraps(command)
    def f(**kwargs):  # click sees the command's own options (copied by wraps) and the model options below
        return command(model={name: kwargs.pop(name) for name in MODEL_OPTIONS}, **kwargs)

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
    f = click.option("--input-size", type=SIDE,
                     help="Override the checkpoint's input side (resize long side + pad).")(f)
    f = output_stride_option()(f)
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
    f = click.option("--crf-iterations", type=CRF_ITERATIONS,
                     help="Mean-field iterations (default: the preset's, 10).")(f)
    f = click.option("--backend", type=click.Choice(["torch", "triton"]), default="torch", show_default=True,
                     help="PyTorch model as is, or with its ASPP head swapped for the fused Triton kernels "
                          "(needs a CUDA GPU; TRITON_INTERPRET=1 runs them slowly on the CPU).")(f)
    f = click.option("--scales", callback=parse_scales, default="1", show_default=True,
                     help="Test-time input scales, comma-separated (e.g. 0.5,0.75,1,1.25,1.5,1.75): the logits at "
                          "each scale are averaged (DeepLab's multi-scale inputs; PyTorch checkpoints only).")(f)
    f = click.option("--flip", is_flag=True, help="Also average the logits of the mirrored image (PyTorch "
                                                 "checkpoints only).")(f)
    return f


def parse_scales(ctx, param, value: str) -> tuple[float, ...]:
    items = [v.strip() for v in value.split(",")]
    if "" in items:
        raise click.BadParameter(f"{value!r} has an empty item; give numbers separated by single commas, e.g. "
                                 "0.75,1,1.25", ctx, param)
    try:
        scales = tuple(finite_float(v, "scale") for v in items)
    except DeepLabEdgeError as e:
        raise click.BadParameter(str(e), ctx, param) from None
    if not scales or min(scales) < 0.1 or max(scales) > 4:
        raise click.BadParameter(f"{value!r} has a scale outside 0.1-4 (or none); give e.g. 0.75,1,1.25", ctx, param)
    return scales


def _crf_stage(method: str, preset: str, iterations: int | None, device: str):
    """The --crf options as a Segmenter post-processing stage (None for --crf none)."""
    if method == "none":
        if iterations is not None:
            raise DeepLabEdgeError("--crf-iterations needs a CRF; add --crf torch (or pydensecrf, triton, window, "
                                   "triton-window)")
        return None
    from ..crf import DEVICE_METHODS, PRESETS, CRFStage, with_overrides
    from ..runtime import resolve_device

    params = with_overrides(PRESETS[preset], iterations=iterations)
    dev = resolve_device(device) if method in DEVICE_METHODS else "cpu"
    return CRFStage(method, params, dev)


def model_from_options(model: dict):
    """:func:`model_runner` for the options of :func:`model_options`."""
    m = model
    return model_runner(m["weights"], m["tflite"], m["onnx_path"], m["arch"], m["device"], m["precision"],
                        m["input_size"], backend=m["backend"], crf=(m["crf_method"], m["crf_preset"],
                                                                   m["crf_iterations"]),
                        engine=m["engine_path"], scales=m["scales"], flip=m["flip"], output_stride=m["output_stride"])


def calibration_overlap(model: dict, ds) -> dict | None:
    """How many of ``ds``'s images calibrated the INT8 model in ``model`` (an ONNX model's metadata or an
    engine's manifest records their digests); None for models that record none."""
    import json

    from ..data.overlap import recorded_overlap
    from ..engine import manifest_path
    from ..export import read_metadata

    recorded = None
    if model.get("onnx_path") is not None:
        recorded = (read_metadata(model["onnx_path"]).get("calibration") or {}).get("images_sha1")
    elif model.get("engine_path") is not None and manifest_path(model["engine_path"]).is_file():
        man = json.loads(manifest_path(model["engine_path"]).read_text())
        recorded = (man.get("calibration") or {}).get("images_sha1")
    if not recorded:
        return None
    shared = recorded_overlap(recorded, [smp.image for smp in ds.samples])
    return {"images": len(shared), "calibration_images": len(recorded), "example": shared[0].name if shared else None}


def model_runner(weights: Path | None, tflite: Path | None, onnx_path: Path | None, arch: str | None, device: str,
               precision: str, input_size: int | None, threads: int | None = None, backend: str = "torch",
               crf: tuple[str, str, int | None] = ("none", "deeplab-v2", None), engine: Path | None = None,
               scales: tuple[float, ...] = (1.0,), flip: bool = False, output_stride: int | None = None):
    """(Segmenter, class names or None, info) for the model options of eval / predict / compare."""
    from ..inference import Segmenter
    from ..runtime import open_runner

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
                         input_size=input_size, output_stride=output_stride)
    for w in runner.info.get("warnings") or []:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    info = {k: v for k, v in runner.info.items() if k != "warnings"}
    info.update({"crf": crf[0]} if stage is None else {"crf": crf[0], "crf_params": stage.params.as_dict()})
    if (scales != (1.0,) or flip) and runner.info["backend"] not in ("torch", "compile", "triton"):
        raise DeepLabEdgeError(f"--scales/--flip run the model at other input sizes; a {runner.info['backend']} "
                               "model's input is fixed, so use its PyTorch checkpoint (--weights)")
    if scales != (1.0,) or flip:
        info.update(scales=list(scales), flip=flip)
    return (Segmenter(runner, runner.preprocess, runner.num_classes, stage, scales=scales, flip=flip),
            runner.classes or None, info)

# ----------------------------------------------------------------------------- eval

@main.command("eval")
@model_options
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
def eval_cmd(model, data, kind, split, num_images, batch_size, reference_dir, output, as_json) -> None:
    """Evaluate mIoU, per-class IoU and pixel accuracy on a labelled dataset.

    mIoU is the mean over classes present in the labels or the predictions (non-empty
    union), from one confusion matrix over all images; label 255 (and CamVid's void) is
    ignored."""
    from ..data.datasets import open_dataset

    if reference_dir is not None and not Path(reference_dir).is_dir():
        raise DeepLabEdgeError(f"{reference_dir}: reference folder not found; pass a folder of <id>.png label maps")
    segmenter, classes, info = model_from_options(model)
    ds = open_dataset(data, kind, split).subset(num_images)
    if ds.kind == "folder":
        raise DeepLabEdgeError(f"{data}: no VOC/Cityscapes/CamVid layout found; eval needs labels "
                               "(use predict for plain images)")
    if ds.num_classes != segmenter.num_classes:
        raise DeepLabEdgeError(f"the model predicts {segmenter.num_classes} classes but {ds.kind} has "
                               f"{ds.num_classes}; use a model trained for this dataset")
    ds.check_labelled_pixels("score")  # before the model runs on every image
    classes = classes or ds.classes
    # under torchrun: every world-th image per process, the confusion matrices summed
    from .. import distributed
    from ..runtime import resolve_device

    dev = resolve_device(info.get("device", "cpu"))
    dinfo = distributed.init(dev)
    try:
        with distributed.peer_failures(dinfo), progress_bar() as prog:
            task = prog.add_task(f"eval {ds.kind}/{split}", total=-(-len(ds) // dinfo.world)) if dinfo.is_main \
                else None
            res = distributed.evaluate_sharded(segmenter, ds, dinfo, dev, batch_size=batch_size,
                                               reference_dir=reference_dir,
                                               on_image=lambda _sid: prog.advance(task) if task is not None else None)
    finally:
        distributed.shutdown()
    if not dinfo.is_main:
        return
    res = {"model": info, "data": {"path": str(data), "kind": ds.kind, "split": split},
           "classes": classes, **res}
    overlap = calibration_overlap(model, ds)
    if overlap is not None:
        res["calibration_overlap"] = overlap
        if overlap["images"]:
            console.print(f"[bold yellow]warning:[/] {overlap['images']} of the {res['images']} evaluated images "
                          f"(e.g. {overlap['example']}) calibrated this INT8 model: its accuracy here is not held out; "
                          "evaluate on other images (e.g. the val split when it was calibrated on train)",
                          highlight=False, soft_wrap=True)
    if emit(res, output, as_json):
        return
    t = Table(title=f"{ds.kind} {split}: {res['images']} images")
    t.add_column("class")
    t.add_column("IoU %", justify="right")
    t.add_column("acc %", justify="right")
    for name, iou, acc in zip(classes, res["class_iou"], res["class_acc"]):
        if iou is not None:
            t.add_row(name, pct(iou), pct(acc))
    out.print(t)
    line = (f"mIoU [bold]{pct(res['miou'])}%[/] over {res['classes_counted']} classes, pixel acc "
            f"{pct(res['pixel_acc'])}%, mean acc {pct(res['mean_acc'])}%")
    if res.get("reference_agreement") is not None:
        line += f", agreement with reference {pct(res['reference_agreement'])}%"
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
@model_options
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option("--video", type=click.Path(path_type=Path), help="Segment every frame of a video file instead.")
@click.option("--camera", type=NONNEG, help="Segment a live camera (OpenCV index, e.g. 0) instead.")
@click.option("--max-frames", type=COUNT, help="With --video/--camera: stop after N frames.")
@output_option("dir", "Output folder (created if missing).", required=True)
@click.option("--alpha", default=0.5, type=Finite(0, 1), show_default=True,
              help="Overlay opacity of the colour mask.")
@click.option("--json", "as_json", is_flag=True, help="Print per-image class fractions as JSON.")
def predict_cmd(model, inputs, video, camera, max_frames, output, alpha, as_json) -> None:
    """Segment images (files or folders): writes <name>_mask.png (palette PNG whose pixel
    values are class indices) and <name>_overlay.png (mask blended over the image).

    With --video FILE or --camera N: every frame, with the live frame rate on the console,
    into <name>_overlay.mp4 (needs OpenCV: pip install 'deeplab-edge[video]'; JetPack has it)."""
    import numpy as np

    from ..data.datasets import ImageFolder, voc_palette
    from ..data.io import save_png
    from ..visualize import overlay

    if sum(bool(x) for x in (inputs, video is not None, camera is not None)) != 1:
        raise DeepLabEdgeError(f"{'nothing' if not (inputs or video or camera is not None) else 'several sources'} to "
                               "segment; give image files or folders, or --video FILE, or --camera N (one of them)")
    if video is not None and not Path(video).is_file():
        raise DeepLabEdgeError(f"{video}: video file not found; check the path")
    segmenter, classes, info = model_from_options(model)
    if video is not None or camera is not None:
        from ..stream import segment_stream

        res = segment_stream(segmenter, str(video) if video is not None else camera, output, alpha=alpha,
                             max_frames=max_frames, classes=classes, console=console)
        if as_json:
            print_json({"model": info, **res})
        else:
            out.print(f"[green]wrote[/] {res['output']}: {res['frames']} frames at {res['fps']:.1f} FPS end to end "
                      f"(model {res['model_ms_p50']:.1f} ms median per frame)"
                      + (f"; stopped by {res['stopped_by']}" if res["stopped_by"] else ""))
        return
    ds = ImageFolder(list(inputs))
    stems = {s.id: s.id.replace("/", "_") for s in ds.samples}
    if len(set(stems.values())) != len(stems):
        same = [i for i in stems if list(stems.values()).count(stems[i]) > 1][:2]
        raise DeepLabEdgeError(f"inputs {same[0]!r} and {same[1]!r} would both be written as "
                               f"{stems[same[0]]}_mask.png; rename one or predict them into different -o folders")
    from ..data.io import probe_image
    from ..outputs import refuse_writing_over

    for smp in ds.samples:  # every input opens (header only) before the first mask is written
        probe_image(smp.image)
    refuse_writing_over([output / f"{stem}_{what}.png" for stem in stems.values() for what in ("mask", "overlay")],
                        {"image": [s.image for s in ds.samples]})
    classes = classes or [f"class_{i}" for i in range(segmenter.num_classes)]
    palette = voc_palette()
    results = []
    with progress_bar() as prog:
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
        print_json({"model": info, "images": results})
        return
    t = Table(title=f"{len(results)} images -> {output}")
    t.add_column("image")
    t.add_column("classes (pixel %)")
    for r in results:
        t.add_row(r["id"], ", ".join(f"{k} {100 * v:.1f}" for k, v in sorted(r["classes"].items(),
                                                                           key=lambda kv: -kv[1])))
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
    from ..bench.side_by_side import compare_models
    from ..data.datasets import open_dataset

    ds = open_dataset(data).subset(num_images)
    with progress_bar() as prog:
        def progress(desc: str, total: int):
            task = prog.add_task(desc, total=total)
            return lambda: prog.advance(task)

        result = compare_models(models, ds, warmup=warmup, threads=threads, progress=progress)
    rows = result["rows"]
    if emit(result, output, as_json):
        return
    t = Table(title=f"{len(ds)} images of {data} (model latency: median per image, {result['threads']} threads)")
    for col, just in [("model", "left"), ("backend", "left"), ("precision", "left"), ("mIoU %", "right"),
                      ("Δ points", "right"), ("ms p50", "right"), ("ms p90", "right"), ("speed-up", "right"),
                      ("MB", "right")]:
        t.add_column(col, justify=just)
    for r in rows:
        t.add_row(r["model"], r["backend"], r["precision"], pct(r["miou"]),
                  f"{r['miou_change_points']:+.2f}", f"{r['latency_ms_p50']:.1f}", f"{r['latency_ms_p90']:.1f}",
                  f"{r['speedup']:.2f}x", f"{r['bytes'] / 1e6:.1f}")
    out.print(t)
