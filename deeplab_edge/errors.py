"""Exception hierarchy.

Library code raises these; only the CLI turns them into one red line and exit code 2.
Each message names the problem and, where there is one, the fix.
"""


class DeepLabEdgeError(Exception):
    """Base class of every error deeplab-edge raises on bad input."""


class DataError(DeepLabEdgeError):
    """A dataset folder, image or label is missing, corrupt or inconsistent."""


class CheckpointError(DeepLabEdgeError):
    """A checkpoint is missing, unreadable or made for another architecture."""


class ImportModelError(DeepLabEdgeError):
    """A model file (e.g. TFLite) cannot be converted into a deeplab-edge model."""


class CalibrationError(DeepLabEdgeError):
    """INT8 calibration cannot proceed (empty set, mismatched tensor names...)."""


class EngineError(DeepLabEdgeError):
    """A TensorRT engine cannot be built or loaded on this machine."""


class KernelUnavailableError(DeepLabEdgeError):
    """A Triton kernel cannot run here (no GPU and no interpreter)."""


class ExportError(DeepLabEdgeError):
    """An export failed its checks (ONNX checker, parity with PyTorch)."""


class OutputError(DeepLabEdgeError):
    """An output path cannot be written (a folder where a file is needed, no permission...)."""
