"""Jetson telemetry: power rails and clocks from ``tegrastats`` (or jetson-stats), the power
mode from ``nvpmodel``, and the board / L4T release.

tegrastats prints one line per interval. Power rails come in two formats:

* JetPack 5/6 (L4T 35/36, Orin; Xavier on JetPack 5): ``VDD_GPU_SOC 3150mW/2971mW`` —
  current and running-average milliwatts;
* L4T 32 (JetPack 4: Nano, TX2, Xavier): ``POM_5V_IN 2526/2526`` or ``VDD_IN 4960/4960`` —
  the same pair without the unit.

The board's total is its input rail where one is reported (``VDD_IN`` on Orin NX / Nano and
Xavier NX, ``POM_5V_IN`` on Nano); AGX Orin and AGX Xavier report no input rail, so their
total is the sum of the rails shown (what jetson-stats calls ``tot``). Means are over the
*current* values of the samples taken while the benchmark ran, never tegrastats' own
since-start averages.

A sampler runs a child (tegrastats) or a client thread (jtop) that must end whatever the
benchmark does: measure with :func:`sampling` (``with sampling(sampler) as reading: ...``; the
watts are in ``reading.watts`` after the block), which stops it on an exception too.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from deeplab_edge.interrupts import child

__all__ = ["parse_tegrastats", "total_power_mw", "TegrastatsSampler", "JtopSampler", "jtop_power_mw",
           "power_sampler", "sampling", "Reading"]

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(mW)?/(\d+)(mW)?(?!\w)")
_FREQ = re.compile(r"\b(EMC_FREQ|GR3D_FREQ|GR3D2_FREQ|VIC_FREQ|NVDLA\d_FREQ) (\d+)%(?:@\[?(\d+))?")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")


def parse_tegrastats(line: str) -> dict[str, Any]:
    """One tegrastats line as numbers: ``rails_mw`` (current mW per rail), ``ram_used_mb``,
    ``ram_total_mb``, ``cpu`` (per core: load % and MHz, or None when off), ``engines``
    (load % and MHz of EMC, GR3D, ...) and ``temps_c``."""
    out: dict[str, Any] = {"rails_mw": {}, "engines": {}, "temps_c": {}, "cpu": []}
    for name, cur, _u1, _avg, _u2 in _RAIL.findall(line):
        if name in ("RAM", "SWAP", "IRAM", "LFB"):
            continue
        out["rails_mw"][name] = int(cur)
    m = _RAM.search(line)
    if m:
        out["ram_used_mb"], out["ram_total_mb"] = int(m.group(1)), int(m.group(2))
    m = _CPU.search(line)
    if m:
        for core in m.group(1).split(","):
            core = core.strip()
            cm = re.fullmatch(r"(\d+)%(?:@(\d+))?", core)
            out["cpu"].append(None if cm is None else {"load_pct": int(cm.group(1)),
                                                        "mhz": int(cm.group(2)) if cm.group(2) else None})
    for name, load, mhz in _FREQ.findall(line):  # the clock is missing on some releases ("GR3D_FREQ 0%")
        out["engines"][name] = {"load_pct": int(load), "mhz": int(mhz) if mhz else None}
    for name, temp in _TEMP.findall(line):
        if name not in out["engines"]:
            out["temps_c"][name] = float(temp)
    return out


def total_power_mw(rails: dict[str, int]) -> tuple[float | None, str]:
    """The board's power from one sample's rails, and how it was obtained."""
    for name in INPUT_RAILS:
        if name in rails:
            return float(rails[name]), name
    if rails:
        return float(sum(rails.values())), "sum of " + "+".join(rails)
    return None, "no power rails (tegrastats shows them only when run as root on some releases)"


@dataclass
class _Run:
    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None
    guard: ExitStack = field(default_factory=ExitStack)


class TegrastatsSampler:
    """Samples tegrastats while a benchmark runs: ``with sampling(s) as r: ...`` (or
    ``h = s.start()`` then, in a ``finally``, ``watts = s.stop(h)``)."""

    source = "tegrastats"

    def __init__(self, interval_ms: int = 100, executable: str | None = None) -> None:
        self.interval_ms = interval_ms
        self.executable = executable or shutil.which("tegrastats")
        self.last: dict[str, Any] | None = None

    @property
    def available(self) -> bool:
        return self.executable is not None

    def start(self) -> _Run:
        proc = subprocess.Popen([self.executable, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        run = _Run(proc)
        try:
            run.guard.enter_context(child(proc))  # a signal that ends the CLI stops tegrastats too

            def read() -> None:
                for line in proc.stdout:  # type: ignore[union-attr]
                    run.lines.append(line.strip())

            run.thread = threading.Thread(target=read, daemon=True)
            run.thread.start()
        except BaseException:
            self.close(run)
            raise
        return run

    def close(self, run: _Run) -> None:
        """End tegrastats and its reader (idempotent; what ``stop`` and an exception both do)."""
        try:
            if run.proc.poll() is None:
                run.proc.terminate()
                try:
                    run.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    run.proc.kill()
                    run.proc.wait(timeout=5)
        finally:
            run.guard.close()
            if run.thread:
                run.thread.join(timeout=5)
            if run.proc.stdout:
                run.proc.stdout.close()

    def stop(self, run: _Run) -> float | None:
        """Mean board power (W) over the samples since ``start``; details in ``self.last``."""
        try:
            time.sleep(self.interval_ms / 1e3)  # let the last interval print
        finally:
            self.close(run)
        self.last = summarize(run.lines)
        return self.last["power_w"]


def summarize(lines: list[str]) -> dict[str, Any]:
    """Mean total power (W), per-rail means and engine clocks over tegrastats lines."""
    samples = [parse_tegrastats(s) for s in lines if s]
    totals, how = [], None
    for s in samples:
        mw, how = total_power_mw(s["rails_mw"])
        if mw is not None:
            totals.append(mw)
    rails: dict[str, list[int]] = {}
    engines: dict[str, list[int]] = {}
    for s in samples:
        for k, v in s["rails_mw"].items():
            rails.setdefault(k, []).append(v)
        for k, v in s["engines"].items():
            if v["mhz"] is not None:
                engines.setdefault(k, []).append(v["mhz"])
    return {"samples": len(samples), "power_w": sum(totals) / len(totals) / 1e3 if totals else None,
            "total_from": how, "rails_w": {k: sum(v) / len(v) / 1e3 for k, v in rails.items()},
            "clocks_mhz": {k: sum(v) / len(v) for k, v in engines.items()}}


def jtop_power_mw(power: Any) -> tuple[float | None, dict[str, float], str]:
    """Board power (mW), per-rail power (mW) and where the total came from, from one reading
    of jetson-stats' ``jtop.power``. Two layouts (jetson-stats source, ``jtop/core/power.py``
    and ``jtop/jtop.py``): 4.x ``{"rail": {name: {"power": mW, "avg": ...}}, "tot": {"power":
    mW, "name": input rail}}`` — ``tot`` is the input rail (VDD_IN / POM_5V_IN, taken out of
    ``rail``) or the sum of the rails, as :func:`total_power_mw` decides; 3.x ``(total, rails)``
    with ``{"cur": mW, "avg": mW}`` entries."""
    if isinstance(power, dict) and "tot" in power:
        rails = {k: float(v["power"]) for k, v in (power.get("rail") or {}).items() if "power" in v}
        tot = power["tot"] or {}
        how = tot.get("name") or ("sum of " + "+".join(rails) if rails else "jetson-stats total")
        return (float(tot["power"]) if "power" in tot else None), rails, how
    if isinstance(power, (tuple, list)) and len(power) == 2:
        total, rails = power
        rails_mw = {k: float(v["cur"]) for k, v in (rails or {}).items() if "cur" in v}
        return (float(total["cur"]) if total and "cur" in total else None), rails_mw, "jetson-stats total"
    return None, {}, "jetson-stats gave no power reading"


def summarize_jtop(readings: list[Any]) -> dict[str, Any]:
    """:func:`summarize`'s result from jetson-stats ``power`` readings."""
    totals, rails, how = [], {}, None
    for r in readings:
        mw, per_rail, how = jtop_power_mw(r)
        if mw is not None:
            totals.append(mw)
        for k, v in per_rail.items():
            rails.setdefault(k, []).append(v)
    return {"samples": len(readings), "power_w": sum(totals) / len(totals) / 1e3 if totals else None,
            "total_from": how, "rails_w": {k: sum(v) / len(v) / 1e3 for k, v in rails.items()}, "clocks_mhz": {},
            "source": "jetson-stats"}


class JtopSampler:
    """Samples jetson-stats (``jtop``, which reads the INA3221 power monitors through its
    service) while a benchmark runs; the same interface as :class:`TegrastatsSampler`. The
    service sets the update rate (its ``interval``, 0.5 s by default), so short passes get
    few samples."""

    source = "jetson-stats"

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        self.last: dict[str, Any] | None = None

    @property
    def available(self) -> bool:
        return importlib.util.find_spec("jtop") is not None

    def start(self) -> tuple[Any, list[Any]]:
        from jtop import jtop

        readings: list[Any] = []
        handle = jtop(interval=self.interval_ms / 1e3)
        handle.attach(lambda j: readings.append(copy.deepcopy(j.power)))
        try:
            handle.start()
        except BaseException:
            handle.close()
            raise
        return handle, readings

    def close(self, run: tuple[Any, list[Any]]) -> None:
        handle, readings = run
        handle.close()

    def stop(self, run: tuple[Any, list[Any]]) -> float | None:
        handle, readings = run
        handle.close()
        self.last = summarize_jtop(readings)
        return self.last["power_w"]


@dataclass
class Reading:
    """What :func:`sampling` measured: mean board power (W) over the block, None without a
    sampler or a sample; ``details``: the sampler's summary (rails, clocks, samples)."""
    watts: float | None = None
    details: dict[str, Any] | None = None


@contextmanager
def sampling(sampler: TegrastatsSampler | JtopSampler | None) -> Iterator[Reading]:
    """Sample power while the block runs (nothing when ``sampler`` is None). The sampler's
    child process (tegrastats) or client (jtop) is stopped however the block ends; on an
    exception no reading is taken and the exception goes on."""
    reading = Reading()
    if sampler is None:
        yield reading
        return
    run = sampler.start()
    try:
        yield reading
    except BaseException:
        sampler.close(run)
        raise
    reading.watts = sampler.stop(run)
    reading.details = sampler.last


def power_sampler(interval_ms: int = 100) -> TegrastatsSampler | JtopSampler | None:
    """jetson-stats where it is installed and its service answers, else tegrastats where it
    exists (a Jetson), else None (power is then not reported)."""
    j = JtopSampler(interval_ms)
    if j.available:
        try:
            with sampling(j):  # the service must be running and reachable by this user
                pass
            return j
        except Exception:  # noqa: BLE001 - jtop raises JtopException, OSError, ...: fall back to tegrastats
            pass
    s = TegrastatsSampler(interval_ms)
    return s if s.available else None
