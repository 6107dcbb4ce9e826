"""TensorRT's calibration cache (text format, TensorRT 8.5-10 with implicit quantization).

First line ``TRT-<version>-<calibrator>`` (version as TensorRT prints it: 8.6.1 -> 8601), then
one ``<tensor name>: <hex>`` line per tensor, where <hex> is the big-endian IEEE-754 float32
bit pattern of the scale (= amax / 127). An ``IInt8Calibrator.read_calibration_cache`` returns
these bytes to TensorRT; ``trtexec --int8 --calib=FILE`` reads the same file.

The header names ``EntropyCalibration2`` whatever method chose the ranges (minmax, percentile,
MSE or entropy): that is the calibrator trtexec and deeplab-edge's build use to read it back,
and TensorRT only takes the scales from the file. ``ranges.json`` records the real method.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from deeplab_edge.outputs import atomic_path
from deeplab_edge.errors import CalibrationError

__all__ = ["write_trt_cache", "read_trt_cache", "trt_version_code", "check_trt_version"]

#: The TensorRT versions that read a calibration cache (implicit INT8): 8.5 up to 10.x (TensorRT 11 has none).
CACHE_VERSIONS = "8.5-10"


def check_trt_version(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a TensorRT version that reads calibration caches (8.5 to 10.x), e.g. ``8.6.1``,
    ``10.13.0``; anything else (not a version, before 8.5, TensorRT 11) is a :class:`CalibrationError`."""
    text = str(version).strip()
    if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){1,3}", text):
        raise CalibrationError(f"--trt-version {version!r} is not a TensorRT version; give the version of the "
                               f"TensorRT {CACHE_VERSIONS} that will read the cache as digits, e.g. 8.6.1 or 10.3.0")
    major, minor, patch = ([int(p) for p in text.split(".")[:3]] + [0])[:3]
    if (major, minor) < (8, 5) or major > 10:
        why = ("TensorRT 11 reads no calibration cache (its only INT8 route is the QDQ model, model_qdq.onnx)"
               if major >= 11 else "the cache format written here is TensorRT 8.5's and later")
        raise CalibrationError(f"--trt-version {version}: {why}; give a TensorRT {CACHE_VERSIONS} version, e.g. "
                               "8.6.1 or 10.3.0")
    if minor > 99 or patch > 99:  # the header packs them in two digits each
        raise CalibrationError(f"--trt-version {version}: minor and patch versions above 99 cannot be written in "
                               "the cache header; give the TensorRT version as it prints it, e.g. 10.13.0")
    return major, minor, patch


def trt_version_code(version: str) -> int:
    major, minor, patch = check_trt_version(version)
    return major * 1000 + minor * 100 + patch


def format_trt_cache(scales: dict[str, float], calibrator: str = "EntropyCalibration2",
                     trt_version: str = "8.6.1") -> bytes:
    lines = [f"TRT-{trt_version_code(trt_version)}-{calibrator}"]
    for name, scale in scales.items():
        if ":" in name or "\n" in name:
            raise CalibrationError(f"tensor name {name!r} cannot be written to a TensorRT cache")
        lines.append(f"{name}: {struct.pack('>f', float(scale)).hex()}")
    return ("\n".join(lines) + "\n").encode()


def write_trt_cache(path: str | Path, scales: dict[str, float], calibrator: str = "EntropyCalibration2",
                    trt_version: str = "8.6.1") -> Path:
    data = format_trt_cache(scales, calibrator, trt_version)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def read_trt_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """(header, name -> scale) of a TensorRT calibration cache."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: calibration cache not found; make one with `deeplab-edge calibrate`")
    text = path.read_bytes().decode("ascii", errors="strict").splitlines()
    if not text or not text[0].startswith("TRT-"):
        raise CalibrationError(f"{path}: not a TensorRT calibration cache (no 'TRT-...' header); pass the "
                               "calibration.cache of `deeplab-edge calibrate`")
    scales = {}
    for ln in text[1:]:
        if not ln.strip():
            continue
        name, _, hexval = ln.rpartition(": ")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(hexval.strip()))[0]
        except ValueError as e:
            raise CalibrationError(f"{path}: bad cache line {ln!r}; regenerate it with `deeplab-edge calibrate`") from e
    return text[0], scales


def check_cache_against_onnx(cache_path: str | Path, onnx_path: str | Path) -> dict[str, float]:
    """The cache's scales, after checking that every name in it is a tensor of the ONNX model and
    that the model's input has a scale (TensorRT silently ignores unknown names, which leaves
    those layers without INT8 ranges)."""
    import onnx

    _, scales = read_trt_cache(cache_path)
    m = onnx.load(str(onnx_path), load_external_data=False)
    names = {i.name for i in m.graph.input} | {o for n in m.graph.node for o in n.output}
    unknown = sorted(set(scales) - names)
    if unknown:
        raise CalibrationError(f"{cache_path}: {len(unknown)} of {len(scales)} tensor names are not in {onnx_path} "
                               f"(e.g. {unknown[0]!r}); recalibrate from this ONNX file")
    inp = m.graph.input[0].name
    if inp not in scales:
        raise CalibrationError(f"{cache_path}: no scale for the model input {inp!r}; recalibrate from {onnx_path}")
    return scales
