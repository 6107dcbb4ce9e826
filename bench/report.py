"""Bench results as files: JSON (everything), CSV (one flat row per cell), PNG (mIoU against
latency with the Pareto front), and the merge of several machines' results."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from deeplab_edge.outputs import atomic_path, staged_dir
from deeplab_edge.errors import DeepLabEdgeError

from .harness import device_label, mark_pareto

__all__ = ["FORMAT", "csv_text", "write_results", "plot", "load_result", "merge"]

FORMAT = "deeplab-edge-bench/1"

CSV_COLUMNS = ["device", "backend", "precision", "crf", "miou_pct", "miou_delta_points", "latency_ms", "speedup",
               "pareto", "model_ms_p50", "model_ms_p90", "model_ms_p99", "crf_ms_p50", "images_per_s_batch1",
               "preprocess_ms_p50", "postprocess_ms_p50", "load_ms_p50", "first_call_s", "peak_rss_mb",
               "cuda_peak_allocated_mb", "file_mb", "power_w", "energy_mj_per_image", "images", "latency_is_speed"]


def _flat(row: dict[str, Any], device: str) -> dict[str, Any]:
    b1 = next((b for b in row["batches"] if b["batch"] == 1), None)
    h = row.get("harness_ms") or {}
    out = {"device": device, "backend": row["backend"], "precision": row["precision"], "crf": row["crf"],
           "miou_pct": 100 * row["miou"], "miou_delta_points": row.get("miou_delta_points"),
           "latency_ms": row.get("latency_ms"), "speedup": row.get("speedup"), "pareto": row.get("pareto"),
           "model_ms_p50": b1 and b1["p50_ms"], "model_ms_p90": b1 and b1["p90_ms"], "model_ms_p99": b1 and b1["p99_ms"],
           "crf_ms_p50": (row.get("crf_ms") or {}).get("p50"), "images_per_s_batch1": b1 and b1["images_per_s"],
           "preprocess_ms_p50": (h.get("preprocess") or {}).get("p50"),
           "postprocess_ms_p50": (h.get("postprocess") or {}).get("p50"), "load_ms_p50": (h.get("load") or {}).get("p50"),
           "first_call_s": row.get("first_call_s"), "peak_rss_mb": row["memory"].get("peak_rss_mb"),
           "cuda_peak_allocated_mb": row["memory"].get("cuda_peak_allocated_mb"), "file_mb": row.get("file_mb"),
           "power_w": b1 and b1.get("power_w"), "energy_mj_per_image": b1 and b1.get("energy_mj_per_image"),
           "images": row["images"], "latency_is_speed": row.get("latency_is_speed", True)}
    for b in row["batches"]:
        if b["batch"] != 1:
            out[f"images_per_s_batch{b['batch']}"] = b["images_per_s"]
            out[f"model_ms_p50_batch{b['batch']}"] = b["p50_ms"]
    return out


def csv_text(result: dict[str, Any]) -> str:
    """The rows as CSV (every device's rows for a merged result)."""
    flat = [_flat(r, r.get("device") or device_label(result["environment"])) for r in result["rows"]]
    extra = sorted({k for f in flat for k in f} - set(CSV_COLUMNS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS + extra, lineterminator="\n")
    w.writeheader()
    for f in flat:
        w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in f.items()})
    return buf.getvalue()


def plot(result: dict[str, Any], path: Path, title: str | None = None) -> None:
    """mIoU against latency (log scale), one marker shape per CRF option, one colour per
    backend (per device for a merged result), the Pareto front as a step line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise DeepLabEdgeError("the plot needs matplotlib: pip install 'deeplab-edge[plot]'") from e
    rows = [r for r in result["rows"] if r.get("latency_is_speed", True) and r.get("latency_ms")]
    merged = len({r.get("device") for r in result["rows"]}) > 1
    colour_key = (lambda r: f"{r['device']}: {r['backend']}") if merged else (lambda r: r["backend"])
    colours = {k: plt.cm.tab10(i % 10) for i, k in enumerate(dict.fromkeys(colour_key(r) for r in rows))}
    markers = dict(zip(["none", "pydensecrf", "torch", "triton", "window", "triton-window"], "os^vDP"))
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    for r in rows:
        ax.scatter(r["latency_ms"], 100 * r["miou"], color=colours[colour_key(r)], marker=markers.get(r["crf"], "x"),
                   s=60, edgecolors="black" if r.get("pareto") else "none", linewidths=1.2, zorder=3)
    front = sorted((r["latency_ms"], 100 * r["miou"]) for r in rows if r.get("pareto"))
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="grey", linestyle="--", linewidth=1, zorder=2, label="Pareto front")
    levels: dict[tuple[str, float], list[str]] = {}  # the emulated INT8 accuracy: no speed, so a level, not a point
    for r in result["rows"]:
        if not r.get("latency_is_speed", True):
            key = (f"{(r['device'] + ': ') if merged else ''}{r['backend']}", round(100 * r["miou"], 2))
            levels.setdefault(key, []).append(r["crf"])
    for (name, miou), crfs in levels.items():
        ax.axhline(miou, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{name}, CRF {'/'.join(crfs)}: {miou:.2f}% (INT8 accuracy, emulated; no speed)", (0.01, miou),
                    xycoords=("axes fraction", "data"), fontsize=6, color="dimgrey", va="bottom")
    for k, c in colours.items():
        ax.scatter([], [], color=c, marker="s", label=k)
    for crf, m in markers.items():
        if any(r["crf"] == crf for r in rows):
            ax.scatter([], [], color="white", edgecolors="black", marker=m, label=f"CRF: {crf}")
    ax.set_xscale("log")
    ax.set_xlabel("latency per image, ms (model p50 at batch 1 + CRF median; log scale)")
    ax.set_ylabel("mIoU, %")
    env = result.get("environment") or {}
    ax.set_title(title or f"{result.get('images', '?')} images of {Path(str(result.get('data', '?'))).name} on "
                          f"{'several machines' if merged else device_label(env)}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_results(result: dict[str, Any], out_dir: Path, tag: str, *, png: bool = True) -> dict[str, str]:
    """``bench_<tag>.json`` / ``.csv`` / ``.png`` in ``out_dir``: all of them land together or none does."""
    names = {"json": f"bench_{tag}.json", "csv": f"bench_{tag}.csv"} | ({"png": f"bench_{tag}.png"} if png else {})
    with staged_dir(out_dir) as stage:
        (stage / names["json"]).write_text(json.dumps(result, indent=1, default=str))
        (stage / names["csv"]).write_text(csv_text(result))
        if png:
            plot(result, stage / names["png"])
    return {k: str(out_dir / v) for k, v in names.items()}


def load_result(path: Path) -> dict[str, Any]:
    """A result file of ``deeplab-edge bench``, checked."""
    path = Path(path)
    if not path.is_file():
        raise DeepLabEdgeError(f"{path}: result file not found; `deeplab-edge bench -o DIR` writes bench_<tag>.json")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DeepLabEdgeError(f"{path}: not JSON ({e}); pass the bench_<tag>.json that `deeplab-edge bench` wrote") \
            from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rows"), list):
        raise DeepLabEdgeError(f"{path}: not a `deeplab-edge bench` result (format {FORMAT}); pass the "
                               "bench_<tag>.json it wrote")
    problem = _row_problem(doc)
    if problem:
        raise DeepLabEdgeError(f"{path}: a malformed bench result ({problem}); regenerate it with "
                               "`deeplab-edge bench -o DIR`")
    return doc


# What merging and the table read of each row: field -> accepted types (None where the value may be null).
_ROW_FIELDS = {"backend": (str,), "crf": (str,), "miou": (int, float, type(None)),
               "latency_ms": (int, float, type(None)), "batches": (list,), "memory": (dict,), "file_mb": (int, float)}
_BATCH_FIELDS = {"batch": (int,), "p50_ms": (int, float, type(None))}


def _row_problem(doc: dict[str, Any]) -> str | None:
    """The first thing in a result document that the merge or the table could not read, or None."""
    if not isinstance(doc.get("environment"), dict):
        return "no environment"
    for i, r in enumerate(doc["rows"]):
        if not isinstance(r, dict):
            return f"row {i} is a {type(r).__name__}, not an object"
        for key, types in _ROW_FIELDS.items():
            if not isinstance(r.get(key), types) or isinstance(r.get(key), bool):
                return f"row {i}: {key!r} missing or of the wrong type"
        for b in r["batches"]:
            if not isinstance(b, dict) or any(not isinstance(b.get(k), t) for k, t in _BATCH_FIELDS.items()):
                return f"row {i}: a batch entry without 'batch' and 'p50_ms'"
    return None


def merge(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Several machines' results in one document: every row labelled with its machine, the
    Pareto front recomputed over all rows (``pareto``) and kept per machine (``pareto_own``)."""
    rows, sources = [], []
    for name, doc in docs:
        label = device_label(doc["environment"])
        if any(s["device"] == label for s in sources):
            label = f"{label} [{Path(name).stem}]"
        sources.append({"file": name, "device": label, "environment": doc["environment"], "data": doc.get("data"),
                        "images": doc.get("images")})
        for r in doc["rows"]:
            rows.append({**r, "device": label, "pareto_own": r.get("pareto")})
    datasets = {(s["data"], s["images"]) for s in sources}
    mark_pareto(rows)
    rows.sort(key=lambda r: (r["latency_ms"] is None or not r.get("latency_is_speed", True), r["latency_ms"] or 0))
    return {"format": FORMAT, "merged": True, "sources": sources, "rows": rows,
            "same_data": len(datasets) == 1, "images": sources[0]["images"] if len(datasets) == 1 else None,
            "data": sources[0]["data"] if len(datasets) == 1 else "several"}
