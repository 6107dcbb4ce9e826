"""Accuracy-vs-speed benchmarks (imported as ``deeplab_edge.bench``).

Not implemented yet (issue 8); nothing in deeplab-edge imports from here so far.
"""
