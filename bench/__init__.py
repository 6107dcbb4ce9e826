"""Accuracy-vs-speed benchmarking (imported as ``deeplab_edge.bench``): the library behind ``deeplab-edge bench``,
``bench compare``, ``bench kernels``, ``crf bench``, ``compare``, ``doctor`` and ``selftest``.

* :mod:`.harness` — the backend x CRF matrix on a labelled dataset (``bench``); :mod:`.report` — its table,
  JSON, CSV, Pareto plot and the cross-machine merge (``bench compare``); :mod:`.stats` — timing and
  percentiles; :mod:`.power` — Jetson power; :mod:`.env` — the machine and commit every result carries;
* :mod:`.side_by_side` — several model files on the same images (``compare``); :mod:`.doctor` — what this
  machine runs;
* :mod:`.kernel_bench`, :mod:`.kernel_check`, :mod:`.crf_bench`, :mod:`.selftest` — the Triton kernels and the
  dense CRF against their references;
* :mod:`.ptq` — INT8 PTQ methods side by side on held-out images.

By-hand experiment scripts live in ``bench/experiments/`` and their results in ``bench/results/``: neither is
installed as code.
"""
