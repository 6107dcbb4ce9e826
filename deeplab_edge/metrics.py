"""Confusion-matrix segmentation metrics.

IoU_c = TP / (TP + FP + FN). mIoU is the mean over classes whose union is non-empty (as
``tf.metrics.mean_iou`` and the TFLite reference compute it); classes absent from both
the labels and the predictions are reported as ``None`` and left out of the mean.
Pixels whose label is ``ignore_index`` (or outside ``[0, num_classes)``) are skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) matrix; rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"expected num_classes >= 1, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mat = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> np.ndarray:
        """Add one batch (any shape, equal for both); returns this batch's own matrix."""
        pred = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred).astype(np.int64).ravel()
        target = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target).astype(np.int64).ravel()
        if pred.shape != target.shape:
            raise ValueError(f"expected prediction and label of equal size, got {pred.size} and {target.size}")
        n = self.num_classes
        keep = (target != self.ignore_index) & (target >= 0) & (target < n)
        if np.any((pred[keep] < 0) | (pred[keep] >= n)):
            raise ValueError(f"expected predictions in [0, {n}), got values outside")
        batch = np.bincount(target[keep] * n + pred[keep], minlength=n * n).reshape(n, n)
        self.mat += batch
        return batch

    def reset(self) -> None:
        self.mat[:] = 0

    @staticmethod
    def summarize(mat: np.ndarray) -> dict[str, Any]:
        tp = np.diag(mat).astype(np.float64)
        gt, pr = mat.sum(1).astype(np.float64), mat.sum(0).astype(np.float64)
        union = gt + pr - tp
        iou = [float(t / u) if u > 0 else None for t, u in zip(tp, union)]
        acc = [float(t / g) if g > 0 else None for t, g in zip(tp, gt)]
        valid = [v for v in iou if v is not None]
        total = mat.sum()
        return {
            "miou": float(np.mean(valid)) if valid else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total else float("nan"),
            "mean_acc": float(np.mean([a for a in acc if a is not None])) if any(a is not None for a in acc)
            else float("nan"),
            "class_iou": iou,
            "class_acc": acc,
            "classes_counted": len(valid),
            "pixels": int(total),
        }

    def compute(self) -> dict[str, Any]:
        return self.summarize(self.mat)
