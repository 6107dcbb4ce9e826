"""Output paths: checked before any work starts, written all-or-nothing.

Every command that writes files checks its output paths first (:func:`check_output_file`,
:func:`check_output_dir`), so a wrong ``-o`` fails in a second instead of after minutes
of work. Files are then written under a temporary name in a folder that already exists
and renamed into place only when complete (:func:`atomic_path`, :func:`staged_dir`):
a failed or interrupted run leaves neither a partial file nor a folder it created.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputError
from .interrupts import track_new

__all__ = ["check_output_file", "check_output_dir", "atomic_path", "staged_dir", "nearest_existing",
           "refuse_overwriting_inputs", "refuse_writing_over", "check_run_folder"]


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(path: Path, option: str) -> None:
    """The folders that would be created for ``path`` can be: the closest existing one is a writable folder."""
    anc = nearest_existing(path)
    if not anc.is_dir():
        raise OutputError(f"{option} {path}: {anc} is a file, not a folder; choose another output path")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot write in {anc} (permission denied or read-only); choose a "
                          "folder you can write to")


def check_output_file(path: str | Path, option: str = "-o", example: str = "result.json") -> Path:
    """Check that ``path`` can be written as a file; nothing is created."""
    if not str(path).strip():  # before Path(), which reads "" as the current folder
        raise OutputError(f"{option}: an empty path was given; name the file to write")
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file name, e.g. {path / example}")
    if path.exists() and not path.is_file():
        raise OutputError(f"{option} {path}: exists and is not a regular file; choose another file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path}: the file is read-only; choose another file name")
    _check_creatable(path.parent, option)
    return path


def check_output_dir(path: str | Path, option: str = "-o") -> Path:
    """Check that ``path`` can be (or already is) a folder we write into; nothing is created."""
    if not str(path).strip():
        raise OutputError(f"{option}: an empty path was given; name the output folder")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a folder; give a folder (it is created if missing)")
    _check_creatable(path, option)
    return path


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same_file(a: Path, b: Path) -> bool:
    """The same file: one inode (hard links and symlinks included) or, where one does not exist yet, one path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _real(a) == _real(b)


def _inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies (at any depth) under it, links resolved."""
    p, f = _real(path), _real(folder)
    return p == f or f in p.parents


def refuse_overwriting_inputs(outputs: dict[str, tuple[Path, str]], inputs: dict[str, list[Path]]) -> None:
    """Refuse, before any work, an output that would replace or change one of the command's inputs.

    ``outputs`` maps an option to (path, "file" or "dir"); ``inputs`` an option to the paths it reads.
    An output file may not be an input file (the same file by any path) nor lie inside an input
    folder (it would change the set the command reads, now or on the next run); an output folder
    may not be an input folder nor lie inside one. Files the command writes into an output folder
    are checked by name where the command knows them (:func:`refuse_writing_over`)."""
    items = list(outputs.items())
    for i, (opt, (out, _)) in enumerate(items):  # two outputs in one place would mix (or overwrite) each other
        for opt2, (out2, _) in items[i + 1:]:
            if _real(out) == _real(out2):
                raise OutputError(f"{opt} {out} and {opt2} {out2} are the same place; give each its own (a folder "
                                  "inside the other is fine)")
    for opt, (out, kind) in outputs.items():
        for iopt, paths in inputs.items():
            for inp in paths:
                if not inp.exists():
                    continue
                if inp.is_dir():
                    if _inside(out, inp):
                        what = "is" if _real(out) == _real(inp) else "lies inside"
                        raise OutputError(f"{opt} {out} {what} the {iopt} folder {inp}, which this command reads: its "
                                          "outputs would change its own input; choose an output outside that folder")
                elif kind == "file" and _same_file(out, inp):
                    raise OutputError(f"{opt} {out} is the {iopt} input: writing it would replace that file; choose "
                                      "another output file name")


def refuse_writing_over(targets, inputs: dict[str, list[Path]]) -> None:
    """Refuse when one of the files a command is about to write (``targets``) is one of its inputs."""
    for t in targets:
        for iopt, paths in inputs.items():
            for inp in paths:
                if inp.is_file() and _same_file(t, inp):
                    raise OutputError(f"{t} would be written over the {iopt} input {inp}; choose an output folder "
                                      "that holds none of the inputs")


def check_run_folder(dest: Path, names: set[str], command: str, option: str = "-o") -> list[Path]:
    """A folder a command fills as a whole (calibrate's files, a training run): it may be missing, empty, or
    hold only files that command writes (an earlier run of it, returned so the caller replaces them all);
    anything else in it is the user's and is refused, never deleted."""
    dest = Path(dest)
    if not dest.is_dir():
        return []
    entries = sorted(dest.iterdir())
    foreign = [p.name for p in entries if p.name not in names]
    if foreign:
        raise OutputError(f"{option} {dest} holds files that are not a {command} run's (e.g. {foreign[0]}); choose an "
                          "empty or new folder (nothing there is replaced or deleted)")
    return entries


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file path (ending in ``suffix``, for writers that go by it); on success it is
    renamed onto ``path``.

    The temporary file lives in the closest folder that already exists, and missing parent
    folders are made only at the rename: a failure leaves nothing behind, nor does Ctrl-C or
    SIGTERM in the CLI (the temporary file is tracked: :mod:`deeplab_edge.interrupts`)."""
    path = Path(path)
    where = nearest_existing(path.parent)

    def make() -> str:
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=where)
        except OSError as e:  # name the file the user asked for, not our temporary one
            raise OSError(e.errno, e.strerror, str(path)) from None
        os.close(fd)
        return name

    umask = os.umask(0)
    os.umask(umask)
    with track_new(make) as tmp:
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@contextmanager
def staged_dir(dest: str | Path, replace: tuple[Path, ...] | list[Path] = ()) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files are moved into ``dest`` (made if missing).

    For commands that write several files which only make sense together (calibration, a
    build bundle): either all of them land in ``dest`` or none does. ``replace`` lists files of an
    earlier run in ``dest`` (from :func:`check_run_folder`): those the new run did not write again
    are removed once the new files are in place, so ``dest`` holds the new run only."""
    dest = Path(dest)

    def make() -> str:
        try:
            return tempfile.mkdtemp(prefix=f".{dest.name or 'out'}.partial-", dir=nearest_existing(dest))
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(dest)) from None

    with track_new(make) as stage:
        try:
            yield stage
            dest.mkdir(parents=True, exist_ok=True)
            written = sorted(stage.iterdir())
            for p in written:
                os.replace(p, dest / p.name)
            for old in replace:
                if old.name not in {p.name for p in written} and old.is_file():
                    old.unlink()
        finally:
            shutil.rmtree(stage, ignore_errors=True)
