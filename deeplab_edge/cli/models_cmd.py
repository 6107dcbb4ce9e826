"""``models``, ``import`` and ``info``: the architectures, real weights, and what a checkpoint holds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.table import Table

from .app import main
from .common import (InputPath, SIDE, console, out, output_option, print_json)

# ----------------------------------------------------------------------------- models

@main.command("models")
@click.option("--size", default=513, type=SIDE, show_default=True, help="Input side (square) for the GFLOPs column.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_cmd(size: int, as_json: bool) -> None:
    """List the model architectures with parameters and GFLOPs, computed from the models.

    GFLOPs count 2 per multiply-accumulate of every conv at SIZE x SIZE (shape propagation
    on PyTorch's meta device: nothing is allocated or run)."""
    import torch

    from ..models import MODELS, count_flops, count_params

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
        print_json(rows)
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
@click.argument("source", type=InputPath(path_type=Path))
@output_option("file", "Checkpoint to write (.pt).", required=True, example="model.pt")
@click.option("--labels", type=InputPath(path_type=Path), help="Class names, one per line (default: VOC's 21).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def import_cmd(source: Path, output: Path, labels: Path | None, as_json: bool) -> None:
    """Convert a Google DeepLab-v3 MobileNetV2 TFLite model into a deeplab-edge checkpoint.

    The graph is read op by op (any depth multiplier and class count); quantized weights
    are dequantized and the interpreter's input normalisation and input size are recorded
    as the checkpoint's preprocessing."""
    from ..checkpoint import save_checkpoint
    from ..models import count_params
    from ..tflite_import import import_tflite

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
        print_json(summary)
    else:
        out.print(f"[green]wrote[/] {output} ({summary['bytes'] / 1e6:.1f} MB): {summary['arch']}, "
                  f"{summary['num_classes']} classes, OS {summary['output_stride']}, ASPP rates "
                  f"{summary['aspp_rates'] or 'none'}, {summary['blocks']} blocks, "
                  f"{summary['params'] / 1e6:.2f} M params; input {meta['preprocess']['size']}px, "
                  f"mean {meta['preprocess']['mean'][0]:g}, std {meta['preprocess']['std'][0]:g}")

# ----------------------------------------------------------------------------- info

@main.command("info")
@click.argument("weights", type=InputPath(path_type=Path))
@click.option("--arch", help="Architecture of a plain state dict (guessed from its keys if omitted).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_cmd(weights: Path, arch: str | None, as_json: bool) -> None:
    """Show what a checkpoint holds: architecture, classes, preprocessing, source."""
    from ..checkpoint import load_checkpoint
    from ..models import count_params

    loaded = load_checkpoint(weights, arch=arch)
    res = {"file": str(weights), "config": loaded.model.config, "params": count_params(loaded.model),
           **loaded.meta}
    if as_json:
        print_json(res)
        return
    t = Table(show_header=False, title=str(weights))
    for k in ("config", "params", "classes", "preprocess", "source", "sha256"):
        if k in res:
            v = res[k]
            if k == "config":
                v = {kk: vv for kk, vv in v.items() if kk != "blocks"}
            t.add_row(k, json.dumps(v, default=str) if not isinstance(v, str) else v)
    out.print(t)

