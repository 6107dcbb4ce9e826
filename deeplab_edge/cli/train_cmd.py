"""``train``: fine-tune DeepLab on a labelled dataset, on one process or many (torchrun)."""

from __future__ import annotations

from typing import Any, Callable

import click
from click.core import ParameterSource

from ..errors import DeepLabEdgeError
from .app import main
from .common import (InputPath, CALIB_METHODS, COUNT, Finite, console, int_list, out, output_option, output_stride_option,
                     pct, print_json, progress_bar)


def _given(ctx: click.Context) -> tuple[str, ...]:
    """The TrainConfig fields the user typed (--resume keeps the run's own value for the others)."""
    names = {"kind": "dataset", "no_flip": "flip", "scale": "scale_min"}
    typed = [p for p in ctx.params if ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE]
    return tuple(names.get(p, p) for p in typed) + (("scale_max",) if "scale" in typed else ())


def _rates(value: str, ctx: click.Context, param: click.Parameter) -> tuple[int, ...]:
    try:
        return tuple(int_list(value, "--aspp-rates"))
    except DeepLabEdgeError as e:
        raise click.BadParameter(str(e).removeprefix("--aspp-rates "), ctx, param) from None


def _progress(prog, task) -> Callable[[dict[str, Any]], None]:
    """The bar's line for train's progress reports: epoch, loss, learning rate, throughput."""
    def show(p: dict[str, Any]) -> None:
        prog.update(task, total=p["steps"], completed=p["step"],
                    description=f"epoch {p['epoch']}/{p['epochs']} loss {p['loss']:.3f} lr {p['lr']:.2e} "
                                f"{p['images_per_s']:.1f} img/s")

    return show


def _log(line: str) -> None:
    console.print(f"[dim]{line}[/]", highlight=False, soft_wrap=True)


@main.command("train")
@click.option("--data", required=True, type=InputPath(), help="Labelled training data (VOC, Cityscapes, CamVid).")
@click.option("--split", default="train", show_default=True, help="Training split.")
@click.option("--val-data", type=InputPath(exists=True), help="Labelled validation data (mIoU per class every --val-every).")
@click.option("--val-split", default="val", show_default=True, help="Validation split.")
@click.option("--dataset", "kind", type=click.Choice(["auto", "voc", "cityscapes", "camvid"]), default="auto",
              show_default=True, help="Dataset layout.")
@click.option("--weights", type=InputPath(), help="Start from this checkpoint; another class count gets a new "
                                                     "classifier, the rest is kept.")
@click.option("--arch", help="Or train this architecture from scratch (see `deeplab-edge models`).")
@click.option("--trunk", type=InputPath(), help="With --arch: start it from this checkpoint's trunk (its weights "
                                                   "copied, the head new; e.g. the imported VOC MobileNetV2).")
@click.option("--aspp-rates", callback=lambda ctx, param, v: None if v is None else _rates(v, ctx, param),
              help="With --arch: the new model's atrous rates, comma-separated (e.g. 6,12,18; default: the "
                   "architecture's).")
@click.option("--separable", is_flag=True,
              help="With --arch deeplabv3plus_mobilenet_v2: atrous separable convolutions in the ASPP and the "
                   "decoder (DeepLab-v3+'s design; 2.7M parameters instead of 5.8M with 11 classes).")
@output_stride_option("Train at this output stride: the checkpoint's weights re-planned (8: finer, about 2.5x "
                      "the compute of 16 for MobileNetV2), or the architecture built so (default: the "
                      "checkpoint's or the architecture's).")
@click.option("--epochs", default=30, type=COUNT, show_default=True)
@click.option("--batch-size", default=8, type=COUNT, show_default=True,
              help="Global batch: split over the processes under torchrun.")
@click.option("--crop", default=321, type=click.IntRange(33, 2049), show_default=True, help="Square training crop.")
@click.option("--lr", default=0.01, type=Finite(0, 10, min_open=True), show_default=True,
              help="Base learning rate of the poly schedule.")
@click.option("--momentum", default=0.9, type=Finite(0, 1, max_open=True), show_default=True)
@click.option("--weight-decay", default=4e-5, type=Finite(0, 1), show_default=True)
@click.option("--scale", default=(0.5, 2.0), type=(Finite(0.05, 8), Finite(0.05, 8)),
              show_default=True, help="Random scale range MIN MAX.")
@click.option("--no-flip", is_flag=True, help="No random horizontal flips.")
@click.option("--freeze-bn", is_flag=True, help="Keep batch-norm statistics and parameters fixed.")
@click.option("--dropout", type=Finite(0, 1, max_open=True),
              help="Override the head's dropout probability (0 turns it off; default: the model's).")
@click.option("--sync-bn", is_flag=True, help="Under torchrun: SyncBatchNorm across processes (GPUs).")
@click.option("--class-weights", type=click.Choice(["none", "median-frequency"]), default="none", show_default=True,
              help="Weight the loss per class (median frequency balancing, as SegNet on CamVid).")
@click.option("--val-every", default=1, type=COUNT, show_default=True, help="Validate every N epochs.")
@click.option("--seed", default=0, type=click.IntRange(0, 2**32 - 1), show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--max-steps", type=COUNT, help="Stop after N optimizer steps (a smoke run).")
@click.option("--qat", is_flag=True,
              help="Quantization-aware fine-tuning of --weights: every Conv runs with the int8 fake quantization "
                   "of the TensorRT QDQ model (batch norms frozen and folded); writes OUTPUT/model_qdq.onnx from "
                   "the last weights, for `eval --onnx` and `build --qdq`.")
@click.option("--qat-ranges", type=click.Choice(CALIB_METHODS), default="mse", show_default=True,
              help="With --qat: the `calibrate` method whose activation thresholds QAT starts from and keeps.")
@click.option("--qat-calib-num", default=64, type=COUNT, show_default=True,
              help="With --qat: training images those thresholds are calibrated on.")
@click.option("--resume", is_flag=True, help="Continue the run in -o exactly (weights, optimizer, schedule, order).")
@output_option("dir", "Run folder: best.pt, last.pt, train_state.pt, train_record.json/.csv, train_curve.png.",
               required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the training record as JSON.")
def train_cmd(data, split, val_data, val_split, kind, weights, arch, trunk, aspp_rates, separable, output_stride, epochs, batch_size, crop, lr,
              momentum, weight_decay, scale, no_flip, freeze_bn, dropout, sync_bn, class_weights, val_every, seed,
              device, max_steps, qat, qat_ranges, qat_calib_num, resume, output, as_json) -> None:
    """Fine-tune DeepLab on your data (the paper's recipe: SGD momentum 0.9, poly learning rate,
    random scale 0.5-2.0, crop padded with the ignore label, flip), on a CPU or GPU.

    \b
    Many processes or machines: the same command under torchrun (PyTorch DDP: gloo on CPUs,
    NCCL on GPUs), e.g.
      torchrun --nproc-per-node 2 -m deeplab_edge.cli train --data D --batch-size 8 -o run/
    Only rank 0 writes files; validation is sharded and its confusion matrix summed.

    \b
    INT8 that holds: after FP32 training, fine-tune a few epochs with --qat at a low
    --lr (e.g. 0.001), validating the fake-quant model every epoch."""
    from ..bench.env import environment
    from ..distributed import launched
    from ..train import TrainConfig, train

    if scale[0] > scale[1]:
        raise click.BadParameter(f"{scale[0]} > {scale[1]}; give MIN MAX", param_hint="--scale")
    cfg = TrainConfig(data=str(data), output=str(output), weights=weights, arch=arch, trunk=trunk, aspp_rates=aspp_rates,
                      separable=separable,
                      output_stride=output_stride, dataset=kind, split=split,
                      val_data=val_data, val_split=val_split, epochs=epochs, batch_size=batch_size, crop=crop, lr=lr,
                      momentum=momentum, weight_decay=weight_decay, scale_min=scale[0], scale_max=scale[1],
                      flip=not no_flip, freeze_bn=freeze_bn, dropout=dropout, sync_bn=sync_bn,
                      class_weights=class_weights,
                      val_every=val_every, seed=seed, device=device, max_steps=max_steps, resume=resume,
                      qat=qat, qat_ranges=qat_ranges, qat_calib_num=qat_calib_num,
                      extra={"environment": environment()}, given=_given(click.get_current_context()))
    main_rank = launched().is_main  # under torchrun only the main process shows progress and prints (and logs)
    with progress_bar() as prog:
        task = prog.add_task("train", total=None) if main_rank else None
        record = train(cfg, progress=_progress(prog, task), log=_log)
    if not main_rank:
        return
    if as_json:
        print_json(record)
        return
    best = record["best"]
    out.print(f"[green]trained[/] {len(record['epochs'])} epochs on {record['images']} images "
              f"({record['world_size']} process{'es' if record['world_size'] > 1 else ''}) -> {output}"
              + (f"; best val mIoU {pct(best['val_miou'])}% at epoch {best['epoch']} (best.pt)" if best else ""))
