"""The ``deeplab-edge`` command line: one thin module per command group, each parsing its options,
calling one library function and printing the result.

* :mod:`.app` — the group, one-line errors, Ctrl-C / SIGTERM;
* :mod:`.common` — consoles, JSON output, progress bars, checked option types;
* :mod:`.models_cmd` — ``models``, ``import``, ``info``;
* :mod:`.run_cmd` — ``eval``, ``predict``, ``compare``;
* :mod:`.deploy_cmd` — ``export``, ``calibrate``, ``build``;
* :mod:`.doctor_cmd` — ``doctor``;
* :mod:`.kernels_cmd` — ``kernels compile/check/bench``, ``crf bench``;
* :mod:`.train_cmd` — ``train`` (one process or torchrun);
* :mod:`.bench_cmd` — ``bench``, ``bench compare``, ``bench kernels``;
* :mod:`.selftest_cmd` — ``selftest --gpu``.
"""

from . import (bench_cmd, deploy_cmd, doctor_cmd, kernels_cmd, models_cmd, run_cmd,  # noqa: F401
               selftest_cmd, train_cmd)  # each registers its commands
from .app import main

# the one command that lives in two groups: `kernels bench` is also `bench kernels`
bench_cmd.bench_group.add_command(kernels_cmd.kernels_bench, "kernels")

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
