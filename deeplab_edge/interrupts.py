"""Ctrl-C and SIGTERM in the CLI: remove what the run staged and exit, without raising into native code.

Python's own Ctrl-C handling raises ``KeyboardInterrupt`` wherever the main thread happens to be,
and so did this CLI's SIGTERM handler. When that is inside Python code called *from* C++ (nanobind
building ``onnx``'s enums while ``onnx`` is imported, for one), the C++ side cannot carry the
exception: the process aborts (SIGABRT, sometimes SIGSEGV) and no ``finally`` runs, so staged
outputs stayed behind. The CLI's handlers therefore do not raise. They stop the child processes
registered with :func:`child` (SIGTERM, then SIGKILL after a grace period), remove every path
registered with :func:`track` (staged outputs, :func:`temp_dir` folders), print one line and end
the process at once with ``os._exit``: 143 for SIGTERM, 130 for Ctrl-C.

A loop that can end early and keep its work (the camera stream keeps the frames written so far)
asks for :func:`deferred_stop`: the first signal only sets a flag the loop checks between frames,
a second one ends the run as above.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["track", "track_new", "remove_tracked", "child", "stop_children", "deferred_stop", "StopRequest", "exit_on_signal",
           "temp_dir"]

_tracked: dict[int, Path] = {}  # insertion order: removed newest first
_deferred: list[StopRequest] = []
_children: dict[int, subprocess.Popen] = {}
_EXIT = {signal.SIGTERM: (143, "terminated"), signal.SIGINT: (130, "interrupted")}
_ending = False  # a signal is being handled: a second one kills the children without waiting


@contextmanager
def track(path: str | Path) -> Iterator[Path]:
    """Register ``path`` (a file or folder) for removal if the process is stopped by a signal inside the block."""
    path = Path(path)
    key = id(path)
    _tracked[key] = path
    try:
        yield path
    finally:
        _tracked.pop(key, None)


@contextmanager
def track_new(make: Callable[[], str | Path]) -> Iterator[Path]:
    """``make()`` a temporary file or folder and register it as :func:`track` does, as one step: SIGINT and SIGTERM
    are held while both happen (and delivered right after), so a signal cannot land between them and end the run
    with the new path left behind."""
    held = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if held else None
    try:
        path = Path(make())
        key = id(path)
        _tracked[key] = path
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    try:
        yield path
    finally:
        _tracked.pop(key, None)


def remove_tracked() -> int:
    """Remove every tracked path that still exists; return how many were removed."""
    n = 0
    for p in reversed(list(_tracked.values())):
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            n += 1
        except OSError:
            pass
    return n


@contextmanager
def child(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Register a child process: a signal that ends this run stops it too (os._exit would orphan it)."""
    _children[id(proc)] = proc
    try:
        yield proc
    finally:
        _children.pop(id(proc), None)


def stop_children(grace_s: float = 10.0) -> None:
    """SIGTERM every registered child still running, then SIGKILL those not gone after ``grace_s``."""
    running = [p for p in list(_children.values()) if p.poll() is None]
    for p in running:
        try:
            p.terminate()
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


class StopRequest:
    """Set by the first Ctrl-C or SIGTERM inside :func:`deferred_stop`; ``signal`` names it."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def deferred_stop() -> Iterator[StopRequest]:
    """Inside the block the first Ctrl-C or SIGTERM only sets the yielded request (true once set); the loop
    finishes the step it is in and stops. A second signal ends the run at once, as outside."""
    req = StopRequest()
    _deferred.append(req)
    try:
        yield req
    finally:
        _deferred.remove(req)


def _on_signal(signum, frame):  # noqa: ARG001
    if _deferred and not _deferred[-1]:
        _deferred[-1].signal = signal.Signals(signum).name
        return
    global _ending
    code, word = _EXIT[signum]
    grace, _ending = (0.0 if _ending else 10.0), True
    stop_children(grace)
    remove_tracked()
    # straight to the file descriptor: the console's lock may be held by the code we interrupted
    tty = os.isatty(2)
    line = f"\n\x1b[?25h\x1b[33m{word}\x1b[0m\n" if tty else f"{word}\n"  # a progress bar may have hidden the cursor
    try:
        os.write(2, line.encode())
    except OSError:
        pass
    os._exit(code)


@contextmanager
def exit_on_signal() -> Iterator[None]:
    """SIGTERM, and Ctrl-C where Python would raise on it, end the process cleanly inside the block.

    Only in the main thread (the only one that gets signals). Ctrl-C keeps whatever handler it
    had when that is not Python's default: a process started in the background with SIGINT
    ignored stays deaf to it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    prev = {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_signal)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        prev[signal.SIGINT] = signal.signal(signal.SIGINT, _on_signal)
    try:
        yield
    finally:
        for s, h in prev.items():
            signal.signal(s, h)


@contextmanager
def temp_dir(prefix: str = "deeplab-edge-", *, redirect: bool = False) -> Iterator[Path]:
    """A temporary folder, removed after the block and, in the CLI, by a signal that ends the run.

    With ``redirect``, :mod:`tempfile` also uses it by default inside the block, for libraries that
    make their own temporary files (ONNX Runtime's quantizer). Only around such calls: a process-wide
    redirect would also move caches that libraries keep under the temp folder across runs
    (``torch.compile``'s)."""
    with track_new(lambda: tempfile.mkdtemp(prefix=prefix)) as d:
        prev = tempfile.tempdir
        try:
            if redirect:
                tempfile.tempdir = str(d)
            yield d
        finally:
            tempfile.tempdir = prev
            shutil.rmtree(d, ignore_errors=True)
