"""The CLI in a child process, stopped by a signal once it has reached a given point (the signal tests)."""

import signal
import subprocess
import sys
import time

#: the child's program: the installed CLI, as `deeplab-edge ARGS` runs it
CLI = "import sys; from deeplab_edge.cli import main; sys.argv[0] = 'deeplab-edge'; main()"


def run_and_signal(argv: list[str], cwd, ready, *, sig=signal.SIGTERM, timeout: float = 120.0, env=None):
    """Run the CLI with ``argv`` in ``cwd``, send ``sig`` once ``ready()`` is true; return (rc, stdout, stderr)."""
    # SIGINT as a terminal's foreground process gets it: a test run started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
    p = subprocess.Popen([sys.executable, "-c", CLI, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while not ready() and p.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.02)
    if p.poll() is not None:
        raise AssertionError(f"finished before it could be interrupted: {p.communicate()}")
    if not ready():
        p.kill()
        raise AssertionError(f"not ready to be interrupted after {timeout:.0f} s: {p.communicate()}")
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    return p.returncode, stdout, stderr
