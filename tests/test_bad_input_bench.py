"""Bad input to `bench compare`, `selftest`, `calibrate` and ONNX models: exit code 2, one line naming the
problem and the fix, nothing written or changed (the table below, in the style of tests/test_bad_input.py);
and the fixes that are not errors, each against an independent reference: every bench backend at the asked
output stride, `kernels compile --arch 87,87` compiling sm_87 once, the warnings of degenerate calibrations.

Each row of CASES_BENCH: a name, a command line (``{w}`` a copy of the prepared folder, ``{voc}`` the real VOC
samples, ``{tflite}`` the real TFLite model, ``{camvid_weights}`` the CamVid checkpoint) and text the error
line must contain."""

import json
import math
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deeplab_edge.cli import main

from test_bad_input import assert_refused  # tests/

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "bench" / "results"
CAMVID_WEIGHTS = ROOT / "weights" / "deeplabv3_mnv2_camvid.pt"

# a result row's name in the error line: `row 1 (ort-fp32, CRF none)`
ROW1 = "row 1 (ort-fp32, crf none)"
SELFTEST = ("selftest --gpu --dry-run --voc {voc} --camvid {camvid} --tflite {tflite} --weights {camvid_weights} "
            "-o {w}/run")

CASES_BENCH = [
    # bench compare: the same machine twice
    ("compare-same-file-twice", "bench compare {w}/a.json {w}/a.json", "a.json: given twice (the same file as"),
    ("compare-same-file-other-spelling", "bench compare {w}/a.json {w}/adir/../a.json", "given twice"),
    ("compare-same-file-through-a-link", "bench compare {w}/a.json {w}/link_to_a.json", "given twice"),
    ("compare-a-copy", "bench compare {w}/a.json {w}/b.json {w}/copy_of_a.json",
     "copy_of_a.json: the same results as"),
    # bench compare: values no run writes, each named by file, row and field
    ("compare-miou-750-percent", "bench compare {w}/a.json {w}/miou_750.json",
     f"miou_750.json: a malformed bench result ({ROW1}: 'miou' is 7.5, outside [0, 1]"),
    ("compare-miou-negative", "bench compare {w}/a.json {w}/miou_negative.json",
     f"miou_negative.json: a malformed bench result ({ROW1}: 'miou' is -0.1, outside [0, 1]"),
    ("compare-miou-nan", "bench compare {w}/a.json {w}/miou_nan.json",
     f"miou_nan.json: a malformed bench result ({ROW1}: 'miou' is nan, not a finite number"),
    ("compare-miou-null", "bench compare {w}/a.json {w}/miou_null.json",
     f"miou_null.json: a malformed bench result ({ROW1}: 'miou' is null, not a number"),
    ("compare-miou-missing", "bench compare {w}/a.json {w}/miou_missing.json", f"({ROW1}: 'miou' missing"),
    ("compare-latency-not-its-p50", "bench compare {w}/a.json {w}/latency_not_p50.json",
     "not its model p50 at batch 1"),
    ("compare-no-images", "bench compare {w}/a.json {w}/doc_images_0.json", "not a count of images"),
    ("compare-latency-negative", "bench compare {w}/a.json {w}/latency_negative.json",
     f"latency_negative.json: a malformed bench result ({ROW1}: 'latency_ms' is -5, not above 0"),
    ("compare-latency-zero", "bench compare {w}/a.json {w}/latency_zero.json",
     f"({ROW1}: 'latency_ms' is 0, not above 0"),
    ("compare-latency-nan", "bench compare {w}/a.json {w}/latency_nan.json",
     f"({ROW1}: 'latency_ms' is nan, not a finite number"),
    ("compare-latency-infinite", "bench compare {w}/a.json {w}/latency_inf.json",
     f"({ROW1}: 'latency_ms' is inf, not a finite number"),
    ("compare-latency-a-string", "bench compare {w}/a.json {w}/latency_text.json",
     f"({ROW1}: 'latency_ms' is \"fast\""),
    ("compare-batch-p50-negative", "bench compare {w}/a.json {w}/p50_negative.json",
     f"({ROW1}, batch entry 0: 'p50_ms' is -1.0, not above 0"),
    ("compare-throughput-nan", "bench compare {w}/a.json {w}/ips_nan.json",
     f"({ROW1}, batch entry 0: 'images_per_s' is nan"),
    ("compare-batches-empty", "bench compare {w}/a.json {w}/batches_empty.json", f"({ROW1}: 'batches' is empty"),
    ("compare-file-size-negative", "bench compare {w}/a.json {w}/file_mb_negative.json",
     f"({ROW1}: 'file_mb' is -2.0, below 0"),
    ("compare-memory-a-string", "bench compare {w}/a.json {w}/rss_text.json", f"({ROW1}, memory: 'peak_rss_mb' is"),
    ("compare-speedup-negative", "bench compare {w}/a.json {w}/speedup_negative.json",
     f"({ROW1}: 'speedup' is -1.5, not above 0"),
    ("compare-latency-is-speed-a-string", "bench compare {w}/a.json {w}/is_speed_text.json",
     f"({ROW1}: 'latency_is_speed' is \"yes\", not a true/false"),
    ("compare-images-0", "bench compare {w}/a.json {w}/images_0.json", f"({ROW1}: 'images' is 0, not above 0"),
    ("compare-gpu-not-an-object", "bench compare {w}/a.json {w}/gpu_text.json", "environment: 'gpu' is not an object"),
    ("compare-no-rows", "bench compare {w}/a.json {w}/no_rows.json", "no rows"),
    # bench compare -o DIR: an input that the merged files would replace
    ("compare-input-is-the-output", "bench compare {w}/adir/bench_compare.json {w}/b.json -o {w}/adir",
     "bench_compare.json: is the file the merged result would be written to"),
    ("compare-input-is-the-tagged-output", "bench compare {w}/a.json {w}/adir/bench_x.json -o {w}/adir/. --tag x",
     "bench_x.json: is the file the merged result would be written to"),
    # selftest --dry-run: the plan of a check whose inputs are missing
    ("selftest-dry-run-voc-missing", SELFTEST.replace("--voc {voc}", "--voc {w}/novoc"), "--voc"),
    ("selftest-dry-run-weights-missing", SELFTEST.replace("--weights {camvid_weights}", "--weights {w}/none.pt"),
     "--weights"),
    ("selftest-dry-run-tflite-a-folder", SELFTEST.replace("--tflite {tflite}", "--tflite {w}/adir"),
     "is a folder, not a file"),
    ("selftest-dry-run-camvid-a-file", SELFTEST.replace("--camvid {camvid}", "--camvid {w}/a.json"),
     "is a file, not a folder"),
    # calibrate: the TensorRT version in the cache header
    ("calibrate-trt-version-banana", "calibrate --onnx {w}/three_convs.onnx --data {voc} -o {w}/out/c "
     "--trt-version banana", "'banana' is not a TensorRT version"),
    ("calibrate-trt-version-11", "calibrate --onnx {w}/three_convs.onnx --data {voc} -o {w}/out/c --trt-version 11.4",
     "TensorRT 11 reads no calibration cache"),
    ("calibrate-trt-version-8.4", "calibrate --onnx {w}/three_convs.onnx --data {voc} -o {w}/out/c --trt-version 8.4.3",
     "give a TensorRT 8.5-10 version"),
    # calibrate: Convs kept in float that leave none quantized
    ("calibrate-keep-float-1000", "calibrate --onnx {w}/three_convs.onnx --data {voc} -o {w}/out/c --keep-float 1000",
     "--keep-float 1000 is more than the 3 Convs of this model; give at most 2"),
    ("calibrate-keep-float-all", "calibrate --onnx {w}/three_convs.onnx --data {voc} -o {w}/out/c --keep-float 3",
     "--keep-float 3 keeps all 3 Convs of this model in float: nothing would be quantized; give at most 2"),
    ("calibrate-keep-float-with-layers",
     "calibrate --onnx {w}/three_convs.onnx --data {voc} -o {w}/out/c --keep-float 2 --keep-float-layer /0/Conv",
     "keeps 3 of the 3 Convs"),
    # calibrate: images with nothing in them
    ("calibrate-blank-images", "calibrate --onnx {w}/three_convs.onnx --data {w}/blank -o {w}/out/c",
     "all 3 calibration images are blank"),
    # ONNX models that are not one image input N x 3 x H x W
    ("eval-onnx-two-inputs", "eval --onnx {w}/two_inputs.onnx --data {voc}", "2 inputs ('input' 1x3x32x32 float, "
     "'other' 1x3x32x32 float)"),
    ("eval-onnx-one-channel", "eval --onnx {w}/one_channel.onnx --data {voc}", "its input is 'input' 1x1x32x32 float"),
    ("eval-onnx-int-input", "eval --onnx {w}/int_input.onnx --data {voc}",
     "not an image batch N x 3 x H x W of floats"),
    # the same models refused alike by OpenVINO (its input ports read as ONNX Runtime's)
    ("eval-openvino-two-inputs", "eval --onnx {w}/two_inputs.onnx --data {voc} --backend openvino",
     "2 inputs ('input' 1x3x32x32 float, 'other' 1x3x32x32 float)"),
    ("eval-openvino-one-channel", "eval --onnx {w}/one_channel.onnx --data {voc} --backend openvino",
     "its input is 'input' 1x1x32x32 float"),
    ("eval-openvino-int-input", "eval --onnx {w}/int_input.onnx --data {voc} --backend openvino",
     "not an image batch N x 3 x H x W of floats"),
    # bench: where INT8 calibrates, contradicted
    ("bench-calib-folds-with-calib-data", "bench --weights {camvid_weights} --data {voc} --calib-data {voc} "
     "--calib-folds 4", "--calib-folds splits the benchmark's images when there is nothing else to calibrate on; "
     "drop it or --calib-data"),
    ("bench-calib-on-eval-with-calib-data", "bench --weights {camvid_weights} --data {voc} --backends ort-int8 "
     "--calib-data {voc} --calib-on-eval", "--calib-on-eval calibrates on the benchmark's own images; drop it or "
     "--calib-data"),
    ("bench-calib-folds-1", "bench --weights {camvid_weights} --data {voc} --calib-folds 1", "--calib-folds"),
]


class _TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 21, 1), torch.nn.Conv2d(3, 21, 1)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


class _IntInput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 21, 1)

    def forward(self, x):
        return self.conv(x.float())


def _onnx_with_meta(module: torch.nn.Module, path: Path, args: tuple, input_names: list[str],
                    num_classes: int = 2) -> None:
    """``module`` exported to ONNX with deeplab-edge's metadata (an FP32 export at 32 x 32)."""
    torch.onnx.export(module.eval(), args, str(path), input_names=input_names, output_names=["logits"], dynamo=False,
                      opset_version=17)
    m = onnx.load(str(path))
    meta = {"preprocess": {"size": 32, "resize": "long_side", "pad": True, "mean": [0.5] * 3, "std": [0.5] * 3},
            "num_classes": num_classes, "precision": "fp32"}
    for k, v in meta.items():
        e = m.metadata_props.add()
        e.key, e.value = f"deeplab_edge.{k}", json.dumps(v)
    onnx.save(m, str(path))


def _three_convs() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1),
                               torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))


def _corrupt(doc: dict, row: int, path: tuple, value) -> dict:
    """A copy of ``doc`` with ``rows[row]`` [path...] set to ``value`` (a key of ``path`` set to ... is deleted)."""
    doc = json.loads(json.dumps(doc))
    obj = doc["rows"][row]
    for k in path[:-1]:
        obj = obj[k]
    if value is ...:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return doc


@pytest.fixture(scope="module")
def bench_inputs(tmp_path_factory):
    """The prepared bad inputs (built once; each case works on a fresh copy): two real bench results (committed
    under bench/results/: rows of PyTorch, ONNX Runtime and the emulated QDQ model, whose latency is no speed),
    corrupted copies of the first, tiny ONNX models and blank images."""
    from deeplab_edge.bench.report import FORMAT, load_result

    w = tmp_path_factory.mktemp("bad_bench_inputs")
    (w / "adir").mkdir()
    a = json.loads((RESULTS / "bench_camvid-val-int8-entropy.json").read_text())
    b = json.loads((RESULTS / "bench_camvid-val-int8-minmax.json").read_text())
    assert a["format"] == b["format"] == FORMAT and a["rows"][1]["backend"] == "ort-fp32"
    assert any(not r["latency_is_speed"] for r in a["rows"])  # the emulated QDQ row: accepted as it is
    (w / "a.json").write_text(json.dumps(a, indent=1))
    (w / "b.json").write_text(json.dumps(b, indent=1))
    (w / "copy_of_a.json").write_text(json.dumps(a))  # the same results, written otherwise
    (w / "link_to_a.json").symlink_to(w / "a.json")
    (w / "adir" / "bench_compare.json").write_text(json.dumps(b))
    (w / "adir" / "bench_x.json").write_text(json.dumps(b))
    bad = {"miou_750": ((1, ("miou",), 7.5)), "miou_negative": (1, ("miou",), -0.1),
           "miou_nan": (1, ("miou",), math.nan), "miou_null": (1, ("miou",), None), "miou_missing": (1, ("miou",), ...),
           "latency_negative": (1, ("latency_ms",), -5), "latency_zero": (1, ("latency_ms",), 0),
           "latency_nan": (1, ("latency_ms",), math.nan), "latency_inf": (1, ("latency_ms",), math.inf),
           "latency_text": (1, ("latency_ms",), "fast"), "p50_negative": (1, ("batches", 0, "p50_ms"), -1.0),
           "ips_nan": (1, ("batches", 0, "images_per_s"), math.nan), "batches_empty": (1, ("batches",), []),
           "file_mb_negative": (1, ("file_mb",), -2.0), "rss_text": (1, ("memory", "peak_rss_mb"), "a lot"),
           "speedup_negative": (1, ("speedup",), -1.5), "is_speed_text": (1, ("latency_is_speed",), "yes"),
           "images_0": (1, ("images",), 0), "latency_not_p50": (1, ("latency_ms",), 1e-300)}
    for name, (row, path, value) in bad.items():
        (w / f"{name}.json").write_text(json.dumps(_corrupt(a, row, path, value)))  # NaN/Infinity as json writes them
    (w / "gpu_text.json").write_text(json.dumps({**a, "environment": {**a["environment"], "gpu": "H100"}}))
    (w / "no_rows.json").write_text(json.dumps({**a, "rows": []}))
    (w / "doc_images_0.json").write_text(json.dumps({**a, "images": 0}))
    for name in ("a", "b", "copy_of_a"):
        load_result(w / f"{name}.json")  # the good ones are good
    _onnx_with_meta(_three_convs(), w / "three_convs.onnx", (torch.zeros(1, 3, 32, 32),), ["input"])
    assert [n.name for n in onnx.load(str(w / "three_convs.onnx")).graph.node if n.op_type == "Conv"][0] == "/0/Conv"
    # VOC's 21 classes: without the input check, `eval` gets as far as running them (a traceback)
    _onnx_with_meta(_TwoInputs(), w / "two_inputs.onnx", (torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)),
                    ["input", "other"], 21)
    _onnx_with_meta(torch.nn.Conv2d(1, 21, 1), w / "one_channel.onnx", (torch.zeros(1, 1, 32, 32),), ["input"], 21)
    _onnx_with_meta(_IntInput(), w / "int_input.onnx", (torch.zeros(1, 3, 32, 32, dtype=torch.int64),), ["input"],
                    21)
    (w / "blank").mkdir()
    for i in range(3):  # three black frames (a camera with its lens cap on)
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(w / "blank" / f"frame{i}.png")
    return w


def test_at_least_14_cases():
    assert len(CASES_BENCH) >= 14 and len({c[0] for c in CASES_BENCH}) == len(CASES_BENCH)


@pytest.mark.parametrize("case", CASES_BENCH, ids=[c[0] for c in CASES_BENCH])
def test_bad_input_bench(case, bench_inputs, shared, tmp_path):
    name, template, pattern = case
    w = tmp_path / "w"
    shutil.copytree(bench_inputs, w, symlinks=True)
    (w / "link_to_a.json").unlink()
    (w / "link_to_a.json").symlink_to(w / "a.json")  # into this copy, not the prepared folder
    argv = shlex.split(template.format(w=w, voc=shared["voc"], camvid=shared["camvid"], tflite=shared["tflite"],
                                       camvid_weights=CAMVID_WEIGHTS))
    assert_refused(argv, w, pattern)


# ----------------------------------------------------------------------------- what still works

def test_compare_accepts_the_real_results_and_their_emulated_rows(bench_inputs, tmp_path):
    """Two real results merge (the QDQ rows, whose latency is no speed, stay off the Pareto front); so does
    `-o` on the folder of an input whose name is not an output's."""
    res = CliRunner().invoke(main, ["bench", "compare", str(bench_inputs / "a.json"), str(bench_inputs / "b.json"),
                                    "-o", str(tmp_path), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    merged = json.loads(res.stdout)
    assert len(merged["rows"]) == 8 and not any(r["pareto"] for r in merged["rows"] if not r["latency_is_speed"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench_compare.csv", "bench_compare.json",
                                                          "bench_compare.png"]


def test_selftest_dry_run_with_its_inputs_prints_the_plan(shared, tmp_path):
    res = CliRunner().invoke(main, shlex.split(SELFTEST.format(w=tmp_path, voc=shared["voc"], camvid=shared["camvid"],
                                                               tflite=shared["tflite"], camvid_weights=CAMVID_WEIGHTS))
                             + ["--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert [s["name"] for s in json.loads(res.stdout)["plan"]][:2] == ["import", "kernels-check"]
    assert not (tmp_path / "run").exists()


def test_trt_versions_of_the_cache(tmp_path):
    from deeplab_edge.calibration import check_trt_version
    from deeplab_edge.calibration.cache import format_trt_cache
    from deeplab_edge.errors import CalibrationError

    assert [check_trt_version(v) for v in ("8.5", "8.6.1", "10.3.0", "10.13.0", "8.6.1.6")] == [
        (8, 5, 0), (8, 6, 1), (10, 3, 0), (10, 13, 0), (8, 6, 1)]
    for bad in ("banana", "", "8", "8.6.x", "11.4", "12.0.0", "8.4.3", "7.2.1", "10.100.0", "-8.6"):
        with pytest.raises(CalibrationError, match="--trt-version"):
            check_trt_version(bad)
    with pytest.raises(CalibrationError, match="not a TensorRT version"):  # the library path, not only the CLI
        format_trt_cache({"input": 0.5}, trt_version="banana")


def test_keep_float_counts_against_the_imported_mobilenet_v2():
    """The messages for the imported MobileNetV2's 55 Convs (the 3-Conv model above runs through the CLI)."""
    from deeplab_edge.calibration import check_keep_float
    from deeplab_edge.errors import CalibrationError

    check_keep_float(55, 54)
    check_keep_float(55, 50, ("a", "b", "c", "d"))
    for (k, layers), text in {(1000, ()): "--keep-float 1000 is more than the 55 Convs of this model; give at most 54",
                              (55, ()): "--keep-float 55 keeps all 55 Convs of this model in float: nothing would be "
                                        "quantized; give at most 54",
                              (54, ("x",)): "keeps 55 of the 55 Convs of this model in float: nothing would be "
                                            "quantized; give at most 53 with 1 --keep-float-layer name",
                              (0, tuple(map(str, range(55)))): "names all 55 Convs"}.items():
        with pytest.raises(CalibrationError, match=re.escape(text)):
            check_keep_float(55, k, layers)


# ----------------------------------------------------------------------------- output stride

def test_bench_pytorch_runner_runs_at_the_asked_output_stride(imported):
    """The runner bench makes for a PyTorch backend has the dilations of the checkpoint loaded at stride 8 (the
    reference: `load_checkpoint(..., output_stride=8)`), not the checkpoint's own 16."""
    from deeplab_edge.bench.harness import BACKENDS, _make_runner
    from deeplab_edge.checkpoint import load_checkpoint

    def dilations(model):
        return [m.dilation for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    ref8, ref16 = (load_checkpoint(imported[0], output_stride=s).model for s in (8, 16))
    assert dilations(ref8) != dilations(ref16)  # the reference tells them apart
    runner, _, extra = _make_runner(BACKENDS["torch-fp32"], imported[0], None, torch.device("cpu"), {}, None, {},
                                    output_stride=8)
    assert dilations(runner.model) == dilations(ref8) and extra["output_stride"] == 8
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), ref8.eval()(x))


@pytest.mark.slow
def test_bench_output_stride_8_every_backend_equals_eval(shared, imported):
    """`bench --output-stride 8`: the PyTorch and the ONNX Runtime rows are both `eval --output-stride 8` on the
    same images (eval loads the checkpoint itself), and differ from stride 16."""
    common = ["--data", str(shared["voc"]), "--num-images", "2", "--json"]
    res = CliRunner().invoke(main, ["bench", "--weights", str(imported[0]), "--output-stride", "8", "--backends",
                                    "torch-fp32,ort-fp32", "--crf", "none", "--iters", "1", "--warmup", "0",
                                    "--batch", "1", "--device", "cpu", *common], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    by = {r["backend"]: r["miou"] for r in doc["rows"]}
    assert doc["settings"]["output_stride"] == 8
    ev = {}
    for stride in ("8", "16"):
        r = CliRunner().invoke(main, ["eval", "--weights", str(imported[0]), "--device", "cpu", "--output-stride",
                                      stride, *common], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        ev[stride] = json.loads(r.stdout)["miou"]
    assert abs(ev["8"] - ev["16"]) > 1e-4  # the check can tell the strides apart on these images
    assert by["torch-fp32"] == pytest.approx(ev["8"], abs=1e-9)
    assert by["ort-fp32"] == pytest.approx(ev["8"], abs=2e-3)


# ----------------------------------------------------------------------------- kernels compile --arch 87,87

def test_kernels_compile_repeated_arch_and_dtype_compile_once(monkeypatch):
    """--arch 87,87,90,87 --dtype fp16,fp16: every fp16 spec once for sm_87, then once for sm_90, in that order
    (the reference: the specs of --dtype fp16 for each architecture). The compiler itself is replaced by a
    recorder here (compiling for real needs a process without TRITON_INTERPRET, see test_kernels_cli.py)."""
    from deeplab_edge.kernels import compile as kc

    calls = []

    def fake_compile(spec, cc):
        calls.append((spec.kernel, spec.dtype, spec.label, cc))
        return kc.CompileResult(spec.kernel, spec.dtype, f"sm_{cc}", spec.config, spec.num_warps, spec.num_stages,
                                64, 0, 0, 1024, 1, 0.5, "registers", True, "", 0.0)

    monkeypatch.setattr(kc, "_check_not_interpreted", lambda: None)
    monkeypatch.setattr(kc, "compile_one", fake_compile)
    res = CliRunner().invoke(main, ["kernels", "compile", "--arch", "87,87,90,87", "--dtype", "fp16,fp16", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    specs = kc.kernel_specs(dtypes=["fp16"])
    expected = [(s.kernel, s.dtype, s.label, cc) for cc in (87, 90) for s in specs]
    assert calls == expected and len(set(calls)) == len(calls)
    doc = json.loads(res.stdout)
    assert list(doc["archs"]) == ["sm_87", "sm_90"] and len(doc["results"]) == len(expected)
    calls.clear()
    kc.compile_all(kc.kernel_specs(["crf"], dtypes=["fp32", "fp32"]), [90, 90])  # the library, not only the CLI
    assert calls == [(s.kernel, s.dtype, s.label, 90) for s in kc.kernel_specs(["crf"], dtypes=["fp32"])]


# ----------------------------------------------------------------------------- degenerate calibration

@pytest.fixture()
def three_convs_onnx(tmp_path):
    path = tmp_path / "m.onnx"
    _onnx_with_meta(_three_convs(), path, (torch.zeros(1, 3, 32, 32),), ["input"])
    return path


def test_calibration_warns_on_blank_and_repeated_images(shared, tmp_path, three_convs_onnx):
    from deeplab_edge.calibration import calibrate

    some = tmp_path / "some_blank"
    some.mkdir()
    shutil.copy(shared["voc"] / "JPEGImages" / "0.png", some / "a.png")
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(some / "b.png")  # flat grey
    with pytest.warns(UserWarning, match=r"degenerate calibration: 1 of the 2 calibration images are blank .*b\.png"):
        calibrate(three_convs_onnx, some, tmp_path / "o1", num=2, cpu_int8=False)
    same = tmp_path / "same"
    same.mkdir()
    for name in ("x.png", "y.png", "z.png"):
        shutil.copy(shared["voc"] / "JPEGImages" / "0.png", same / name)
    with pytest.warns(UserWarning, match="degenerate calibration: the 3 calibration images .* all the same picture"):
        calibrate(three_convs_onnx, same, tmp_path / "o2", num=3, cpu_int8=False)
    assert (tmp_path / "o2" / "calibration.cache").is_file()  # warned, not refused


def test_calibration_warns_on_tensors_without_a_range(shared, tmp_path):
    """A ReLU that no calibration image makes positive (its Conv's bias far below the weights' reach) gets no INT8
    scale: warned, with the tensor's name; the cache indeed has no scale for it."""
    from deeplab_edge.calibration import calibrate, read_trt_cache

    model = _three_convs()
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.fill_(-1.0)  # the second ReLU's output: 0 everywhere
    path = tmp_path / "dead.onnx"
    _onnx_with_meta(model, path, (torch.zeros(1, 3, 32, 32),), ["input"])
    with pytest.warns(UserWarning, match="degenerate calibration: 1 of the .* activation tensors are 0 on every "
                                         "calibration image") as caught:
        rep = calibrate(path, shared["voc"], tmp_path / "o", num=2, cpu_int8=False)
    dead = next(str(w.message) for w in caught if "are 0 on every" in str(w.message)).split("(e.g. ")[1].split(")")[0]
    _, scales = read_trt_cache(rep["cache"])
    assert dead not in scales and "input" in scales


def test_calibration_warnings_are_data_shown_by_kind(shared, tmp_path, three_convs_onnx, monkeypatch):
    """calibrate's report records each warning with its kind; the command shows them by kind, so rewording a
    message cannot silence it (the commands matched English substrings before)."""
    from deeplab_edge.calibration import alerts, calibrate, collect

    some = tmp_path / "some_blank"
    some.mkdir()
    shutil.copy(shared["voc"] / "JPEGImages" / "0.png", some / "a.png")
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(some / "b.png")
    with pytest.warns(alerts.DegenerateCalibrationWarning):
        rep = calibrate(three_convs_onnx, some, tmp_path / "o1", num=3, cpu_int8=False)
    kinds = [w["kind"] for w in rep["warnings"]]
    assert "degenerate" in kinds and "few_images" in kinds and set(kinds) <= set(alerts.KINDS), kinds
    monkeypatch.setattr(collect, "DEGENERATE", "reworded")  # the words change; the kind does not
    res = CliRunner().invoke(main, ["calibrate", "--onnx", str(three_convs_onnx), "--data", str(some), "--num", "2",
                                    "--no-cpu-int8", "-o", str(tmp_path / "o2")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "warning: reworded: 1 of the 2 calibration images are blank" in " ".join(res.output.split()), res.output
