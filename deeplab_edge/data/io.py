"""Reading images and label maps, and writing label maps as PNG."""

from __future__ import annotations

import re
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from ..outputs import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LABEL_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N")  # class indices: 8, 16 or 32 bit
EXIF_ORIENTATION = 0x0112
# EXIF orientations that rotate by 90 degrees (the image is shown with width and height swapped)
SWAPS_SIZE = {5: "transposed", 6: "rotated 90 degrees clockwise", 7: "transversed",
              8: "rotated 90 degrees counter-clockwise"}


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved class index), (n, 3) uint8."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


_VOC_PALETTE = voc_palette()
_VOC_PALETTE.flags.writeable = False
_GRAY_PALETTE = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, 1)


def _stored_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image file's header, read past PIL's pixel limit (only to name it in errors)."""
    Image.init()
    try:
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                if accept is not None and not accept(prefix):
                    continue
                fp.seek(0)
                try:
                    return tuple(factory(fp, str(path)).size)  # the plugin reads the header, no pixel check
                except (SyntaxError, IndexError, TypeError, ValueError, OSError, struct.error):
                    fp.seek(0)
    except OSError:
        pass
    return None


def _too_large(path: Path, what: str, e: Exception) -> DataError:
    """The one-line error for an image above PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)."""
    size = _stored_size(path)
    if size is not None:
        pixels, shown = size[0] * size[1], f"{size[0]}x{size[1]} "
    else:
        found = re.search(r"\((\d+) pixels\)", str(e))
        pixels, shown = (int(found.group(1)) if found else 0), ""
    limit = Image.MAX_IMAGE_PIXELS or 0
    return DataError(f"{path}: the {what} is {shown}({pixels / 1e6:.3g} Mpixels), above the {limit / 1e6:.3g} "
                     "Mpixel limit PIL sets against decompression bombs; resize it (from Python, a larger "
                     "PIL.Image.MAX_IMAGE_PIXELS allows it)")


@contextmanager
def _opened(path: Path, what: str) -> Iterator[Image.Image]:
    """Open an image file; a missing, unreadable or too large file becomes a one-line DataError."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; check the path or the dataset layout")
    try:
        with warnings.catch_warnings():  # above MAX_IMAGE_PIXELS PIL only warns: refused the same way
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_large(path, what, e) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read the {what} ({e}); replace or remove the file") from e
    try:
        with im:
            yield im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read the {what} ({e}); replace or remove the file") from e


def probe_image(path: str | Path) -> None:
    """Check that an image file opens (its header: format and size, the pixel limit) without decoding it, so a
    command can refuse a bad input before it writes anything."""
    with _opened(Path(path), "image"):
        pass


def shown_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as :func:`load_image` returns it (EXIF orientation applied), from its header."""
    with _opened(Path(path), "image") as im:
        w, h = im.size
        return (h, w) if _orientation(im) in SWAPS_SIZE else (w, h)


def label_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a label map, from its header."""
    with _opened(Path(path), "label") as im:
        return im.size


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag of an open image (1 when it has none or its EXIF cannot be parsed)."""
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
    except (SyntaxError, ValueError, TypeError, KeyError, IndexError, OSError, struct.error):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file (1-8; 1 when it has none)."""
    with _opened(Path(path), "image") as im:
        return _orientation(im)


def load_image(path: str | Path) -> np.ndarray:
    """An RGB image as a uint8 array (H, W, 3), turned as its EXIF orientation says (as viewers show it)."""
    with _opened(Path(path), "image") as im:
        if _orientation(im) != 1:
            im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _check_palette(path: Path, im: Image.Image, index: np.ndarray, palettes: Mapping[str, np.ndarray],
                   unchecked: Iterable[int]) -> None:
    """A 'P' label's colours, for the indices it uses, are one of ``palettes`` or grayscale (index i is
    (i, i, i)); else its indices are no class ids (a colour label saved with an adaptive palette)."""
    pal = np.asarray(im.getpalette() or [], np.uint8).reshape(-1, 3)
    used = np.flatnonzero(np.bincount(index.ravel(), minlength=256))
    used = used[(used < len(pal)) & ~np.isin(used, list(unchecked))]  # beyond the palette: nothing to compare
    if used.size == 0:
        return
    known = {**palettes, "VOC": _VOC_PALETTE}
    if any((pal[used] == ref[used]).all() for ref in (_GRAY_PALETTE, *known.values())):
        return
    name, ref = next(iter(known.items()))
    i = next(int(i) for i in used if (pal[i] != ref[i]).any())
    raise DataError(f"{path}: label PNG is a palette image whose colours are neither class indices (grayscale) nor "
                    f"the {' or '.join(known)} colour map (index {i} is {tuple(int(v) for v in pal[i])}, "
                    f"{name} has {tuple(int(v) for v in ref[i])}), so its pixel values are no class ids (a colour "
                    "label saved with an adaptive palette?); convert colour labels to index PNGs (each pixel its "
                    f"class index, 'L' or 'P' with the {name} palette) first")


def load_label(path: str | Path, palettes: Mapping[str, np.ndarray] | None = None,
               unchecked: Iterable[int] = (255,)) -> np.ndarray:
    """A label map of class indices (H, W): uint8 from 'P' or 'L' PNGs, int64 with the exact values from
    16/32-bit ones. A 'P' label must carry grayscale, the VOC colour map or one of ``palettes`` (name ->
    (256, 3)) for the indices it uses, ``unchecked`` (ignore, void) aside."""
    path = Path(path)
    with _opened(path, "label") as im:
        if im.mode not in LABEL_MODES:
            raise DataError(f"{path}: label PNG has mode {im.mode}; expected class indices ('P' or 'L'), "
                            "not colours — convert colour labels to index PNGs first")
        if im.mode in ("P", "L"):
            index = np.asarray(im, dtype=np.uint8).copy()
            if im.mode == "P":
                _check_palette(path, im, index, palettes or {}, unchecked)
            return index
        return np.asarray(im).astype(np.int64)  # 'I;16' and 'I': the stored values, not clipped to 8 bits


def save_png(array: np.ndarray, path: str | Path, palette: np.ndarray | None = None) -> None:
    """Write a uint8 array as PNG ('P' with ``palette`` for label maps), atomically."""
    im = Image.fromarray(array)
    if palette is not None:
        im = im.convert("P") if im.mode != "P" else im
        im.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
