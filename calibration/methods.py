"""The calibration methods by name: data only, so that the CLI lists them without importing the pipeline."""

from __future__ import annotations

__all__ = ["HISTOGRAM_METHODS", "METHODS"]

#: thresholds read off each tensor's own histogram of |x| (``histograms.py``)
HISTOGRAM_METHODS = ("entropy", "minmax", "percentile", "mse")
#: "search": each threshold chosen by the error of the Convs reading the tensor (``search.py``)
METHODS = HISTOGRAM_METHODS + ("search",)
