"""Several models in one verdict: ``bench --weights A.pt --weights B.pt`` (or a folder of checkpoints), crossed
with output strides and test-time settings (single scale, multi-scale, flip).

Every (model, output stride, test-time setting) is one :func:`~deeplab_edge.bench.harness.run_bench` run on the
same images with the same backends, CRF options and calibration plan; the runs' rows are joined into one
document, each row naming its model (architecture, parameters, GFLOPs at its input size) and variant. mIoU
change and speed-up are against one baseline, the first run's (the first model, single scale, no CRF, first
backend), and the Pareto front is drawn over every row. One run alone gives exactly ``run_bench``'s document.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from deeplab_edge.errors import DeepLabEdgeError

from .harness import BenchConfig, checked_model, run_bench, variant_label
from .report import mark_pareto, slug

__all__ = ["Variant", "model_files", "run_models"]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One test-time setting: the output stride (None: the checkpoint's), the input scales and the flip."""

    output_stride: int | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False


def model_files(given: Sequence[str | Path], option: str = "--weights") -> list[Path]:
    """The checkpoints named by ``given``: files as they are, a folder as its ``*.pt``/``*.pth`` files (sorted);
    refused when a path is missing, a folder holds none, or one file is named twice (``option`` names them in the
    messages)."""
    opt = f"{option} " if option else ""
    files: list[Path] = []
    for g in map(Path, given):
        if g.is_dir():
            found = sorted(p for p in g.iterdir() if p.suffix in (".pt", ".pth") and p.is_file())
            if not found:
                raise DeepLabEdgeError(f"{opt}{g}: a folder with no .pt/.pth checkpoint; pass checkpoint files "
                                       "or a folder of them")
            files += found
        elif g.is_file():
            files.append(g)
        else:
            raise DeepLabEdgeError(f"{opt}{g}: checkpoint not found; create one with `deeplab-edge import` or "
                                   "pass a .pt")
    seen: dict[Path, Path] = {}
    for f in files:
        if f.resolve() in seen:
            raise DeepLabEdgeError(f"{opt}{f}: given twice (the same file as {seen[f.resolve()]}); pass each "
                                   "model once")
        seen[f.resolve()] = f
    return files


def _names(files: list[Path]) -> list[str]:
    """A unique label per file: its stem, or parent/stem where two stems are the same."""
    stems = [f.stem for f in files]
    return [f.stem if stems.count(f.stem) == 1 else f"{f.parent.name}/{f.stem}" for f in files]


def run_models(weights: Sequence[Path], dataset, config: BenchConfig, *, work: Path,
               variants: Sequence[Variant] = (Variant(),), crf_params: Sequence[Any] = (), power: Any = None,
               skipped: list[dict[str, str]] | None = None,
               progress: Callable[[str, int], Callable[[str], None]] | None = None,
               log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every model x variant through ``run_bench`` with ``config``; one document. Every model is checked
    against the data before any work, so a wrong one fails the command at once, not after the others ran.
    ``crf_params``: CRF parameters for every model (one) or for each model in order (one per model); none: the
    config's."""
    weights = [Path(w) for w in weights]
    if not weights:
        raise DeepLabEdgeError("no model to benchmark; pass --weights FILE (repeatable) or a folder of checkpoints")
    variants = list(dict.fromkeys(variants))
    if not variants:
        raise DeepLabEdgeError("no test-time setting to run; pass --scales (e.g. --scales 1)")
    if len(weights) > 1 and (config.engines or config.tflite is not None):
        raise DeepLabEdgeError("--engine and --tflite are one model's files: with several --weights they would be "
                               "scored under every model's name; bench that model alone with them")
    for w in weights:
        for v in {v.output_stride for v in variants}:
            try:
                checked_model(w, dataset, dataclasses.replace(config, output_stride=v))
            except DeepLabEdgeError as e:
                raise DeepLabEdgeError(f"--weights {w}: {e}") from None
    if len(crf_params) not in (0, 1, len(weights)):
        raise DeepLabEdgeError(f"{len(crf_params)} --crf-params files for {len(weights)} models; give one for every "
                               "model or one per --weights, in the same order")
    per_model = (list(crf_params) * len(weights) if len(crf_params) == 1 else list(crf_params)) or \
        [config.crf_params] * len(weights)
    names = _names(weights)
    alone = len(weights) * len(variants) == 1
    docs = []
    for i, (w, name) in enumerate(zip(weights, names)):
        for v in variants:
            tag = f"{name} {variant_label(v.output_stride, v.scales, v.flip)}"
            tick = progress if alone or not progress else (lambda desc, total, tag=tag: progress(f"{tag}: {desc}",
                                                                                                   total))
            # one artefact folder per model and output stride: its test-time settings share the export
            sub = work if alone else work / f"{i}-{slug(name)}" / f"os{v.output_stride or 'own'}"
            doc = run_bench(w, dataset, dataclasses.replace(config, output_stride=v.output_stride, scales=v.scales,
                                                            flip=v.flip, crf_params=per_model[i]),
                            work=sub, power=power, skipped=skipped, progress=tick, log=log)
            doc["model"]["name"] = name
            for r in doc["rows"]:
                r["model"] = name
            docs.append(doc)
    return docs[0] if len(docs) == 1 else joined(docs)


def joined(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' documents as one: every row (each naming its model and variant), mIoU change and speed-up
    against the baseline row of the first model's single-scale run (its first run when it has none), the Pareto
    front over all rows; each run's settings, skipped backends
    and artefacts under ``runs``."""
    single = [d for d in docs if d["model"]["name"] == docs[0]["model"]["name"] and d["settings"]["scales"] == [1.0]
              and not d["settings"]["flip"]]
    first = single[0] if single else docs[0]
    rows = [r for d in docs for r in d["rows"]]
    base = next(r for r in first["rows"] if r["backend"] == first["baseline"]["backend"]
                and r["crf"] == first["baseline"]["crf"])
    for r in rows:
        r["miou_delta_points"] = 100 * (r["miou"] - base["miou"])
        r["speedup"] = (base["latency_ms"] / r["latency_ms"]
                        if r["latency_is_speed"] and r["latency_ms"] and base["latency_ms"] else None)
    mark_pareto(rows)
    models = list({(d["model"]["name"], d["model"]["output_stride"]): d["model"] for d in docs}.values())
    runs = [{"model": d["model"]["name"], "variant": d["rows"][0]["variant"], "weights": d["weights"],
             "settings": d["settings"], "baseline": d["baseline"], "skipped": d["skipped"],
             "skipped_crf": d["skipped_crf"], "artifacts": d["artifacts"]} for d in docs]
    skipped = {(s["backend"], s["reason"]): {**s, "runs": []} for d in docs for s in d["skipped"]}
    for d in docs:  # a backend skipped in some runs only: say in which
        for s in d["skipped"]:
            skipped[(s["backend"], s["reason"])]["runs"].append(f"{d['model']['name']} {d['rows'][0]['variant']}")
    skipped_crf = {(s["crf"], s["reason"]): s for d in docs for s in d["skipped_crf"]}
    return {**{k: first[k] for k in ("format", "environment", "data", "dataset", "split", "images", "device",
                                     "power")},
            "weights": list(dict.fromkeys(m["file"] for m in models)),
            "models": models, "variants": list(dict.fromkeys(r["variant"] for r in rows)),
            "settings": {**first["settings"], "runs": len(docs)},
            "baseline": {**first["baseline"], "model": first["model"]["name"], "variant": base["variant"]},
            "rows": rows, "skipped": list(skipped.values()), "skipped_crf": list(skipped_crf.values()),
            "artifacts": first["artifacts"], "runs": runs}
