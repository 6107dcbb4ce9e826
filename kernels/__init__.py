"""Triton kernels (imported as ``deeplab_edge.kernels``): fused ASPP and the CRF mean-field step.

Not implemented yet (issues 4 and 5); nothing in deeplab-edge imports from here so far.
"""
