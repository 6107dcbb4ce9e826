"""``doctor``: what this machine has and which bench backends work here."""

from __future__ import annotations


import click
from rich.table import Table

from .app import main
from .common import (out, print_json)

# ----------------------------------------------------------------------------- doctor

@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor_cmd(as_json: bool) -> None:
    """What this machine has (PyTorch, CUDA, cuDNN, Triton, TensorRT, ONNX Runtime providers,
    GPU, Jetson model, L4T, power mode, power telemetry) and which bench backends will work here."""
    from ..bench.doctor import machine_report

    info = machine_report()
    env = info["environment"]
    if as_json:
        print_json(info)
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
