"""Which images two sets share, by content (a copy under another name counts): what tells a
held-out INT8 figure from one measured on its own calibration images."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

__all__ = ["shared_images"]


def _digest(path: Path) -> tuple[int, str]:
    data = Path(path).read_bytes()
    return len(data), hashlib.sha1(data).hexdigest()


def shared_images(first: Iterable[Path], second: Iterable[Path]) -> list[tuple[Path, Path]]:
    """Pairs (a, b), a from ``first`` and b from ``second``, of files with the same bytes."""
    seen: dict[tuple[int, str], Path] = {}
    for p in first:
        seen.setdefault(_digest(p), Path(p))
    return [(seen[d], Path(p)) for p in second if (d := _digest(p)) in seen]
