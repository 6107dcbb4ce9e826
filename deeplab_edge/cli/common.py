"""What every command module shares: the two consoles, JSON output, progress bars, and the
option types that check their values when parsed (numbers in range, output paths writable)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..calibration.methods import METHODS as CALIB_METHODS  # data only: no onnx, no torch
from ..errors import DeepLabEdgeError

__all__ = ["console", "out", "print_json", "print_warning", "emit", "progress_bar", "pct", "COUNT", "NONNEG",
           "SIDE", "THREADS", "CRF_ITERATIONS", "Finite", "finite_float", "parse_scales", "parse_scale_sets", "OutputOption", "io_paths",
           "output_option", "output_stride_option", "check_tag", "int_list", "choices"]

console = Console(stderr=True)
# Results: wide enough for the tables when stdout is a pipe or a file.
out = Console(width=None if sys.stdout.isatty() else 160)

# Numeric option types: a value outside the range is a one-line error when it is parsed, and
# `--help` shows the range.
COUNT = click.IntRange(min=1)            # images, iterations, batch sizes, threads...
NONNEG = click.IntRange(min=0)           # warm-up calls, layers kept in float, DLA core...
SIDE = click.IntRange(32, 4096)          # an input side in pixels (4096 x 4096 logits: ~1.4 GB for 21 classes)
THREADS = click.IntRange(1, 1024)
CRF_ITERATIONS = click.IntRange(0, 200)  # mean-field converges in 5-10 (the paper: 10); 200 is far past it


class InputPath(click.Path):
    """A path option or argument that refuses an empty value (``Path("")`` is the current folder, which would
    then be read as the dataset, the checkpoint folder or the source)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path was given; give a file or folder path", param, ctx)
        return super().convert(value, param, ctx)


class Finite(click.FloatRange):
    """A float option in a range that refuses NaN and infinity when parsed (``click.FloatRange`` lets
    ``nan`` through: every comparison with NaN is false). Every float option of the CLI uses it."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number; give a number in {self._describe_range()}", param, ctx)
        return rv


def finite_float(value: str, what: str) -> float:
    """One number of a comma-separated option, finite (NaN and infinity refused)."""
    try:
        v = float(value)
    except ValueError:
        raise DeepLabEdgeError(f"{what} {value!r} is not a number; give e.g. 0.75,1,1.25") from None
    if not math.isfinite(v):
        raise DeepLabEdgeError(f"{what} {value!r} is not a finite number; give e.g. 0.75,1,1.25")
    return v


def parse_scales(ctx, param, value: str) -> tuple[float, ...]:
    """A click callback for ``--scales``: comma-separated test-time scales, each finite and in 0.1-4."""
    items = [v.strip() for v in value.split(",")]
    if "" in items:
        raise click.BadParameter(f"{value!r} has an empty item; give numbers separated by single commas, e.g. "
                                 "0.75,1,1.25", ctx, param)
    try:
        scales = tuple(finite_float(v, "scale") for v in items)
    except DeepLabEdgeError as e:
        raise click.BadParameter(str(e), ctx, param) from None
    if not scales or min(scales) < 0.1 or max(scales) > 4:
        raise click.BadParameter(f"{value!r} has a scale outside 0.1-4 (or none); give e.g. 0.75,1,1.25", ctx, param)
    return scales


def parse_scale_sets(ctx, param, values: tuple[str, ...]) -> tuple[tuple[tuple[float, ...], bool], ...]:
    """A click callback for a repeatable ``--scales``: each value one set of test-time scales (as
    :func:`parse_scales`), ``+flip`` at its end to average the mirrored image too; duplicates dropped."""
    sets = []
    for value in values:
        body, plus, rest = value.partition("+")
        if plus and rest.strip() != "flip":
            raise click.BadParameter(f"{value!r}: only '+flip' may follow the scales, e.g. 0.75,1,1.25+flip",
                                     ctx, param)
        sets.append((parse_scales(ctx, param, body), bool(plus)))
    return tuple(dict.fromkeys(sets))


def check_output(kind: str, example: str = "result.json"):
    """A click callback checking an output path when it is parsed (before any work)."""
    from ..outputs import check_output_dir, check_output_file

    def check(ctx, param, value):
        if value is None:
            return None
        opt = param.opts[-1] if param.opts else param.name
        try:
            return check_output_file(value, opt, example) if kind == "file" else check_output_dir(value, opt)
        except DeepLabEdgeError as e:
            raise click.BadParameter(str(e).removeprefix(f"{opt} "), ctx, param) from None
    return check


def check_tag(ctx, param, value):
    """A --tag names files: letters, digits, '.', '_' and '-' only (no folders, no spaces)."""
    if value is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", value):
        raise click.BadParameter(f"{value!r} has characters other than letters, digits, '.', '_' and '-'; choose "
                                 "a plain name such as orin-maxn", ctx, param)
    return value


class OutputOption(click.Option):
    """An option naming something the command writes (``output_kind`` "file" or "dir"): the command class
    (``cli.app``) refuses it when it is, or lies inside, one of the command's inputs."""

    def __init__(self, *args, output_kind: str = "file", **kwargs):
        super().__init__(*args, **kwargs)
        self.output_kind = output_kind


# Path options a command both reads and updates in place (a cache): neither an input to protect nor an output.
READ_AND_UPDATE = {"timing_cache"}


def io_paths(ctx: click.Context) -> tuple[dict[str, tuple[Path, str]], dict[str, list[Path]]]:
    """The command's outputs (option -> (path, kind)) and inputs (option -> paths): every click.Path
    parameter that is not an output (nor a cache in :data:`READ_AND_UPDATE`) is read by the command."""
    outputs, inputs = {}, {}
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if value is None or value == () or not isinstance(p.type, click.Path) or p.name in READ_AND_UPDATE:
            continue
        label = p.opts[-1] if isinstance(p, click.Option) else p.name
        if isinstance(p, OutputOption):
            outputs[label] = (Path(value), p.output_kind)
        else:
            inputs[label] = [Path(v) for v in (value if isinstance(value, (tuple, list)) else [value])]
    return outputs, inputs


def output_option(kind: str, help: str, *, required: bool = False, example: str = "result.json",
                  names: tuple[str, ...] = ("-o", "--output")):
    """``-o/--output`` as a file or a folder, checked as soon as it is parsed (and against the command's
    inputs before it runs)."""
    return click.option(*names, cls=OutputOption, output_kind=kind, type=click.Path(), required=required, help=help,
                        callback=check_output(kind, example))


def output_stride_option(help: str = "Run the checkpoint's weights at this output stride: 8 is DeepLab-v3's "
                                      "evaluation setting for models trained at 16 (finer, slower); the ASPP "
                                      "rates scale with it (default: the checkpoint's)."):
    return click.option("--output-stride", type=click.Choice(["8", "16", "32"]),
                        callback=lambda ctx, param, v: None if v is None else int(v), help=help)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def print_warning(message: str) -> None:
    """One yellow ``warning:`` line on stderr (e.g. for the warnings a model runner reports)."""
    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def write_json(obj: Any, path: Path) -> None:
    from ..outputs import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str))


def emit(result: Any, output: Path | None, as_json: bool) -> bool:
    """Write ``result`` to ``output`` (if given) and print it as JSON (if asked); True when printed."""
    if output:
        write_json(result, output)
    if as_json:
        print_json(result)
    return as_json


def progress_bar():
    # off where stderr is no terminal (a log, a pipe): there rich draws nothing but would end with an empty
    # line, which put a blank line before a run's one error line
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)


def pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"



def int_list(value: str, what: str, most: int | None = None) -> list[int]:
    """Comma-separated integers >= 1 (and <= ``most``), no empty item."""
    items = [v.strip() for v in value.split(",")]
    if not value.strip() or "" in items:
        raise DeepLabEdgeError(f"{what} {value!r} has an empty item; give comma-separated integers >= 1, e.g. 1,8")
    try:
        out = [int(v) for v in items]
    except ValueError:
        raise DeepLabEdgeError(f"{what} {value!r} is not a list of integers; give comma-separated integers >= 1, "
                               "e.g. 1,8") from None
    if min(out) < 1:
        raise DeepLabEdgeError(f"{what} {value!r} has a value below 1; give comma-separated integers >= 1, e.g. 1,8")
    if most is not None and max(out) > most:
        raise DeepLabEdgeError(f"{what} {value!r} has a value above {most}; give integers from 1 to {most}")
    return out


#: the largest latency batch: 256 frames of 513 x 513 are 800 MB of float input before the network's activations
MAX_BATCH = 256


def choices(value: str, allowed, what: str) -> list[str]:
    out = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in out if v not in allowed]
    if bad or not out:
        raise DeepLabEdgeError(f"unknown {what} {', '.join(bad) if bad else repr(value)}; "
                               f"choose from {', '.join(allowed)}")
    return list(dict.fromkeys(out))  # a name given twice runs once
