"""Reading images and label maps, and writing label maps as PNG."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..outputs import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@contextmanager
def _opened(path: Path, what: str) -> Iterator[Image.Image]:
    """Open an image file; a missing or unreadable file becomes a one-line DataError."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; check the path or the dataset layout")
    try:
        with Image.open(path) as im:
            yield im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read the {what} ({e}); replace or remove the file") from e


def load_image(path: str | Path) -> np.ndarray:
    """An RGB image as a uint8 array (H, W, 3)."""
    with _opened(Path(path), "image") as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def load_label(path: str | Path) -> np.ndarray:
    """A label map as a uint8 array (H, W) of class indices ('P' or 'L' PNGs)."""
    path = Path(path)
    with _opened(path, "label") as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise DataError(f"{path}: label PNG has mode {im.mode}; expected class indices ('P' or 'L'), "
                            "not colours — convert colour labels to index PNGs first")
        return np.asarray(im, dtype=np.int64).astype(np.uint8 if im.mode in ("P", "L") else np.int64)


def save_png(array: np.ndarray, path: str | Path, palette: np.ndarray | None = None) -> None:
    """Write a uint8 array as PNG ('P' with ``palette`` for label maps), atomically."""
    im = Image.fromarray(array)
    if palette is not None:
        im = im.convert("P") if im.mode != "P" else im
        im.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
