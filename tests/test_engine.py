"""`deeplab-edge build`: the deployment bundle end to end on real data (FP32 and QDQ ONNX run in
ONNX Runtime, the cache matches the ONNX, the generated script's flags are checked and its
command really runs), the manifest's compatibility rules, and the engine itself where TensorRT
and a GPU exist (skipped elsewhere, with the reason)."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deeplab_edge.cli import main
from deeplab_edge.engine import Shapes, check_compatibility, engine_device_index, parse_shapes, trtexec_command
from deeplab_edge.errors import DeepLabEdgeError, EngineError

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


# ----------------------------------------------------------------------------- shapes and commands

def test_parse_shapes():
    s = parse_shapes(None, (513, 513))
    assert s.min == s.opt == s.max == (1, 3, 513, 513) and not s.dynamic
    s = parse_shapes("1x3x513x513,4x3x513x513,8x3x513x513", (513, 513))
    assert s.dynamic and s.opt == (4, 3, 513, 513)
    for bad, msg in [("8x3x513x513,4x3x513x513,1x3x513x513", "min <= opt <= max"),
                     ("1x1x513x513", "C = 3"), ("1x3x257x257", "only the batch"), ("1x3x513", "NxCxHxW"),
                     ("a,b", "min,opt,max")]:
        with pytest.raises(DeepLabEdgeError, match=msg):
            parse_shapes(bad, (513, 513))
    with pytest.raises(DeepLabEdgeError, match="no fixed input size"):
        parse_shapes(None, None)


def test_trtexec_flags_per_route_and_version():
    shapes = Shapes((1, 3, 513, 513), (2, 3, 513, 513), (4, 3, 513, 513))
    kw = dict(onnx="m_qdq.onnx", engine="m.engine", input_name="input", shapes=shapes, fp16=True, int8=True,
              workspace_mb=512, dla_core=0, gpu_fallback=True, timing_cache="t.cache")
    qdq = trtexec_command(route="qdq", cache=None, **kw)
    assert qdq[:3] == ["trtexec", "--onnx=m_qdq.onnx", "--saveEngine=m.engine"]
    assert {"--fp16", "--int8", "--minShapes=input:1x3x513x513", "--optShapes=input:2x3x513x513",
            "--maxShapes=input:4x3x513x513", "--memPoolSize=workspace:512", "--useDLACore=0", "--allowGPUFallback",
            "--timingCacheFile=t.cache"} <= set(qdq)
    assert not any(a.startswith("--calib") for a in qdq)
    cache = trtexec_command(route="cache", cache="m.cache", **{**kw, "onnx": "m_fp32.onnx"})
    assert "--calib=m.cache" in cache and "--int8" in cache
    v11 = trtexec_command(route="qdq", cache=None, trt_major_version=11, **kw)
    assert "--stronglyTyped" in v11 and "--int8" not in v11 and "--fp16" not in v11  # removed in TensorRT 11
    with pytest.raises(EngineError, match="no INT8 calibrators"):
        trtexec_command(route="cache", cache="m.cache", trt_major_version=11, **kw)
    fixed = trtexec_command(route=None, cache=None, **{**kw, "shapes": Shapes(*[(1, 3, 513, 513)] * 3),
                                                       "int8": False, "dla_core": None})
    assert not any("Shapes" in a for a in fixed) and "--useDLACore=0" not in fixed


def test_compatibility_rules():
    built = {"engine_built": True, "tensorrt": "8.6.2.3", "gpu": {"name": "Orin", "compute_capability": "8.7"}}
    same = {"tensorrt": "8.6.2.3", "gpu": {"name": "Orin", "compute_capability": "8.7"}}
    assert check_compatibility(built, same) == []
    assert check_compatibility(built, {**same, "gpu": {"name": "Orin (nvgpu)", "compute_capability": "8.7"}}) == []
    p = check_compatibility(built, {**same, "tensorrt": "10.3.0"})
    assert len(p) == 1 and "8.6.2.3" in p[0] and "10.3.0" in p[0]
    p = check_compatibility(built, {**same, "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"}})
    assert len(p) == 1 and "Orin" in p[0] and "H100" in p[0] and "8.7" in p[0] and "9.0" in p[0]
    p = check_compatibility(built, {"tensorrt": None, "gpu": None})
    assert len(p) == 2 and "not installed" in p[0] and "no CUDA GPU" in p[1]
    assert "bundle" in check_compatibility({"engine_built": False}, same)[0]


# a machine with two different GPUs, as this_machine() describes one (cuda:0 current)
TWO_GPUS = {"tensorrt": "10.3.0", "gpu": {"name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"},
            "gpus": [{"index": 0, "name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"},
                     {"index": 1, "name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}]}


def test_compatibility_is_checked_against_the_gpu_the_engine_runs_on():
    """Not GPU 0: the device asked for. An engine built on the 4090 runs on cuda:1 and is refused
    on cuda:0 (pointing at cuda:1), and a device the machine does not have is named."""
    built = {"engine_built": True, "tensorrt": "10.3.0",
             "gpu": {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}}
    assert check_compatibility(built, TWO_GPUS, device=1) == []
    p = check_compatibility(built, TWO_GPUS, device=0)
    assert len(p) == 1 and "cuda:0 is NVIDIA A100" in p[0] and "(8.0)" in p[0] and "run it on cuda:1" in p[0]
    assert len(check_compatibility(built, TWO_GPUS)) == 1  # no device: the current one (here["gpu"], the A100)
    p = check_compatibility(built, TWO_GPUS, device=2)
    assert len(p) == 1 and "no GPU cuda:2" in p[0] and "has 2" in p[0] and "cuda:1 NVIDIA GeForce RTX 4090" in p[0]
    a100 = {**built, "gpu": {"name": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}}
    assert check_compatibility(a100, TWO_GPUS, device=0) == []
    p = check_compatibility(a100, TWO_GPUS, device=1)
    assert len(p) == 1 and "cuda:1 is NVIDIA GeForce RTX 4090" in p[0] and "run it on cuda:0" in p[0]


def test_engine_device_index():
    assert engine_device_index("cuda:1") == 1 and engine_device_index(3) == 3
    assert engine_device_index(torch.device("cuda", 2)) == 2
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    assert engine_device_index(None) == engine_device_index("auto") == engine_device_index("cuda") == current
    for bad, msg in (("cpu", "CUDA GPU"), ("cuda:x", "unknown device"), ("gpu1", "unknown device"),
                     (-1, "negative")):
        with pytest.raises(EngineError, match=msg):
            engine_device_index(bad)


def test_this_machine_describes_every_gpu_and_the_one_used():
    from deeplab_edge.engine import this_machine

    here = this_machine()
    assert len(here["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if here["gpus"]:
        last = here["gpus"][-1]
        assert this_machine(last["index"])["gpu"] == {"name": last["name"],
                                                       "compute_capability": last["compute_capability"]}
    else:
        assert here["gpu"] is None


# ----------------------------------------------------------------------------- the bundle, for real

def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bundle(shared, imported, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    res = CliRunner().invoke(main, ["build", "--weights", str(imported[0]), "--data", str(shared["voc"]), "--int8",
                                    "--fp16", "--calib-data", str(shared["voc"]), "--calib-num", "3",
                                    "--calib-method", "minmax", "--shapes", "1x3x513x513,2x3x513x513,4x3x513x513",
                                    "--dla", "0", "--allow-gpu-fallback", "--workspace", "512",
                                    "-o", str(out / "mnv2.engine"), "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT and a GPU are here: the engine is built, not the bundle")
def test_bundle_files_and_manifest(bundle):
    out, man = bundle
    names = sorted(p.name for p in out.iterdir())
    assert names == ["mnv2.cache", "mnv2.engine.json", "mnv2_build_engine.sh", "mnv2_fp32.onnx", "mnv2_qdq.onnx",
                     "mnv2_ranges.json"]  # no engine, no staging folder left behind
    assert man["engine_built"] is False and "tensorrt" in man["not_built_reason"].lower()
    assert json.loads((out / "mnv2.engine.json").read_text())["onnx_fp32"] == man["onnx_fp32"]
    for key, f in (("onnx_fp32", "mnv2_fp32.onnx"), ("onnx_qdq", "mnv2_qdq.onnx"), ("calibration_cache", "mnv2.cache")):
        assert man[key]["file"] == f and man[key]["sha256"] == _sha(out / f)
    assert man["precision"] == {"fp16": True, "int8": True, "int8_route": "qdq", "strongly_typed": None}
    assert man["input"]["shapes"]["max"] == [4, 3, 513, 513] and man["dla_core"] == 0
    assert man["num_classes"] == 21 and man["preprocess"]["size"] == 513 and man["calibration"]["images"] == 3
    assert len(man["calibration"]["images_sha1"]) == 3  # what `eval --engine` compares its images with


def test_bundle_models_run_in_onnx_runtime(bundle, imported, shared):
    """FP32 export = PyTorch; the QDQ model (exact fake-quant) close to it; dynamic batch up to 4."""
    from deeplab_edge.calibration import check_cache_against_onnx, read_trt_cache
    from deeplab_edge.data import open_dataset
    from deeplab_edge.data.preprocess import Preprocess
    from deeplab_edge.export import ort_session

    out, _ = bundle
    pre = Preprocess.from_dict(imported[2]["preprocess"])
    ds = open_dataset(shared["voc"])
    x = torch.stack([pre(ds.load(i)[1])[0] for i in range(2)])
    with torch.no_grad():
        ref = imported[1].eval()(x).argmax(1).numpy()
    fp32 = ort_session(out / "mnv2_fp32.onnx").run(None, {"input": x.numpy()})[0].argmax(1)
    assert (fp32 == ref).mean() >= 0.999
    qdq = ort_session(out / "mnv2_qdq.onnx", optimize=False).run(None, {"input": x.numpy()})[0].argmax(1)
    assert (qdq == ref).mean() >= 0.95
    header, scales = read_trt_cache(out / "mnv2.cache")
    assert header.startswith("TRT-") and len(scales) > 50
    assert check_cache_against_onnx(out / "mnv2.cache", out / "mnv2_fp32.onnx") == scales


def test_build_emit_labels_bundle(bundle, shared, tmp_path):
    """`build --emit labels` from the bundle's own FP32 and QDQ models: label versions beside them (the logit
    inputs untouched), the engine's build commands name the label QDQ model, and each label model's output
    equals the arg-max of its logit model in ONNX Runtime on real images; the manifest says what it outputs."""
    import numpy as np

    from deeplab_edge.data import open_dataset
    from deeplab_edge.data.preprocess import Preprocess
    from deeplab_edge.export import ort_session, read_metadata

    src, man = bundle
    before = {p.name: _sha(p) for p in src.iterdir()}
    out = tmp_path / "lab"
    res = CliRunner().invoke(main, ["build", "--onnx", str(src / "mnv2_fp32.onnx"), "--int8", "--qdq",
                                    str(src / "mnv2_qdq.onnx"), "--shapes", "1x3x513x513", "--emit", "labels",
                                    "-o", str(out / "lab.engine"), "--json"])
    assert res.exit_code == 0, res.output
    lab = json.loads(res.stdout)
    assert {p.name: _sha(p) for p in src.iterdir()} == before
    assert lab["output"]["kind"] == "labels" and lab["output"]["dtype"] == "int32"
    assert lab["output"]["onnx_qdq"]["file"] == "lab_labels_qdq.onnx"
    if not HAVE_TRT:
        assert "--onnx=lab_labels_qdq.onnx" in lab["build"]["trtexec"]
        assert "lab_labels_qdq.onnx" in " ".join(lab["build"]["deeplab_edge"])
    pre = Preprocess.from_dict(man["preprocess"])
    x = pre(open_dataset(shared["voc"]).load(3)[1])[0][None].numpy()
    for logits, labels, optimize in (("lab_fp32.onnx", "lab_labels_fp32.onnx", True),
                                     ("lab_qdq.onnx", "lab_labels_qdq.onnx", False)):
        assert read_metadata(out / labels)["output"] == "labels"
        ref = ort_session(out / logits, optimize=optimize).run(None, {"input": x})[0].argmax(1)
        got = ort_session(out / labels, optimize=optimize).run(None, {"input": x})[0]
        assert got.dtype == np.int32 and (got == ref).all(), labels


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT and a GPU are here: the script would build a real engine")
def test_build_script_flags_and_its_command_runs(bundle, tmp_path):
    out, man = bundle
    script = (out / "mnv2_build_engine.sh").read_text()
    assert os.access(out / "mnv2_build_engine.sh", os.X_OK)
    assert subprocess.run(["sh", "-n", str(out / "mnv2_build_engine.sh")]).returncode == 0  # valid shell
    trt10 = next(ln for ln in script.splitlines() if ln.startswith('exec "$TRTEXEC"'))
    for flag in ("--onnx=mnv2_qdq.onnx", "--saveEngine=mnv2.engine", "--int8", "--fp16",
                 "--minShapes=input:1x3x513x513", "--optShapes=input:2x3x513x513", "--maxShapes=input:4x3x513x513",
                 "--memPoolSize=workspace:512", "--useDLACore=0", "--allowGPUFallback"):
        assert flag in trt10.split(), flag
    trt11 = next(ln for ln in script.splitlines() if ln.strip().startswith('exec "$TRTEXEC"') and "strongly" in ln)
    assert "--stronglyTyped" in trt11 and "--int8" not in trt11
    # the script's `deeplab-edge build` line is a valid command: run the script with our CLI on PATH
    # (no TensorRT here, so it makes the bundle again from the bundle's own files)
    bindir = Path(sys.executable).parent
    assert (bindir / "deeplab-edge").exists()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run(["sh", str(out / "mnv2_build_engine.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((out / "mnv2.engine.json").read_text())
    assert again["build"]["trtexec"] == man["build"]["trtexec"]
    assert again["onnx_qdq"]["sha256"] == man["onnx_qdq"]["sha256"]  # the given QDQ model, unchanged


def test_build_bad_input(imported, shared, tmp_path):
    def run(*args):
        return CliRunner().invoke(main, ["build", "--weights", str(imported[0]), "--data", str(shared["voc"]), *args])

    r = run("--int8", "-o", str(tmp_path / "a.engine"))
    assert r.exit_code == 2 and "--calib-data" in r.output
    r = run("-o", str(tmp_path / "a.onnx"))
    assert r.exit_code == 2 and "engine's file name" in r.output
    r = run("--fp16", "--allow-gpu-fallback", "-o", str(tmp_path / "a.engine"))
    assert r.exit_code == 2 and "--dla" in r.output
    bad_cache = tmp_path / "bad.cache"
    bad_cache.write_text("TRT-8601-EntropyCalibration2\nnot_a_tensor: 3c010204\n")
    r = run("--int8", "--calib-cache", str(bad_cache), "-o", str(tmp_path / "b" / "m.engine"))
    assert r.exit_code == 2 and "not in" in r.output
    assert not (tmp_path / "b").exists()  # nothing half-written, no staging folder, not even the folder
    r = run("--int8", "--qdq", str(imported[0]), "-o", str(tmp_path / "c.engine"))
    assert r.exit_code == 2
    assert "Traceback" not in r.output


def test_engine_refused_before_tensorrt_sees_it(tmp_path, shared):
    """An engine built elsewhere: refused from its manifest, naming what it needs and what is here."""
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"\x00" * 64)
    man = {"format": "deeplab-edge-engine/1", "engine_built": True, "tensorrt": "8.6.2.3",
           "gpu": {"name": "Orin", "compute_capability": "8.7"},
           "engine": {"file": "m.engine", "sha256": _sha(eng)}, "preprocess": {"size": 513}, "num_classes": 21}
    (tmp_path / "m.engine.json").write_text(json.dumps(man))
    r = CliRunner().invoke(main, ["eval", "--engine", str(eng), "--data", str(shared["voc"])])
    assert r.exit_code == 2 and "cannot run here" in r.output and "8.6.2.3" in r.output
    eng.write_bytes(b"\x01" * 64)  # engine changed after its manifest was written
    r = CliRunner().invoke(main, ["eval", "--engine", str(eng), "--data", str(shared["voc"])])
    assert r.exit_code == 2 and "does not match its manifest" in r.output
    bundle = {**man, "engine": None, "engine_built": False}  # a bundle's manifest: no engine was built
    (tmp_path / "m.engine.json").write_text(json.dumps(bundle))
    r = CliRunner().invoke(main, ["eval", "--engine", str(eng), "--data", str(shared["voc"])])
    assert r.exit_code == 2 and "build_engine.sh" in r.output
    (tmp_path / "m.engine.json").unlink()
    r = CliRunner().invoke(main, ["eval", "--engine", str(eng), "--data", str(shared["voc"])])
    assert r.exit_code == 2 and "no manifest" in r.output


def test_engine_runner_refuses_the_cpu_before_tensorrt(tmp_path):
    from deeplab_edge.runtime.tensorrt import EngineRunner

    eng = tmp_path / "m.engine"
    eng.write_bytes(b"\x00" * 64)
    (tmp_path / "m.engine.json").write_text(json.dumps({
        "format": "deeplab-edge-engine/1", "engine_built": True, "tensorrt": "10.3.0",
        "gpu": {"name": "Orin", "compute_capability": "8.7"}, "engine": {"file": "m.engine", "sha256": _sha(eng)},
        "preprocess": {"size": 513}, "num_classes": 21}))
    with pytest.raises(EngineError, match="not on the CPU"):
        EngineRunner(eng, device="cpu")
    with pytest.raises(EngineError, match="cannot run here"):
        EngineRunner(eng, device="cuda:7")


@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT (tensorrt) and a CUDA GPU; neither is on this machine")
def test_engine_runs_on_the_device_it_is_given(shared, imported, tmp_path):
    """Built on the last GPU, run there while another device is current: stream, buffers and
    output on that device (with one GPU: cuda:0, all the same)."""
    from deeplab_edge.data import open_dataset
    from deeplab_edge.data.preprocess import Preprocess
    from deeplab_edge.runtime.tensorrt import EngineRunner

    last = torch.cuda.device_count() - 1
    with torch.cuda.device(last):  # TensorRT builds on the current device
        r = CliRunner().invoke(main, ["build", "--weights", str(imported[0]), "--data", str(shared["voc"]),
                                      "-o", str(tmp_path / "m.engine"), "--json"])
    assert r.exit_code == 0, r.output
    torch.cuda.set_device(0)
    runner = EngineRunner(tmp_path / "m.engine", device=f"cuda:{last}")
    assert runner.device == torch.device("cuda", last) and runner.stream.device == runner.device
    x = Preprocess.from_dict(imported[2]["preprocess"])(open_dataset(shared["voc"]).load(0)[1])[0][None]
    out = runner(x)
    assert out.device == runner.device and out.shape[:2] == (1, 21)
    with torch.no_grad():
        ref = imported[1].eval()(x).argmax(1)
    assert (out.argmax(1).cpu() == ref).float().mean() >= 0.99


@pytest.mark.skipif(not HAVE_TRT, reason="needs TensorRT (tensorrt) and a CUDA GPU; neither is on this machine")
def test_engine_builds_and_matches_onnx_runtime(shared, imported, tmp_path):
    r = CliRunner().invoke(main, ["build", "--weights", str(imported[0]), "--data", str(shared["voc"]), "--fp16",
                                  "-o", str(tmp_path / "m.engine"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["engine_built"]
    ev = {}
    for flag, path in (("--engine", tmp_path / "m.engine"), ("--onnx", tmp_path / "m_fp32.onnx")):
        r = CliRunner().invoke(main, ["eval", flag, str(path), "--data", str(shared["voc"]), "--json"])
        assert r.exit_code == 0, r.output
        ev[flag] = json.loads(r.stdout)["miou"]
    assert abs(ev["--engine"] - ev["--onnx"]) < 0.005  # FP16 engine within half a point of FP32
    assert np.isfinite(ev["--engine"])


def test_doctor_reports_this_machine():
    """doctor --json against what this process can see for itself: torch's version and CUDA,
    the ONNX Runtime providers, TensorRT backends refused with the reason, and no power
    telemetry off a Jetson."""
    import importlib.util
    import json
    import shutil

    import onnxruntime as ort
    import torch
    from click.testing import CliRunner

    from deeplab_edge.cli import main

    res = CliRunner().invoke(main, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["torch"]["version"] == torch.__version__ and d["torch"]["cuda_available"] == torch.cuda.is_available()
    assert d["onnxruntime_providers"] == ort.get_available_providers()
    assert d["backends"]["torch-fp32"]["ok"] and d["backends"]["ort-fp32"]["ok"]
    if importlib.util.find_spec("tensorrt") is None:
        assert not d["backends"]["trt-int8"]["ok"] and "TensorRT" in d["backends"]["trt-int8"]["reason"]
    if not (importlib.util.find_spec("jtop") or shutil.which("tegrastats")):
        assert d["power_telemetry"] is None
    table = CliRunner().invoke(main, ["doctor"])
    assert table.exit_code == 0 and "power telemetry" in table.output and "trt-int8" in table.output
