"""Which images two sets share, by content (a copy under another name counts): what tells a
held-out INT8 figure from one measured on its own calibration images."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

__all__ = ["shared_images", "image_digests", "recorded_overlap"]


def _digest(path: Path) -> tuple[int, str]:
    data = Path(path).read_bytes()
    return len(data), hashlib.sha1(data).hexdigest()


def shared_images(first: Iterable[Path], second: Iterable[Path]) -> list[tuple[Path, Path]]:
    """Pairs (a, b), a from ``first`` and b from ``second``, of files with the same bytes."""
    seen: dict[tuple[int, str], Path] = {}
    for p in first:
        seen.setdefault(_digest(p), Path(p))
    return [(seen[d], Path(p)) for p in second if (d := _digest(p)) in seen]


def image_digests(paths: Iterable[Path]) -> list[str]:
    """SHA-1 of each file's bytes: what a calibrated model records of its calibration images."""
    return [_digest(p)[1] for p in paths]


def recorded_overlap(recorded: Iterable[str], paths: Iterable[Path]) -> list[Path]:
    """The files among ``paths`` whose bytes are among the ``recorded`` digests."""
    known = set(recorded)
    return [Path(p) for p in paths if _digest(p)[1] in known]
