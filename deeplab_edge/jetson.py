"""What a Jetson board is: model, L4T release and power mode (None elsewhere).

Read from ``/etc/nv_tegra_release``, ``/proc/device-tree/model`` and ``nvpmodel -q``; used by the
engine manifest (which refuses engines built on another board or release) and by the bench's
machine metadata.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["jetson_info", "parse_l4t_release", "parse_nvpmodel"]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def parse_l4t_release(text: str) -> str | None:
    """``# R35 (release), REVISION: 4.1, ...`` (``/etc/nv_tegra_release``) -> ``"35.4.1"``."""
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def parse_nvpmodel(text: str) -> str | None:
    """``nvpmodel -q`` output (``NV Power Mode: MAXN`` then the mode id) -> ``"MAXN (0)"``."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    if not m:
        return None
    ids = [s.strip() for s in text[m.end():].splitlines() if s.strip().isdigit()]
    return f"{m.group(1)} ({ids[0]})" if ids else m.group(1)


def jetson_info() -> dict[str, Any] | None:
    """Board model, L4T release and power mode on a Jetson; None elsewhere."""
    release = _read("/etc/nv_tegra_release")
    model = _read("/proc/device-tree/model")
    if release is None and not (model and "jetson" in model.lower()):
        return None
    info: dict[str, Any] = {"model": model, "l4t": parse_l4t_release(release or "")}
    if shutil.which("nvpmodel"):
        try:
            q = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
            info["power_mode"] = parse_nvpmodel(q.stdout)
        except (OSError, subprocess.SubprocessError):
            info["power_mode"] = None
    info["tegrastats"] = shutil.which("tegrastats") is not None
    return info
