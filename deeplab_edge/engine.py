"""TensorRT engines: the deployment manifest, version/GPU compatibility, the generated build
script, and the thin TensorRT code that builds and runs an engine.

Everything but :func:`build_engine` (and :class:`deeplab_edge.runtime.tensorrt.EngineRunner`) runs
without TensorRT (and is
tested here); those two call TensorRT's Python API and need it and a CUDA GPU:

* INT8 routes. **Explicit quantization** (the QDQ ONNX from ``deeplab-edge calibrate``) is the
  primary one and the only one TensorRT 11 keeps: it removed the precision builder flags and
  the INT8 calibrators, so networks are strongly typed there and reduced precision must be in
  the ONNX. On TensorRT 8.5-10 (JetPack 5/6) the QDQ model is built weakly typed with the
  INT8 and FP16 flags, so layers left in float run in FP16. The **calibration-cache** route
  (implicit quantization: an ``IInt8EntropyCalibrator2`` that only replays the cache) stays for
  TensorRT 8.5-10, with a deprecation warning on 10.1+ where NVIDIA deprecated calibrators.
* I/O through the tensor-name API (``set_input_shape`` / ``set_tensor_address`` /
  ``execute_async_v3``), present in TensorRT 8.5 and later; buffers are PyTorch CUDA tensors.
* An engine only runs on the TensorRT version and GPU it was built for. The manifest written
  beside it records both; :func:`check_compatibility` compares them with the GPU the engine
  is to run on (``--device cuda:N``, by default the current one) *before* TensorRT
  deserializes anything.
* Every TensorRT name used here is checked against each release's bindings
  (``tests/test_tensorrt_api.py``, fixtures from ``tests/fixtures/tensorrt_api/extract.py``).
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import shlex
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from . import __version__
from .checkpoint import file_sha256
from .jetson import jetson_info
from .outputs import atomic_path
from .errors import DeepLabEdgeError, EngineError

__all__ = ["MANIFEST_FORMAT", "Shapes", "parse_shapes", "manifest_path", "read_manifest", "this_machine",
           "engine_device_index", "check_compatibility", "trtexec_command", "build_command", "build_script",
           "trt_major", "build_engine", "MIN_TRT", "tensorrt_unavailable", "import_tensorrt"]

MANIFEST_FORMAT = "deeplab-edge-engine/1"
MIN_TRT = (8, 5)


def file_entry(path: Path | None) -> dict[str, Any] | None:
    return None if path is None else {"file": Path(path).name, "sha256": file_sha256(path),
                                      "bytes": Path(path).stat().st_size}


# ----------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class Shapes:
    """Optimization profile of the input: (N, 3, H, W) at min / opt / max."""
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @property
    def dynamic(self) -> bool:
        return not (self.min == self.opt == self.max)


def _shape(text: str, what: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise DeepLabEdgeError(f"--shapes: {what} shape {text!r} is not NxCxHxW (e.g. 1x3x513x513)") from None
    if len(dims) != 4:
        raise DeepLabEdgeError(f"--shapes: {what} shape {text!r} has {len(dims)} dimensions; give NxCxHxW (e.g. "
                               "1x3x513x513)")
    if min(dims) < 1:
        raise DeepLabEdgeError(f"--shapes: {what} shape {text!r} has a dimension below 1; every one of N, C, H, W "
                               "must be >= 1 (e.g. 1x3x513x513)")
    if dims[1] != 3:
        raise DeepLabEdgeError(f"--shapes: {what} shape {text!r} has C = {dims[1]}; the models need C = 3 "
                               "(RGB), e.g. 1x3x513x513")
    return dims


def parse_shapes(text: str | None, fixed_hw: tuple[int, int] | None) -> Shapes:
    """``--shapes min,opt,max`` (each NxCxHxW); default: batch 1 at the model's input size."""
    if not text:
        if fixed_hw is None:
            raise DeepLabEdgeError("this model has no fixed input size; pass --shapes min,opt,max")
        s = (1, 3, *fixed_hw)
        return Shapes(s, s, s)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise DeepLabEdgeError(f"--shapes expects min,opt,max (three NxCxHxW shapes), got {text!r}")
    mn, opt, mx = (_shape(p, w) for p, w in zip(parts, ("min", "opt", "max")))
    if not all(a <= b <= c for a, b, c in zip(mn, opt, mx)):
        raise DeepLabEdgeError(f"--shapes: need min <= opt <= max in every dimension, got {text!r}")
    if fixed_hw is not None and any(s[2:] != fixed_hw for s in (mn, opt, mx)):
        raise DeepLabEdgeError(f"--shapes: this model's input is {fixed_hw[0]}x{fixed_hw[1]}; only the batch can vary "
                               "(re-export with --input-size to change it)")
    return Shapes(mn, opt, mx)


# ----------------------------------------------------------------------------- manifest

def manifest_path(engine: str | Path) -> Path:
    return Path(str(engine) + ".json")


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"{path}: no manifest; engines are built with `deeplab-edge build`, which writes it beside "
                          "the engine")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise EngineError(f"{path}: manifest is not JSON; rebuild the engine with `deeplab-edge build`") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise EngineError(f"{path}: not a deeplab-edge engine manifest ({MANIFEST_FORMAT}); rebuild with "
                          "`deeplab-edge build`")
    return doc


def engine_device_index(device: str | int | torch.device | None = None) -> int:
    """The CUDA device index an engine runs on: ``cuda:N`` / ``N`` -> N; ``None``, ``auto`` or
    ``cuda`` -> the current CUDA device (0 where CUDA is missing). TensorRT engines run on a GPU
    only: ``cpu`` is an error."""
    if isinstance(device, int) and not isinstance(device, bool):
        index = device
    else:
        text = "auto" if device is None else str(device)
        if text in ("auto", "cuda"):
            return torch.cuda.current_device() if torch.cuda.is_available() else 0
        if text == "cpu":
            raise EngineError("a TensorRT engine runs on a CUDA GPU, not on the CPU: use --device cuda:N (or auto)")
        if not text.startswith("cuda:") or not text[5:].isdigit():
            raise EngineError(f"unknown device {text!r} for a TensorRT engine; use cuda, cuda:N or auto")
        index = int(text[5:])
    if index < 0:
        raise EngineError(f"device index {index} is negative; use cuda:N with N >= 0")
    return index


def this_machine(device: str | int | torch.device | None = None) -> dict[str, Any]:
    """TensorRT version, GPUs and Jetson facts of this machine, in the manifest's terms.

    ``gpus`` lists every CUDA device (index, name, compute capability); ``gpu`` is the one an
    engine is built or run on: ``device`` (see :func:`engine_device_index`), by default the
    current CUDA device, which is where TensorRT builds."""
    info: dict[str, Any] = {"tensorrt": None, "cuda": torch.version.cuda, "gpu": None, "gpus": [], "jetson": None}
    try:
        import tensorrt as trt  # noqa: F401

        info["tensorrt"] = trt.__version__
    except ImportError:
        try:
            info["tensorrt"] = version("tensorrt")
        except PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["gpus"].append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}"})
        info["gpu"] = _gpu_at(info, engine_device_index(device))
    info["jetson"] = jetson_info()
    return info


def _gpu_at(here: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The GPU ``cuda:index`` of a machine description, in the manifest's terms (name, capability)."""
    for g in here.get("gpus") or []:
        if g.get("index") == index:
            return {"name": g.get("name"), "compute_capability": g.get("compute_capability")}
    return None


def _version_triple(v: str | None) -> tuple[int, ...] | None:
    if not v:
        return None
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out) or None


def check_compatibility(manifest: dict[str, Any], here: dict[str, Any], device: int | None = None) -> list[str]:
    """Why an engine described by ``manifest`` cannot run on the machine ``here`` (empty: it can).

    A serialized engine needs the TensorRT version it was built with (major.minor.patch) and a
    GPU of the same compute capability; a different GPU model of the same capability is
    accepted (TensorRT runs it, but tactics were timed on the other one). The GPU compared is
    ``cuda:device`` of ``here["gpus"]`` when ``device`` is given (the one the engine will run
    on), else ``here["gpu"]``."""
    problems = []
    if not manifest.get("engine_built"):
        problems.append("the manifest says no engine was built (a deployment bundle): run its build_engine.sh on the "
                        "target first")
        return problems
    built, have = manifest.get("tensorrt"), here.get("tensorrt")
    if have is None:
        problems.append(f"TensorRT is not installed here; the engine needs TensorRT {built}")
    elif _version_triple(built) != _version_triple(have):
        problems.append(f"built with TensorRT {built}, this machine has TensorRT {have}; rebuild it here with "
                        "`deeplab-edge build` (or the bundle's build_engine.sh)")
    g_built = manifest.get("gpu") or {}
    gpus = here.get("gpus") or []
    g_have = (_gpu_at(here, device) if device is not None else here.get("gpu")) or {}
    where = f"cuda:{device}" if device is not None else "this GPU"
    if not g_have and device is not None and gpus:
        problems.append(f"there is no GPU cuda:{device} here (this machine has {len(gpus)}: "
                        + ", ".join(f"cuda:{g.get('index')} {g.get('name')} ({g.get('compute_capability')})"
                                    for g in gpus) + ")")
    elif not g_have:
        problems.append(f"no CUDA GPU here; the engine was built for {g_built.get('name')} "
                        f"(compute capability {g_built.get('compute_capability')})")
    elif g_built.get("compute_capability") != g_have.get("compute_capability"):
        others = [f"cuda:{g.get('index')}" for g in gpus if g.get("compute_capability") ==
                  g_built.get("compute_capability") and g.get("index") != device]
        problems.append(f"built for {g_built.get('name')} (compute capability {g_built.get('compute_capability')}), "
                        f"{where} is {g_have.get('name')} ({g_have.get('compute_capability')}); "
                        + (f"run it on {' or '.join(others)} (--device) or rebuild it on this device" if others
                           else "rebuild it on this device"))
    return problems


# ----------------------------------------------------------------------------- commands

def trt_major(version: str | None) -> int | None:
    v = _version_triple(version)
    return v[0] if v else None


def trtexec_command(*, onnx: str, engine: str, input_name: str, shapes: Shapes, fp16: bool, int8: bool,
                    route: str | None, cache: str | None, workspace_mb: int | None, dla_core: int | None,
                    gpu_fallback: bool, timing_cache: str | None, trt_major_version: int | None = None) -> list[str]:
    """The ``trtexec`` command line that builds the same engine (TensorRT 8.6-11 flag names).

    ``route``: ``"qdq"`` (explicit quantization; ``onnx`` is the QDQ model) or ``"cache"``
    (implicit, ``--calib``; TensorRT <= 10 only). TensorRT 11 (``trt_major_version`` 11 or later)
    takes ``--stronglyTyped`` and no precision flags."""
    cmd = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    if shapes.dynamic:
        fmt = lambda s: "x".join(map(str, s))  # noqa: E731
        cmd += [f"--minShapes={input_name}:{fmt(shapes.min)}", f"--optShapes={input_name}:{fmt(shapes.opt)}",
                f"--maxShapes={input_name}:{fmt(shapes.max)}"]
    strong = trt_major_version is not None and trt_major_version >= 11
    if strong:
        if route == "cache":
            raise EngineError("TensorRT 11 has no INT8 calibrators: build from the QDQ ONNX (--qdq or --calib-data)")
        cmd.append("--stronglyTyped")
    else:
        if fp16:
            cmd.append("--fp16")
        if int8:
            cmd.append("--int8")
            if route == "cache":
                cmd.append(f"--calib={cache}")
    if workspace_mb:
        cmd.append(f"--memPoolSize=workspace:{workspace_mb}")
    if dla_core is not None:
        cmd.append(f"--useDLACore={dla_core}")
        if gpu_fallback:
            cmd.append("--allowGPUFallback")
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    return cmd


def build_command(*, fp32_onnx: str, qdq_onnx: str | None, engine: str, shapes: Shapes, fp16: bool, int8: bool,
                  route: str | None, cache: str | None, workspace_mb: int | None, dla_core: int | None,
                  gpu_fallback: bool, timing_cache: str | None) -> list[str]:
    """``deeplab-edge build`` from the bundle's files, with the same flags."""
    cmd = ["deeplab-edge", "build", "--onnx", fp32_onnx, "-o", engine]
    if int8:
        cmd.append("--int8")
        if route == "qdq":
            cmd += ["--qdq", qdq_onnx or ""]
        if cache:  # kept in the rebuilt bundle (the route that TensorRT 8.5-10 can also take)
            cmd += ["--calib-cache", cache]
        if route == "cache":
            cmd += ["--int8-route", "cache"]
    if fp16:
        cmd.append("--fp16")
    if shapes.dynamic:
        cmd += ["--shapes", ",".join("x".join(map(str, s)) for s in (shapes.min, shapes.opt, shapes.max))]
    if workspace_mb:
        cmd += ["--workspace", str(workspace_mb)]
    if dla_core is not None:
        cmd += ["--dla", str(dla_core)] + (["--allow-gpu-fallback"] if gpu_fallback else [])
    if timing_cache:
        cmd += ["--timing-cache", timing_cache]
    return cmd


def build_script(manifest: dict[str, Any]) -> str:
    """A POSIX shell script that builds the engine on the target: ``deeplab-edge build`` when the
    package is installed there, else ``trtexec`` (TensorRT 11's strongly typed form when the
    installed TensorRT is 11 or newer)."""
    b = manifest["build"]
    q = lambda cmd: " ".join(shlex.quote(c) for c in cmd)  # noqa: E731
    trt10 = q(b["trtexec"])
    trt11 = q(b["trtexec_trt11"]) if b.get("trtexec_trt11") else None
    lines = [
        "#!/bin/sh",
        "# Builds the TensorRT engine of this deployment bundle on the target (Jetson or GPU machine).",
        f"# Generated by deeplab-edge {manifest.get('deeplab_edge')} on {manifest.get('created')}.",
        f"# The engine was NOT built where this bundle was made: {manifest.get('not_built_reason')}",
        "set -eu",
        'cd "$(dirname "$0")"',
        "if command -v deeplab-edge >/dev/null 2>&1; then",
        f"  exec {q(b['deeplab_edge'])}",
        "fi",
        'TRTEXEC="$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)"',
        'TRT_MAJOR="$(python3 -c "import tensorrt; print(tensorrt.__version__.split(\'.\')[0])" 2>/dev/null || echo 0)"',
    ]
    if trt11:
        lines += ['if [ "$TRT_MAJOR" -ge 11 ]; then',
                  f'  exec "$TRTEXEC" {trt11.split(" ", 1)[1]}',
                  "fi"]
    else:
        lines += ['if [ "$TRT_MAJOR" -ge 11 ]; then',
                  '  echo "TensorRT 11 has no INT8 calibrators: rebuild this bundle from a QDQ model '
                  '(deeplab-edge build --int8 --calib-data DIR)" >&2; exit 2',
                  "fi"]
    lines += [f'exec "$TRTEXEC" {trt10.split(" ", 1)[1]}', ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- TensorRT (thin)

def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot build or run engines on this machine (None when it can)."""
    if importlib.util.find_spec("tensorrt") is None:
        return ("TensorRT's Python package (tensorrt) is not installed on this machine: it comes with JetPack on a "
                "Jetson, or `pip install tensorrt` on a CUDA machine")
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU (and a CUDA build of PyTorch for the buffers); this machine has none"
    return None


def import_tensorrt():
    """The tensorrt module, or an EngineError saying why it cannot be used here."""
    reason = tensorrt_unavailable()
    if reason:
        raise EngineError(reason)
    import tensorrt as trt

    v = _version_triple(trt.__version__) or (0,)
    if v[:2] < MIN_TRT:
        raise EngineError(f"TensorRT {trt.__version__} is too old: deeplab-edge needs 8.5 or newer (tensor-name API)")
    return trt


def build_engine(*, onnx: Path, engine: Path, shapes: Shapes, fp16: bool, int8: bool, route: str | None,
                 cache: Path | None, workspace_mb: int | None, dla_core: int | None, gpu_fallback: bool,
                 timing_cache: Path | None) -> dict[str, Any]:
    """Build and serialize an engine with TensorRT's Python API; returns build facts."""
    trt = import_tensorrt()
    major = trt_major(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strong = major >= 11
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strong:
        if route == "cache":
            raise EngineError("TensorRT 11 has no INT8 calibrators: build from the QDQ ONNX (--calib-data or --qdq)")
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):  # from the file: reads an ONNX with external data beside it
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx}: TensorRT's ONNX parser failed: {errs[:300]}")
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not strong:
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if int8:
            config.set_flag(trt.BuilderFlag.INT8)
    elif fp16:
        warnings.warn("TensorRT 11 has no FP16 flag: layers run in the ONNX model's own types "
                      "(export with --fp16 or convert with ModelOpt AutoCast for FP16)", stacklevel=2)
    calibrator = None
    if int8 and route == "cache":
        if (major, _version_triple(trt.__version__)[1]) >= (10, 1):
            warnings.warn("TensorRT deprecated INT8 calibrators in 10.1 and removed them in 11: prefer the QDQ "
                          "route (--qdq / --calib-data)", DeprecationWarning, stacklevel=2)
        calibrator = _cache_calibrator(trt, cache)
        config.int8_calibrator = calibrator
    inp = network.get_input(0)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        if gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    tc = None
    if timing_cache is not None:
        tc = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(tc, ignore_mismatch=False)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError("TensorRT failed to build the engine (its log above says why)")
    with atomic_path(engine) as tmp:
        tmp.write_bytes(bytes(plan))
    if tc is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"build_s": time.perf_counter() - t0, "input_name": inp.name, "strongly_typed": strong}


def _cache_calibrator(trt, cache: Path | None):
    """An IInt8EntropyCalibrator2 that replays a calibration cache (no batches)."""
    if cache is None or not cache.is_file():
        raise EngineError("the calibration-cache route needs --calib-cache FILE")
    data = cache.read_bytes()

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None

        def read_calibration_cache(self):
            return data

        def write_calibration_cache(self, cache_bytes):
            return None

    return CacheCalibrator()


def new_manifest(**kw: Any) -> dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "deeplab_edge": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **kw}
