"""The ``deeplab-edge`` command line: one thin module per command group, each parsing its options,
calling one library function and printing the result.

* :mod:`.app` — the group, one-line errors, Ctrl-C / SIGTERM;
* :mod:`.common` — consoles, JSON output, progress bars, checked option types;
* :mod:`.models` — ``models``, ``import``, ``info``;
* :mod:`.run` — ``eval``, ``predict``, ``compare``;
* :mod:`.deploy` — ``export``, ``calibrate``, ``build``;
* :mod:`.doctor` — ``doctor``;
* :mod:`.kernels` — ``kernels compile/bench``, ``crf bench``;
* :mod:`.bench` — ``bench``, ``bench compare``, ``bench kernels``.
"""

from . import bench, deploy, doctor, kernels, models, run  # noqa: F401  (each registers its commands)
from .app import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
