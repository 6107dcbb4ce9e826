"""The ``deeplab-edge`` command group and its error handling.

Logs and progress go to stderr (one rich console); results go to stdout as a rich table,
or as JSON with ``--json``. Bad input ends with one red line naming the problem and the
fix, and exit code 2 (``--verbose`` shows the traceback); Ctrl-C exits 130 and SIGTERM 143,
after the staged outputs and temporary files are removed (:mod:`deeplab_edge.interrupts`).
"""

from __future__ import annotations

import errno
import sys
from typing import Any

import click
from rich.markup import escape

from ..errors import DeepLabEdgeError
from ..interrupts import exit_on_signal
from .common import console, io_paths

__all__ = ["main"]


def _os_error_line(e: OSError) -> str | None:
    """One line for the OS errors a user can fix (disk full, permissions, read-only); None for others."""
    where = e.filename or "the output"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}: no space left on the device; free some space or write to another disk (nothing was kept)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where}: {e.strerror.lower()}; choose a path you can read or write"
    if e.errno == errno.ENAMETOOLONG:
        return f"{where}: file name too long; choose a shorter path"
    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR):
        return f"{where}: {e.strerror.lower()}; check the path"
    return None


# click >= 8.2 raises this for a bare `deeplab-edge` (it shows the help); click 8.1 has no such class
_NO_ARGS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _check_io(ctx: click.Context) -> None:
    """Before a command runs: none of its outputs is, or lies inside, one of its inputs."""
    from ..outputs import refuse_overwriting_inputs

    refuse_overwriting_inputs(*io_paths(ctx))


class _Command(click.Command):
    """Every command: its outputs are checked against its inputs before it runs."""

    def invoke(self, ctx: click.Context) -> Any:
        _check_io(ctx)
        return super().invoke(ctx)


class _Group(click.Group):
    """The command group: turns every user error into one red line and exit code 2."""

    command_class = _Command
    group_class = type  # sub-groups (bench, kernels, crf) are of this class too

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        with exit_on_signal():
            try:
                rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            except _NO_ARGS_HELP as e:
                e.show()
                rv = e.exit_code
            except click.ClickException as e:  # click's usage errors: one line instead of its usage block
                hint = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) is not None else ""
                console.print(f"[bold red]error:[/] {escape(e.format_message())}{hint}", highlight=False,
                              soft_wrap=True)
                rv = e.exit_code
            except click.Abort:
                console.print("[yellow]interrupted[/]")
                rv = 130
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            _check_io(ctx)
            return super().invoke(ctx)
        except (DeepLabEdgeError, OSError) as e:
            line = str(e) if isinstance(e, DeepLabEdgeError) else _os_error_line(e)
            if line is None:
                raise
            if ctx.obj and ctx.obj.get("verbose"):
                console.print_exception()
            console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            ctx.exit(2)
        except KeyboardInterrupt:  # a stream stopped before its first frame, or Ctrl-C outside the main thread
            console.print("[yellow]interrupted[/]")
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="deeplab-edge")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """DeepLab from a PyTorch model to fast, measured inference on GPUs and Jetson.

    \b
    Typical flow:
      deeplab-edge models
      deeplab-edge import ../shared/models/deeplabv3_mnv2_pascal_quant.tflite -o mnv2_voc.pt
      deeplab-edge eval --weights mnv2_voc.pt --data ../shared/data/voc2012_samples
      deeplab-edge predict --weights mnv2_voc.pt image.jpg -o out/
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
