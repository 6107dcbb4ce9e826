"""This machine's CPU as Linux describes it (``/proc/cpuinfo``): its model name and instruction-set flags."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["read_cpuinfo", "cpuinfo_field", "cpu_flags", "cpu_model", "VNNI_FLAGS", "int8_saturates"]

#: x86 flags whose int8 dot products accumulate u8 x s8 products in int32 (AVX-512 VNNI, AVX-VNNI, AMX)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


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


def int8_saturates(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether this CPU's int8 convolutions may saturate with 8-bit weights: an x86 CPU without VNNI/AMX (or of
    unknown flags) multiplies u8 x s8 pairs with VPMADDUBSW into int16, and 2 * 255 * 127 > 32767; 7-bit
    weights (|w| <= 63) cannot. Intel documents it as OpenVINO's "saturation issue" (SSE, AVX2, AVX-512
    without VNNI); Arm's int8 dot products accumulate in int32."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return False
    return not (VNNI_FLAGS & cpu_flags(cpuinfo))
