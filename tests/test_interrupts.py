"""The CLI's signal handling (deeplab_edge.interrupts): which handlers are installed, what a signal does
(in child processes), and the temporary folders it removes. The end-to-end cases
(a signal in the middle of a real `calibrate` or `export`) are in test_bad_input.py."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from deeplab_edge import interrupts


@pytest.mark.parametrize("redirect", [False, True])
def test_temp_dir_is_removed_and_redirects_only_when_asked(redirect):
    before = tempfile.gettempdir()
    with interrupts.temp_dir(redirect=redirect) as d:
        assert d.is_dir() and d.parent == Path(before) and d in interrupts._tracked.values()
        fd, name = tempfile.mkstemp()
        os.close(fd)
        assert (Path(name).parent == d) is redirect
        os.unlink(name)
    assert not d.exists() and tempfile.gettempdir() == before and d not in interrupts._tracked.values()


def test_remove_tracked_removes_files_and_folders_only_while_tracked(tmp_path):
    f, folder, kept = tmp_path / "f.tmp", tmp_path / "stage", tmp_path / "kept.tmp"
    f.write_text("x")
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a").write_text("y")
    kept.write_text("z")
    with interrupts.track(kept):
        pass
    with interrupts.track(f), interrupts.track(folder), interrupts.track(tmp_path / "never-made"):
        assert interrupts.remove_tracked() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.tmp"]


def test_handlers_installed_and_restored():
    prev_term, prev_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with interrupts.exit_on_signal():
            assert signal.getsignal(signal.SIGTERM) is interrupts._on_signal
            assert signal.getsignal(signal.SIGINT) is interrupts._on_signal
        assert signal.getsignal(signal.SIGTERM) is prev_term
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        # a process started with Ctrl-C ignored (nohup, a background job) stays deaf to it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with interrupts.exit_on_signal():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is interrupts._on_signal
    finally:
        signal.signal(signal.SIGINT, prev_int)


_CHILD = """
import os, signal, sys
from deeplab_edge import interrupts
signal.signal(signal.SIGINT, signal.default_int_handler)

def wait():
    for _ in range(1000):  # the handler runs at the next bytecode boundary
        pass

with interrupts.exit_on_signal():
    with interrupts.deferred_stop() as stop:
        for _ in range({deferred}):
            os.kill(os.getpid(), signal.{sig})
            wait()
            print("stop requested by", stop.signal, flush=True)
    os.kill(os.getpid(), signal.{sig})
    wait()
print("not stopped")
"""


@pytest.mark.parametrize("sig, code, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")],
                         ids=["sigterm", "ctrl-c"])
@pytest.mark.parametrize("deferred", [0, 1, 2])
def test_signal_ends_the_run_or_requests_a_stop(sig, code, word, deferred):
    """In a child process: a signal ends it with its code and one line on stderr; inside deferred_stop() the
    first one only sets the request, a second one ends it, and after the block they end it again."""
    r = subprocess.run([sys.executable, "-c", _CHILD.format(sig=sig, deferred=deferred)], capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr.strip()) == (code, f"stop requested by {sig}\n" * min(deferred, 1),
                                                         word), (r.returncode, r.stdout, r.stderr)


def test_a_signal_stops_registered_children():
    """The run's children (selftest's steps, tegrastats) go with it: os._exit alone would orphan them."""
    code = """
import os, signal, subprocess, sys, time
from deeplab_edge import interrupts
with interrupts.exit_on_signal():
    with interrupts.child(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])) as p:
        print(p.pid, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
"""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
    assert r.returncode == 143 and time.monotonic() - t0 < 50, (r.returncode, r.stderr)
    pid = int(r.stdout.split()[0])
    assert not Path(f"/proc/{pid}").exists() or " Z " in Path(f"/proc/{pid}/stat").read_text(), pid


_SIGNAL_WHILE_MADE = """
import os, signal, sys, tempfile
from pathlib import Path
from deeplab_edge import interrupts

def make():  # the signal lands after the folder exists and before it could be registered
    d = tempfile.mkdtemp(prefix="made-", dir=sys.argv[1])
    os.kill(os.getpid(), signal.SIG{sig})
    return d

with interrupts.exit_on_signal(), interrupts.track_new(make):
    pass
print("not stopped")
"""


@pytest.mark.parametrize("sig, code", [("TERM", 143), ("INT", 130)])
def test_a_signal_while_a_temporary_folder_is_made_leaves_nothing(tmp_path, sig, code):
    """track_new holds SIGINT/SIGTERM from making a path to registering it: a signal sent in between (here by
    the maker itself, so it always lands there) ends the run after the registration, and the folder goes."""
    # Ctrl-C at its default in the child: a shell's background job inherits SIGINT ignored (as CI may run)
    r = subprocess.run([sys.executable, "-c", _SIGNAL_WHILE_MADE.format(sig=sig), str(tmp_path)], capture_output=True,
                       text=True, timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == code and "not stopped" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert list(tmp_path.iterdir()) == []
