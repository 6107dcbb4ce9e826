"""This machine's CPU as Linux describes it (``/proc/cpuinfo``): its model name and instruction-set flags."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["read_cpuinfo", "cpuinfo_field", "cpu_flags", "cpu_model"]


def read_cpuinfo() -> str:
    """The text of ``/proc/cpuinfo`` ("" where there is none, as on macOS or Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpuinfo_field(keys: tuple[str, ...], cpuinfo: str | None = None) -> str | None:
    """The value of the first line whose key is one of ``keys`` (the first processor's), or None."""
    for line in (read_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's flags (x86 ``flags``, Arm ``Features``); empty where unknown."""
    return set((cpuinfo_field(("flags", "Features"), cpuinfo) or "").split())


def cpu_model() -> str:
    return cpuinfo_field(("model name",)) or platform.processor() or platform.machine()
