"""Bench results as files: JSON (everything), CSV (one flat row per cell), PNG (mIoU against
latency with the Pareto front), and the merge of several machines' results."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from deeplab_edge.outputs import atomic_path, staged_dir
from deeplab_edge.errors import DeepLabEdgeError

from .stats import pareto_front

__all__ = ["FORMAT", "mark_pareto", "row_name", "device_label", "default_tag", "slug", "csv_text", "write_results", "result_names", "check_not_outputs", "plot", "load_result",
           "merge"]

FORMAT = "deeplab-edge-bench/1"


def mark_pareto(rows: list[dict[str, Any]], key: str = "pareto") -> None:
    """Set ``row[key]``: Pareto-optimal in (latency, mIoU) among the rows whose latency is a speed."""
    pts = [(r["latency_ms"] if r.get("latency_is_speed", True) else None, r["miou"]) for r in rows]
    for r, flag in zip(rows, pareto_front(pts)):
        r[key] = flag


def row_name(row: dict[str, Any]) -> str:
    """A row's backend as a table or legend shows it: ``ort-int8``, or ``ort-int8 (labels)`` for its label model
    (the arg-max in the graph)."""
    return row["backend"] + (" (labels)" if row.get("output") == "labels" else "")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "machine"


def device_label(env: dict[str, Any]) -> str:
    """A short name of the machine a result came from: its GPU (and Jetson model), else its CPU."""
    if env.get("jetson"):
        return env["jetson"].get("model") or "jetson"
    if env.get("gpu"):
        return env["gpu"]["name"]
    return f"{env.get('cpu', 'cpu')} ({env.get('cpu_count', '?')} cores)"


def default_tag(env: dict[str, Any]) -> str:
    return slug(device_label(env)) if (env.get("gpu") or env.get("jetson")) else "cpu-" + slug(env.get("cpu", ""))

CSV_COLUMNS = ["device", "model", "arch", "params_m", "gflops", "variant", "output_stride", "scales", "flip",
               "backend", "output", "precision", "crf", "miou_pct", "miou_delta_points", "pixels_as_baseline_pct",
               "pixels_as_qdq_int8_pct", "latency_ms", "speedup",
               "pareto", "model_ms_p50", "model_ms_p90", "model_ms_p99", "crf_ms_p50", "images_per_s_batch1",
               "preprocess_ms_p50", "postprocess_ms_p50", "output_bytes_per_frame", "host_postprocess_ms", "load_ms_p50", "first_call_s", "peak_rss_mb",
               "cuda_peak_allocated_mb", "file_mb", "power_w", "energy_mj_per_image", "images", "latency_is_speed"]


def _flat(row: dict[str, Any], device: str) -> dict[str, Any]:
    b1 = next((b for b in row["batches"] if b["batch"] == 1), None)
    h = row.get("harness_ms") or {}
    info = row.get("model_info") or {}
    out = {"device": device, "model": row.get("model"), "arch": info.get("arch"),
           "params_m": info["params"] / 1e6 if info.get("params") else None, "gflops": info.get("gflops"),
           "variant": row.get("variant"), "output_stride": row.get("output_stride"),
           "scales": " ".join(f"{v:g}" for v in row["scales"]) if row.get("scales") else None,
           "flip": row.get("flip"), "backend": row["backend"], "output": row.get("output", "logits"), "precision": row["precision"], "crf": row["crf"],
           "miou_pct": 100 * row["miou"], "miou_delta_points": row.get("miou_delta_points"),
           **agreement_pct(row),
           "latency_ms": row.get("latency_ms"), "speedup": row.get("speedup"), "pareto": row.get("pareto"),
           "model_ms_p50": b1 and b1["p50_ms"], "model_ms_p90": b1 and b1.get("p90_ms"),
           "model_ms_p99": b1 and b1.get("p99_ms"),
           "crf_ms_p50": (row.get("crf_ms") or {}).get("p50"), "images_per_s_batch1": b1 and b1.get("images_per_s"),
           "preprocess_ms_p50": (h.get("preprocess") or {}).get("p50"),
           "postprocess_ms_p50": (h.get("postprocess") or {}).get("p50"),
           "output_bytes_per_frame": row.get("output_bytes_per_frame"), "host_postprocess_ms": row.get("host_postprocess_ms"),
           "load_ms_p50": (h.get("load") or {}).get("p50"),
           "first_call_s": row.get("first_call_s"), "peak_rss_mb": row["memory"].get("peak_rss_mb"),
           "cuda_peak_allocated_mb": row["memory"].get("cuda_peak_allocated_mb"), "file_mb": row.get("file_mb"),
           "power_w": b1 and b1.get("power_w"), "energy_mj_per_image": b1 and b1.get("energy_mj_per_image"),
           "images": row["images"], "latency_is_speed": row.get("latency_is_speed", True)}
    for b in row["batches"]:
        if b["batch"] != 1:
            out[f"images_per_s_batch{b['batch']}"] = b.get("images_per_s")
            out[f"model_ms_p50_batch{b['batch']}"] = b["p50_ms"]
    return out


def agreement_pct(row: dict[str, Any]) -> dict[str, float | None]:
    """The row's pixel agreement (percent) with the baseline row and, for OpenVINO's INT8 row, with qdq-int8."""
    agree = dict(row.get("pixel_agreement") or {})
    ref = row.get("pixel_agreement_baseline")  # the baseline row's key (older results: the first entry)
    base = agree.get(ref) if ref else next((v for k, v in agree.items() if k != "qdq-int8"), None)
    qdq = agree.get("qdq-int8") if row["backend"] == "ov-int8" else None
    return {"pixels_as_baseline_pct": None if base is None else 100 * base,
            "pixels_as_qdq_int8_pct": None if qdq is None else 100 * qdq}


def int8_runtimes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Which INT8 runtime is fastest here, per model and setting: every INT8 row that ran at real speed (not the
    emulated QDQ model), without a CRF, logits out, fastest first; the INT8 models of one run share their
    calibration. Each entry: model, variant, backend, latency (ms), mIoU, pixels as the baseline row (percent),
    and the ratio of its latency to the fastest's."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["precision"] == "int8" and r.get("latency_is_speed", True) and r["crf"] == "none" and \
                r.get("output", "logits") == "logits" and r.get("latency_ms"):
            groups.setdefault((r.get("device"), r.get("model"), r.get("variant")), []).append(r)
    out = []
    for (device, model, variant), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["latency_ms"])
        for rank, r in enumerate(rs, 1):
            out.append({"device": device, "model": model, "variant": variant, "rank": rank, "backend": r["backend"],
                        "latency_ms": r["latency_ms"], "miou": r["miou"],
                        "pixels_as_baseline_pct": agreement_pct(r)["pixels_as_baseline_pct"],
                        "times_fastest": r["latency_ms"] / rs[0]["latency_ms"]})
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
    several = len({(r.get("model"), r.get("variant")) for r in result["rows"]}) > 1
    where = (lambda r: f"{r['device']}: ") if merged else (lambda r: "")
    if several:  # a colour per model and setting, a marker per backend, hollow with a CRF
        colour_key = lambda r: f"{where(r)}{r.get('model')} {r.get('variant', '')}".strip()
        shapes = dict(zip(dict.fromkeys(row_name(r) for r in rows), "os^vDPX*<>ph"))
        marker_of, legend_markers = (lambda r: shapes.get(row_name(r), "x")), shapes
    else:
        colour_key = lambda r: f"{where(r)}{row_name(r)}"
        shapes = dict(zip(["none", "pydensecrf", "torch", "triton", "window", "triton-window"], "os^vDP"))
        marker_of = lambda r: shapes.get(r["crf"], "x")
        legend_markers = {f"CRF: {c}": m for c, m in shapes.items() if any(r["crf"] == c for r in rows)}
    palette = plt.cm.tab20 if several else plt.cm.tab10
    colours = {k: palette(i % palette.N) for i, k in enumerate(dict.fromkeys(colour_key(r) for r in rows))}
    fig, ax = plt.subplots(figsize=(10, 6) if several else (9, 5.5), dpi=120)
    for r in rows:
        c = colours[colour_key(r)]
        hollow = several and r["crf"] != "none"
        ax.scatter(r["latency_ms"], 100 * r["miou"], marker=marker_of(r), s=60, zorder=3,
                   facecolors="none" if hollow else c, linewidths=1.8 if hollow else 1.2,
                   edgecolors=c if hollow else ("black" if r.get("pareto") else "none"))
    front = sorted((r["latency_ms"], 100 * r["miou"]) for r in rows if r.get("pareto"))
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="grey", linestyle="--", linewidth=1, zorder=2, label="Pareto front")
    levels: dict[tuple[str, float], list[str]] = {}  # the emulated INT8 accuracy: no speed, so a level, not a point
    for r in result["rows"]:
        if not r.get("latency_is_speed", True):
            key = (f"{where(r)}{(r.get('model', '') + ' ') if several else ''}{row_name(r)}", round(100 * r["miou"], 2))
            levels.setdefault(key, []).append(r["crf"])
    for (name, miou), crfs in levels.items():
        ax.axhline(miou, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{name}, CRF {'/'.join(crfs)}: {miou:.2f}% (INT8 accuracy, emulated; no speed)", (0.01, miou),
                    xycoords=("axes fraction", "data"), fontsize=6, color="dimgrey", va="bottom")
    for k, c in colours.items():
        ax.scatter([], [], color=c, marker="s", label=k)
    for name, m in legend_markers.items():
        ax.scatter([], [], color="white", edgecolors="black", marker=m, label=name)
    if several and any(r["crf"] != "none" for r in rows):
        ax.scatter([], [], facecolors="none", edgecolors="grey", marker="o", linewidths=1.8,
                   label="hollow: + CRF (" + "/".join(sorted({r["crf"] for r in rows} - {"none"})) + ")")
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


def result_names(tag: str, *, png: bool = True) -> dict[str, str]:
    """The file names :func:`write_results` gives a result tagged ``tag``: bench_<tag>.json / .csv / .png."""
    return {"json": f"bench_{tag}.json", "csv": f"bench_{tag}.csv"} | ({"png": f"bench_{tag}.png"} if png else {})


def write_results(result: dict[str, Any], out_dir: Path, tag: str, *, png: bool = True) -> dict[str, str]:
    """``bench_<tag>.json`` / ``.csv`` / ``.png`` in ``out_dir``: all of them land together or none does."""
    names = result_names(tag, png=png)
    with staged_dir(out_dir) as stage:
        (stage / names["json"]).write_text(json.dumps(result, indent=1, default=str))
        (stage / names["csv"]).write_text(csv_text(result))
        if png:
            plot(result, stage / names["png"])
    return {k: str(out_dir / v) for k, v in names.items()}


def check_not_outputs(inputs: list[str | Path], out_dir: str | Path, tag: str, *, png: bool = True) -> None:
    """Refuse an input result file that writing the merged result to ``out_dir`` under ``tag`` would replace."""
    outputs = {(Path(out_dir) / n).resolve(): n for n in result_names(tag, png=png).values()}
    for p in inputs:
        if Path(p).resolve() in outputs:
            raise DeepLabEdgeError(f"{p}: is the file the merged result would be written to (-o {out_dir}, --tag "
                                   f"{tag}: {outputs[Path(p).resolve()]}), replacing this input; pass another --tag "
                                   "or -o folder")


def load_result(path: Path) -> dict[str, Any]:
    """A result file of ``deeplab-edge bench``, checked: every field the merge, the table, the CSV and the
    plot read has the type and the range a real run writes."""
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


_NUM = (int, float)
_NONE = type(None)

# What merging, the table, the CSV and the plot read of each row: field -> (accepted types, the range of a
# number: "unit" [0, 1], "pos" > 0, "nonneg" >= 0, "finite", or None for no range). None among the types:
# the value may be null (e.g. ``latency_ms`` of a run without batch 1); fields marked optional may be absent.
_ROW_FIELDS = {"backend": ((str,), None), "crf": ((str,), None), "precision": ((str,), None),
               "miou": (_NUM, "unit"), "latency_ms": (_NUM + (_NONE,), "pos"), "batches": ((list,), None),
               "memory": ((dict,), None), "file_mb": (_NUM, "nonneg"), "images": ((int,), "pos")}
_OPTIONAL_ROW_FIELDS = {"latency_is_speed": ((bool,), None), "speedup": (_NUM + (_NONE,), "pos"),
                        "miou_delta_points": (_NUM, "finite"), "crf_ms": ((dict, _NONE), None),
                        "first_call_s": (_NUM + (_NONE,), "nonneg"), "model": ((str,), None),
                        "variant": ((str,), None), "model_info": ((dict,), None), "scales": ((list,), None),
                        "flip": ((bool,), None), "output_stride": ((int, _NONE), "pos"),
                        "output": ((str,), None), "output_bytes_per_frame": ((int,), "pos"),
                        "host_postprocess_ms": (_NUM + (_NONE,), "nonneg")}
_MODEL_INFO_FIELDS = {"params": ((int,), "pos"), "gflops": (_NUM, "nonneg"), "arch": ((str, _NONE), None)}
_MEMORY_FIELDS = {"peak_rss_mb": (_NUM + (_NONE,), "nonneg"), "cuda_peak_allocated_mb": (_NUM + (_NONE,), "nonneg")}
_BATCH_FIELDS = {"batch": ((int,), "pos"), "p50_ms": (_NUM + (_NONE,), "pos")}
_OPTIONAL_BATCH_FIELDS = {"p90_ms": (_NUM + (_NONE,), "pos"), "p99_ms": (_NUM + (_NONE,), "pos"),
                          "images_per_s": (_NUM + (_NONE,), "pos"), "power_w": (_NUM + (_NONE,), "nonneg"),
                          "energy_mj_per_image": (_NUM + (_NONE,), "nonneg")}
_RANGES = {"unit": (lambda v: 0 <= v <= 1, "outside [0, 1]"), "pos": (lambda v: v > 0, "not above 0"),
           "nonneg": (lambda v: v >= 0, "below 0"), "finite": (lambda v: True, "")}


def _value_problem(where: str, key: str, value: Any, types: tuple, rng: str | None) -> str | None:
    """Why ``value`` cannot be the field ``key`` (types and range above), or None."""
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        return f"{where}: {key!r} is {json.dumps(value, default=str)[:40]}, not a {_type_names(types)}"
    if rng is None or value is None or isinstance(value, bool) or not isinstance(value, _NUM):
        return None
    if not math.isfinite(value):
        return f"{where}: {key!r} is {value}, not a finite number"
    ok, why = _RANGES[rng]
    return None if ok(value) else f"{where}: {key!r} is {value}, {why}"


def _type_names(types: tuple) -> str:
    names = {str: "string", int: "number" if float in types else "whole number", float: "number", list: "list",
             dict: "object", bool: "true/false", _NONE: "null"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def _fields_problem(where: str, obj: dict, required: dict, optional: dict) -> str | None:
    for key, (types, rng) in required.items():
        if key not in obj:
            return f"{where}: {key!r} missing"
        problem = _value_problem(where, key, obj[key], types, rng)
        if problem:
            return problem
    for key, (types, rng) in optional.items():
        if key in obj:
            problem = _value_problem(where, key, obj[key], types, rng)
            if problem:
                return problem
    return None


def _row_problem(doc: dict[str, Any]) -> str | None:
    """The first thing in a result document that the merge, the table, the CSV or the plot could not read, or
    that no real run writes (an mIoU outside [0, 1], a latency that is not above 0, NaN...), or None."""
    env = doc.get("environment")
    if not isinstance(env, dict):
        return "no environment"
    for key in ("gpu", "jetson"):
        if env.get(key) is not None and not isinstance(env[key], dict):
            return f"environment: {key!r} is not an object"
    if isinstance(env.get("gpu"), dict) and not env.get("jetson") and not isinstance(env["gpu"].get("name"), str):
        return "environment: the GPU has no name"
    if not doc["rows"]:
        return "no rows"
    if "images" in doc and (isinstance(doc["images"], bool) or not isinstance(doc["images"], int)
                            or doc["images"] < 1):
        return f"'images' is {doc['images']!r}, not a count of images >= 1"
    for i, r in enumerate(doc["rows"]):
        if not isinstance(r, dict):
            return f"row {i} is a {type(r).__name__}, not an object"
        where = f"row {i}" + (f" ({r['backend']}, CRF {r['crf']})" if isinstance(r.get("backend"), str) and
                              isinstance(r.get("crf"), str) else "")
        problem = _fields_problem(where, r, _ROW_FIELDS, _OPTIONAL_ROW_FIELDS) or \
            _fields_problem(f"{where}, memory", r["memory"], {}, _MEMORY_FIELDS)
        if problem:
            return problem
        if isinstance(r.get("model_info"), dict):
            problem = _fields_problem(f"{where}, model_info", r["model_info"], {}, _MODEL_INFO_FIELDS)
            if problem:
                return problem
        if isinstance(r.get("scales"), list) and not all(
                isinstance(v, _NUM) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in r["scales"]):
            return f"{where}: 'scales' is {json.dumps(r['scales'])[:40]}, not a list of numbers above 0"
        if isinstance(r.get("crf_ms"), dict):
            problem = _fields_problem(f"{where}, crf_ms", r["crf_ms"], {"p50": (_NUM, "nonneg")}, {})
            if problem:
                return problem
        if not r["batches"]:
            return f"{where}: 'batches' is empty"
        p50 = r.get("model_ms_p50")
        if r["latency_ms"] is not None and isinstance(p50, _NUM) and not isinstance(p50, bool):
            crf = (r.get("crf_ms") or {}).get("p50") or 0.0  # latency = model p50 at batch 1 + CRF median
            if not math.isclose(r["latency_ms"], p50 + crf, rel_tol=1e-6, abs_tol=1e-6):
                return (f"{where}: 'latency_ms' is {r['latency_ms']}, not its model p50 at batch 1 ({p50}) plus its "
                        f"CRF median ({crf})")
        for j, b in enumerate(r["batches"]):
            if not isinstance(b, dict):
                return f"{where}: batch entry {j} is a {type(b).__name__}, not an object"
            problem = _fields_problem(f"{where}, batch entry {j}", b, _BATCH_FIELDS, _OPTIONAL_BATCH_FIELDS)
            if problem:
                return problem
    return None


def _same_result(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def merge(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Several machines' results in one document: every row labelled with its machine, the
    Pareto front recomputed over all rows (``pareto``) and kept per machine (``pareto_own``)."""
    rows, sources = [], []
    seen: list[tuple[str, Path, dict[str, Any]]] = []
    for name, doc in docs:
        for other, where, earlier in seen:
            if Path(name).resolve() == where:
                raise DeepLabEdgeError(f"{name}: given twice (the same file as {other}); pass each machine's "
                                       "result file once")
            if _same_result(doc, earlier):
                raise DeepLabEdgeError(f"{name}: the same results as {other} (identical content: a copy?); pass "
                                       "each machine's result once")
        seen.append((name, Path(name).resolve(), doc))
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
