"""``deeplab-edge crf tune``: the dense CRF's parameters chosen by grid search on held-out labelled images,
as DeepLab chose its own (Chen et al., TPAMI 2018, Sec. 4.1: w2 = 3 and theta_gamma fixed; w1, theta_alpha
and theta_beta searched on 100 held-out images, coarse to fine).

The network runs once per image; every grid point's CRF post-processes the same logits (``evaluate``'s
options: one confusion matrix per point), so the search costs one CRF per point per image and no repeated
inference. The best point (highest mIoU; ties to the earlier point) is written as a parameter file that
``eval``, ``predict`` and ``bench`` read with ``--crf-params``. Choose on images the result is *not*
reported on (e.g. part of the train split, never val).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Sequence

from deeplab_edge.crf import PARAMS_FORMAT, PRESETS, CRFParams, CRFStage, with_overrides
from deeplab_edge.errors import DeepLabEdgeError
from deeplab_edge.inference import evaluate

from .env import environment

__all__ = ["DEFAULT_GRID", "SEARCHABLE", "grid_points", "tune_crf"]

#: The default search: DeepLab-v2's ranges (w1 3-6, theta_alpha 30-100, theta_beta 3-6), coarsely.
DEFAULT_GRID = {"w1": (3.0, 4.0, 5.0), "theta_alpha": (30.0, 50.0, 70.0, 90.0), "theta_beta": (3.0, 5.0)}
#: the fields a grid may search (the others stay at the preset's)
SEARCHABLE = ("w1", "theta_alpha", "theta_beta", "w2", "theta_gamma")


def grid_points(base: CRFParams, grid: dict[str, Sequence[float]]) -> list[CRFParams]:
    """Every combination of the grid's values, the preset's other fields kept."""
    unknown = set(grid) - set(SEARCHABLE)
    if unknown:
        raise DeepLabEdgeError(f"cannot search {', '.join(sorted(unknown))}; search among {', '.join(SEARCHABLE)}")
    names = list(grid)
    try:
        return [with_overrides(base, **dict(zip(names, values))) for values in itertools.product(*grid.values())]
    except ValueError as e:
        raise DeepLabEdgeError(f"a grid value is not a CRF parameter: {e}") from None


def tune_crf(segmenter, dataset, *, grid: dict[str, Sequence[float]] | None = None, preset: str = "deeplab-v2",
             method: str = "torch", device: str = "cpu", model: str | None = None,
             on_image: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The grid's mIoU on ``dataset`` (``segmenter``'s logits, each point's CRF) and the best point: a
    document with ``params`` (the best point's parameters, what ``--crf-params`` reads), ``best_miou``, ``no_crf_miou``, ``preset_miou`` (the preset's
    own point, scored beside the grid) and every point's result."""
    grid = dict(grid or DEFAULT_GRID)
    base = PRESETS[preset]
    points = grid_points(base, grid)
    if not points:
        raise DeepLabEdgeError("the CRF grid is empty; give at least one value per searched parameter")
    options: dict[str, Any] = {"none": None, "preset": CRFStage(method, base, device)}
    options.update({f"p{i}": CRFStage(method, p, device) for i, p in enumerate(points)})
    t = time.perf_counter()
    ev = evaluate(segmenter, dataset, options=options, on_image=on_image)
    seconds = time.perf_counter() - t
    scored = [{"params": {k: getattr(p, k) for k in grid}, "miou": ev["options"][f"p{i}"]["miou"]}
              for i, p in enumerate(points)]
    best_i = max(range(len(points)), key=lambda i: (scored[i]["miou"], -i))
    # a best value at the end of its range: the optimum may lie beyond what was tried
    edge = [{"param": k, "value": scored[best_i]["params"][k], "side": "smallest" if scored[best_i]["params"][k] ==
             min(v) else "largest"} for k, v in grid.items()
            if len(v) > 1 and scored[best_i]["params"][k] in (min(v), max(v))]
    return {"edge": edge, "format": PARAMS_FORMAT, "params": points[best_i].as_dict(), "best_miou": scored[best_i]["miou"],
            "no_crf_miou": ev["options"]["none"]["miou"], "preset": preset,
            "preset_miou": ev["options"]["preset"]["miou"], "method": method, "grid": grid, "points": scored,
            "model": model, "data": str(dataset.root), "split": getattr(dataset, "split", None),
            "images": len(dataset), "image_ids": [s.id for s in dataset.samples], "seconds": seconds,
            "environment": environment()}
