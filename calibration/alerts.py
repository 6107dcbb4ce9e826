"""Calibration warnings as data: each has a kind, ``calibrate`` records them in its report, and the commands
choose what to show by kind, never by their wording (rewording a message cannot silence a held-out or
kernel-bug alert)."""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["CalibrationWarning", "FewImagesWarning", "NotHeldOutWarning", "KernelDisagreementWarning",
           "DegenerateCalibrationWarning", "KINDS", "recorded"]


class CalibrationWarning(UserWarning):
    """Base of every calibration warning; ``kind`` is what reports record and commands filter on."""

    kind = "calibration"


class FewImagesWarning(CalibrationWarning):
    """Fewer calibration images than asked for: all of them are used."""

    kind = "few_images"


class NotHeldOutWarning(CalibrationWarning):
    """An accuracy measured on images the calibration saw."""

    kind = "not_held_out"


class KernelDisagreementWarning(CalibrationWarning):
    """This CPU's ONNX Runtime int8 kernels part from the CPU INT8 model's exact arithmetic."""

    kind = "kernel_disagreement"


class DegenerateCalibrationWarning(CalibrationWarning):
    """Calibration images or ranges that cannot represent real inputs (blank or identical images, collapsed
    ranges)."""

    kind = "degenerate"


KINDS = {c.kind: c for c in (FewImagesWarning, NotHeldOutWarning, KernelDisagreementWarning,
                             DegenerateCalibrationWarning)}


def recorded(caught: Iterable[Any]) -> list[dict[str, str]]:
    """The calibration warnings among ``warnings.catch_warnings(record=True)``'s, as report entries."""
    return [{"kind": w.category.kind, "message": str(w.message)} for w in caught
            if isinstance(w.category, type) and issubclass(w.category, CalibrationWarning)]
