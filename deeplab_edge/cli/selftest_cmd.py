"""``selftest --gpu``: the one GPU check, planned to fit in 8 minutes on one H100-class GPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..errors import DeepLabEdgeError
from .app import main
from .common import InputPath, console, out, output_option, print_json, write_json


@main.command("selftest")
@click.option("--gpu", is_flag=True, required=True,
              help="The GPU check (the only self-test): every kernel compiled against its reference, the kernel "
                   "and CRF benchmarks, the main bench on the VOC samples and the CamVid model; with TensorRT, "
                   "also an INT8 engine, its eval and bench.")
@click.option("--voc", type=InputPath(path_type=Path), default=Path("../shared/data/voc2012_samples"),
              show_default=True, help="Labelled VOC folder.")
@click.option("--camvid", type=InputPath(path_type=Path), default=Path("../shared/data/camvid_val"),
              show_default=True, help="Labelled CamVid folder to evaluate on.")
@click.option("--camvid-train", type=InputPath(path_type=Path), default=Path("../shared/data/camvid_train"),
              show_default=True, help="CamVid images to calibrate the INT8 engine on (TensorRT only).")
@click.option("--tflite", type=InputPath(path_type=Path),
              default=Path("../shared/models/deeplabv3_mnv2_pascal_quant.tflite"), show_default=True,
              help="Google's DeepLab-v3 MobileNetV2 VOC model (imported for the VOC and CRF benches).")
@click.option("--weights", type=InputPath(path_type=Path), default=Path("weights/deeplabv3_mnv2_camvid.pt"),
              show_default=True, help="The CamVid checkpoint.")
@click.option("--budget", default=480, type=click.IntRange(60, 7200), show_default=True,
              help="Seconds for the whole check; steps that would start after it are listed as not run.")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit (0) without running it.")
@output_option("dir", "Run folder: every step's output and selftest.json (commit the latter under bench/results/).",
               required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results (or, without a GPU, the plan) as JSON.")
def selftest_cmd(gpu, voc, camvid, camvid_train, tflite, weights, budget, dry_run, output, as_json) -> None:
    """Run everything a GPU must show, in one go, as the commands a user would type, and write one
    results file with the GPU, driver, CUDA, Triton and torch versions and the commit.

    \b
    Without a CUDA GPU it prints the plan and exits 2 at once (--dry-run: exits 0).
    Each step runs as its own process with the time left in --budget."""
    import torch

    from ..bench.selftest import Inputs, missing_inputs, plan, run_plan

    out_dir = Path(output)
    inputs = Inputs(voc=voc, camvid=camvid, tflite=tflite, camvid_weights=weights, camvid_train=camvid_train)
    tensorrt = importlib.util.find_spec("tensorrt") is not None
    # before the plan, with or without --dry-run: a plan over missing inputs is not one that can run
    missing_inputs(inputs, tensorrt=tensorrt)
    steps = plan(out_dir, inputs, tensorrt=tensorrt)
    has_gpu = torch.cuda.is_available()
    if as_json and (dry_run or not has_gpu):
        print_json({"plan": [s.__dict__ for s in steps], "budget_s": budget,
                    "estimate_s": sum(s.estimate_s for s in steps)})
    elif dry_run or not has_gpu:
        t = Table(title=f"selftest --gpu: {len(steps)} steps, est. {sum(s.estimate_s for s in steps) / 60:.1f} min "
                        f"on one H100-class GPU (budget {budget / 60:.0f} min; estimates until it has run)")
        for col in ("step", "est. s", "command", "what it shows"):
            t.add_column(col, justify="right" if col == "est. s" else "left")
        for s in steps:
            t.add_row(s.name, f"{s.estimate_s:.0f}", escape(s.command()), s.why)
        out.print(t)
    if dry_run:
        return
    if not has_gpu:
        raise DeepLabEdgeError("no CUDA GPU on this machine: nothing run (the plan is above); run it on a GPU "
                               "machine, or pass --dry-run to only print the plan")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_plan(steps, out_dir, budget_s=budget,
                      log=lambda s: console.print(f"[dim]{escape(s)}[/]", highlight=False))
    write_json(result, out_dir / "selftest.json")
    if as_json:
        print_json(result)
    else:
        t = Table(title=f"selftest --gpu on {result['environment']['gpu']['name']}: {result['seconds']:.0f} s")
        for col in ("step", "status", "s"):
            t.add_column(col)
        for r in result["steps"]:
            t.add_row(r["name"], r["status"], f"{r.get('seconds', 0):.0f}")
        out.print(t)
        out.print(f"wrote {out_dir / 'selftest.json'}")
    if not result["ok"]:
        sys.exit(1)
