"""``eval`` and ``predict``: a model file through the runtime on real images."""

from __future__ import annotations

import functools
from pathlib import Path

import click
from rich.table import Table

from ..errors import DeepLabEdgeError
from .app import main
from .common import (InputPath, COUNT, CRF_ITERATIONS, NONNEG, SIDE, THREADS, Finite, console, emit, out, output_option,
                     output_stride_option, parse_scales, pct, print_json, print_warning, progress_bar)

# ----------------------------------------------------------------------------- shared

# The ModelSpec fields these options fill, named as the spec names them (a test keeps them in step); written
# here so that the CLI starts without importing torch.
MODEL_OPTIONS = ("weights", "tflite", "onnx_path", "engine_path", "arch", "device", "precision", "input_size",
                 "output_stride", "crf_method", "crf_preset", "crf_iterations", "crf_params", "backend", "scales", "flip")


def model_options(f):
    """The model options of eval / predict, handed to the command as one
    :class:`~deeplab_edge.runtime.spec.ModelSpec` ``model`` (opened with ``open_segmenter``)."""
    command = f

    @functools.wraps(command)
    def f(**kwargs):  # click sees the command's own options (copied by wraps) and the model options below
        from ..runtime.spec import ModelSpec

        return command(model=ModelSpec(**{name: kwargs.pop(name) for name in MODEL_OPTIONS}), **kwargs)

    f = click.option("--weights", type=InputPath(path_type=Path),
                     help="deeplab-edge checkpoint (.pt) or torchvision state dict (.pth).")(f)
    f = click.option("--tflite", type=InputPath(path_type=Path),
                     help="Run a DeepLab .tflite model with the LiteRT interpreter instead.")(f)
    f = click.option("--onnx", "onnx_path", type=InputPath(path_type=Path),
                     help="Run an ONNX model from `deeplab-edge export` with ONNX Runtime instead.")(f)
    f = click.option("--engine", "engine_path", type=InputPath(path_type=Path),
                     help="Run a TensorRT engine from `deeplab-edge build` (its manifest beside it).")(f)
    f = click.option("--arch", help="Architecture of a plain state dict (guessed from its keys if omitted).")(f)
    f = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")(f)
    f = click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32",
                     show_default=True, help="Model dtype (PyTorch backend); OpenVINO's float hint (fp32, bf16).")(f)
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
    f = click.option("--crf-params", type=InputPath(path_type=Path),
                     help="CRF parameters from a file `deeplab-edge crf tune -o` wrote (chosen on held-out "
                          "images), in place of --crf-preset.")(f)
    f = click.option("--backend", type=click.Choice(["torch", "triton", "openvino"]), default="torch",
                     show_default=True,
                     help="torch: the PyTorch model as is; triton: with its ASPP head swapped for the fused Triton "
                          "kernels (needs a CUDA GPU; TRITON_INTERPRET=1 runs them slowly on the CPU); openvino: "
                          "the --onnx model on OpenVINO's CPU plugin instead of ONNX Runtime (a QDQ model's Convs "
                          "in real int8; --precision bf16 is its float hint).")(f)
    f = click.option("--scales", callback=parse_scales, default="1", show_default=True,
                     help="Test-time input scales, comma-separated (e.g. 0.5,0.75,1,1.25,1.5,1.75): the logits at "
                          "each scale are averaged (DeepLab's multi-scale inputs; PyTorch checkpoints only).")(f)
    f = click.option("--flip", is_flag=True, help="Also average the logits of the mirrored image (PyTorch "
                                                 "checkpoints only).")(f)
    return f


# ----------------------------------------------------------------------------- eval

@main.command("eval")
@model_options
@click.option("--data", type=InputPath(path_type=Path), required=True,
              help="Dataset folder: VOC (VOCdevkit/VOC2012), Cityscapes, CamVid (SegNet layout).")
@click.option("--dataset", "kind", type=click.Choice(["auto", "voc", "cityscapes", "camvid"]), default="auto",
              show_default=True, help="Dataset layout.")
@click.option("--split", default="val", show_default=True, help="Split name (ImageSets/Segmentation/<split>.txt...).")
@click.option("--num-images", type=COUNT, help="Evaluate only the first N images.")
@click.option("--batch-size", default=1, type=COUNT, show_default=True, help="Images per forward pass.")
@click.option("--reference", "reference_dir", type=InputPath(path_type=Path),
              help="Folder of <id>.png label maps (e.g. another runtime's predictions): report pixel agreement.")
@output_option("file", "Write the full results as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of tables.")
def eval_cmd(model, data, kind, split, num_images, batch_size, reference_dir, output, as_json) -> None:
    """Evaluate mIoU, per-class IoU and pixel accuracy on a labelled dataset.

    mIoU is the mean over classes present in the labels or the predictions (non-empty
    union), from one confusion matrix over all images; label 255 (and CamVid's void) is
    ignored."""
    from ..data.datasets import open_dataset
    from ..runtime.spec import calibration_overlap, open_segmenter

    if reference_dir is not None and not Path(reference_dir).is_dir():
        raise DeepLabEdgeError(f"{reference_dir}: reference folder not found; pass a folder of <id>.png label maps")
    segmenter, classes, info = open_segmenter(model, warn=print_warning)
    ds = open_dataset(data, kind, split).subset(num_images)
    if ds.kind == "folder":
        raise DeepLabEdgeError(f"{data}: no VOC/Cityscapes/CamVid layout found; eval needs labels "
                               "(use predict for plain images)")
    if ds.num_classes != segmenter.num_classes:
        raise DeepLabEdgeError(f"the model predicts {segmenter.num_classes} classes but {ds.kind} has "
                               f"{ds.num_classes}; use a model trained for this dataset")
    ds.check_labelled_pixels("score")  # before the model runs on every image
    classes = classes or ds.classes
    # under torchrun: every world-th image per process, the confusion matrices summed; the main process prints
    from .. import distributed
    from ..runtime import resolve_device

    with progress_bar() as prog:
        task = []  # the main process's bar, added when it knows its share of the images

        def start(total: int) -> None:
            task.append(prog.add_task(f"eval {ds.kind}/{split}", total=total))

        res = distributed.evaluate_launched(segmenter, ds, resolve_device(info.get("device", "cpu")), on_start=start,
                                            on_image=lambda _sid: prog.advance(task[0]) if task else None,
                                            batch_size=batch_size, reference_dir=reference_dir)
    if res is None:
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
@click.argument("inputs", nargs=-1, type=InputPath())
@click.option("--video", type=InputPath(path_type=Path), help="Segment every frame of a video file instead.")
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
    from ..data.io import probe_image, save_png
    from ..outputs import refuse_writing_over
    from ..runtime.spec import open_segmenter
    from ..stream import segment_stream
    from ..visualize import overlay

    if sum(bool(x) for x in (inputs, video is not None, camera is not None)) != 1:
        raise DeepLabEdgeError(f"{'nothing' if not (inputs or video or camera is not None) else 'several sources'} to "
                               "segment; give image files or folders, or --video FILE, or --camera N (one of them)")
    if video is not None and not Path(video).is_file():
        raise DeepLabEdgeError(f"{video}: video file not found; check the path")
    segmenter, classes, info = open_segmenter(model, warn=print_warning)
    if video is not None or camera is not None:
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
