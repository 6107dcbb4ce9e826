"""The one post-training calibration pipeline: histograms -> thresholds -> bias correction -> QDQ.

:class:`Recipe` is a method as data (how thresholds are chosen, whether the weights' mean error is corrected,
which parts are quantized); :class:`Calibrator` runs the stages on one FP32 ONNX model and its preprocessed
calibration inputs, collecting the statistics once for any number of recipes. ``calibrate`` (the files of
``deeplab-edge calibrate``), the PTQ comparison (``bench.ptq``) and QAT's starting ranges
(``qat.ptq_ranges``) all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from deeplab_edge.errors import CalibrationError

from .collect import activation_tensors, collect_histograms
from .methods import METHODS
from .qdq import WEIGHT_BITS, bias_corrections, insert_qdq
from .search import thresholds

__all__ = ["Recipe", "Calibrator", "PARTS"]

#: what a QDQ model quantizes: everything, or (diagnostics) only the weights or only the activations
PARTS = ("both", "weights", "activations")

Progress = Callable[[str, int], Callable[[], None]]


@dataclass(frozen=True)
class Recipe:
    """How one INT8 model is made from the statistics: ``method`` (one of :data:`.methods.METHODS`) chooses
    the thresholds, ``percentile`` for the percentile method, ``search_num`` images for ``search``,
    ``bias_correction`` takes the weights' int8 error off each output channel's mean, ``parts`` what is
    quantized, ``weight_bits`` 8 or 7 (weights within +-63, for x86 CPUs without VNNI)."""

    method: str = "mse"
    percentile: float = 99.99
    search_num: int = 16
    bias_correction: bool = True
    parts: str = "both"
    weight_bits: int = 8

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CalibrationError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0 < self.percentile <= 100:  # NaN fails this too
            raise CalibrationError(f"--percentile must be in (0, 100], got {self.percentile}")
        if self.search_num < 1:
            raise CalibrationError(f"expected search_num >= 1, got {self.search_num}: calibrating on no images "
                                   "gives all-zero scales")
        if self.weight_bits not in WEIGHT_BITS:
            raise CalibrationError(f"--weight-bits {self.weight_bits!r}: use 8 (TensorRT's int8) or 7 (no int16 "
                                   "saturation on x86 CPUs without VNNI)")
        if self.parts not in PARTS:
            raise CalibrationError(f"unknown parts {self.parts!r}; choose one of {', '.join(PARTS)}")


class Calibrator:
    """The stages on one FP32 ONNX ``model`` and its preprocessed ``inputs`` (C, H, W tensors). The two passes
    over the images (max|x|, then histograms and per-channel means) run once, on first use; ``progress(stage,
    total)`` returns a tick for each stage ("collect", "search") when given."""

    def __init__(self, model, inputs: list[torch.Tensor], progress: Progress | None = None) -> None:
        self.model, self.inputs, self._progress = model, inputs, progress
        self.names = activation_tensors(model)
        self._stats: dict[str, tuple[np.ndarray, float]] | None = None
        self._means: dict[str, np.ndarray] = {}
        self._shift: dict[int, dict[str, np.ndarray]] = {}  # weight bits -> Conv -> shift

    def _tick(self, stage: str, total: int) -> Callable[[], None] | None:
        return self._progress(stage, total) if self._progress and total else None

    @property
    def stats(self) -> dict[str, tuple[np.ndarray, float]]:
        """tensor -> (histogram of |x|, max|x|) over the calibration inputs."""
        if self._stats is None:
            self._stats = collect_histograms(self.model, self.inputs, self.names,
                                             self._tick("collect", 2 * len(self.inputs)), means_out=self._means)
        return self._stats

    def searched(self, recipe: Recipe) -> int:
        """How many images ``recipe``'s threshold search runs on (0 for the histogram methods)."""
        return min(recipe.search_num, len(self.inputs)) if recipe.method == "search" else 0

    def thresholds(self, recipe: Recipe) -> dict[str, float]:
        """tensor -> amax (the clipping threshold; scale = amax / 127)."""
        stats = self.stats
        return thresholds(self.model, self.inputs, stats, recipe.method, recipe.percentile, recipe.search_num,
                          self._tick("search", self.searched(recipe)), weight_bits=recipe.weight_bits)

    def bias_shift(self, recipe: Recipe) -> dict[str, np.ndarray] | None:
        """The per-channel bias corrections ``recipe`` applies (None without bias correction)."""
        if not recipe.bias_correction:
            return None
        if recipe.weight_bits not in self._shift:
            self.stats  # the means come from the same pass
            self._shift[recipe.weight_bits] = bias_corrections(self.model, self._means, recipe.weight_bits)
        return self._shift[recipe.weight_bits]

    def qdq(self, recipe: Recipe, amax: dict[str, float], keep_float: frozenset[str] = frozenset()):
        """The TensorRT QDQ model at thresholds ``amax``, the Convs named in ``keep_float`` left in float."""
        return insert_qdq(self.model, amax, keep_float, parts=recipe.parts, bias_shift=self.bias_shift(recipe),
                          weight_bits=recipe.weight_bits)
