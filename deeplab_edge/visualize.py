"""Colour masks and overlays for label maps."""

from __future__ import annotations

import numpy as np

__all__ = ["colorize", "overlay"]


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours from a (256, 3) palette."""
    return palette[labels.astype(np.int64) & 255]


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            background: int | None = 0) -> np.ndarray:
    """Blend the colour mask over the image; ``background`` pixels keep the image unchanged."""
    if not 0 <= alpha <= 1:  # NaN too
        raise ValueError(f"expected an opacity alpha in [0, 1], got {alpha}")
    if image.shape[:2] != labels.shape:
        raise ValueError(f"expected a label map of the image's size {image.shape[:2]}, got {labels.shape}")
    colour = colorize(labels, palette).astype(np.float32)
    out = image.astype(np.float32)
    mask = np.ones(labels.shape, bool) if background is None else labels != background
    out[mask] = (1 - alpha) * out[mask] + alpha * colour[mask]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
