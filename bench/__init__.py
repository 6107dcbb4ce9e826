"""Accuracy-vs-speed benchmarking (imported as ``deeplab_edge.bench``): the library behind ``deeplab-edge bench``,
``bench compare``, ``bench kernels``, ``crf bench``, ``crf tune``, ``compare``, ``doctor`` and ``selftest``.

* :mod:`.harness` — the backend x CRF matrix on a labelled dataset (``bench``); :mod:`.report` — its table,
  JSON, CSV, Pareto plot and the cross-machine merge (``bench compare``); :mod:`.stats` — timing and
  percentiles; :mod:`.power` — Jetson power; :mod:`.env` — the machine and commit every result carries;
* :mod:`.matrix` — several models x output strides x test-time scales in one document (``bench --weights A
  --weights B``, and ``compare``, its alias); :mod:`.crf_tune` — the CRF's parameters by grid search on
  held-out images (``crf tune``); :mod:`.doctor` — what this machine runs;
* :mod:`.kernel_bench`, :mod:`.kernel_check`, :mod:`.crf_bench`, :mod:`.selftest` — the Triton kernels and the
  dense CRF against their references;
* :mod:`.ptq` — INT8 PTQ methods side by side on held-out images.

By-hand experiment scripts live in ``bench/experiments/`` and their results in ``bench/results/``: neither is
installed as code.
"""
