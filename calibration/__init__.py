"""INT8 post-training calibration (imported as ``deeplab_edge.calibration``).

Not implemented yet (issue 6); nothing in deeplab-edge imports from here so far.
"""
