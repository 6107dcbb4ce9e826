import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from deeplab_edge.cli import main
from deeplab_edge.cli.run_cmd import MODEL_OPTIONS
from deeplab_edge.models import get_model
from deeplab_edge.runtime.spec import ModelSpec


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(res, pattern):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert pattern in lines[0], res.output
    assert "Traceback" not in res.output


def test_help_on_every_command():
    for cmd in ([], ["models"], ["import"], ["eval"], ["predict"], ["info"]):
        res = run(*cmd, "--help")
        assert res.exit_code == 0 and "Usage:" in res.output


def test_models_json_flops_against_torch_counter():
    res = run("models", "--json", "--size", "129")
    assert res.exit_code == 0
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert len(rows) == 10  # 8 + the seed's LargeFOV and ASPP-L heads on MobileNetV2 (issue 28)
    for name in ("deeplabv3_mobilenet_v2", "deeplabv2_resnet101", "deeplab_largefov_mobilenet_v2"):
        model = get_model(name).eval()
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model(torch.zeros(1, 3, 129, 129))
        assert rows[name]["gflops"] * 1e9 == pytest.approx(fc.get_total_flops())
        assert rows[name]["params"] == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_import_eval_predict_on_real_data(shared, tmp_path):
    ckpt = tmp_path / "mnv2.pt"
    res = run("import", shared["tflite"], "-o", ckpt, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["num_classes"] == 21 and ckpt.is_file()

    out_json = tmp_path / "r.json"
    res = run("eval", "--weights", ckpt, "--data", shared["voc"], "--reference", shared["ref_pred"],
              "-o", out_json, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    ref = json.loads(shared["ref_json"].read_text())
    assert abs(r["miou"] - ref["miou"]) < 0.01 and r["images"] == 9
    assert r["reference_agreement"] > 0.99
    assert json.loads(out_json.read_text())["miou"] == r["miou"]

    # the table output names the numbers too
    res = run("eval", "--weights", ckpt, "--data", shared["voc"], "--num-images", "2")
    assert res.exit_code == 0 and "mIoU" in res.output and "background" in res.output

    img = shared["voc"] / "JPEGImages" / "582.png"
    res = run("predict", "--weights", ckpt, img, "-o", tmp_path / "pred", "--json")
    assert res.exit_code == 0, res.output
    mask = np.asarray(Image.open(tmp_path / "pred" / "582_mask.png"))
    overlay = np.asarray(Image.open(tmp_path / "pred" / "582_overlay.png"))
    assert overlay.shape == (513, 513, 3)
    # the mask is the model's argmax, computed here directly
    from deeplab_edge.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt).model
    x = (torch.from_numpy(np.array(Image.open(img).convert("RGB"))).permute(2, 0, 1)[None].float() - 128) / 128
    with torch.no_grad():
        direct = model(x).argmax(1)[0].numpy()
    assert (mask == direct).mean() > 0.9999
    assert set(json.loads(res.output)["images"][0]["classes"]) == {"background", "person", "motorbike"}


@pytest.mark.slow
def test_eval_tflite_backend_matches_reference(shared):
    res = run("eval", "--tflite", shared["tflite"], "--data", shared["voc"], "--reference", shared["ref_pred"],
              "--json", "--num-images", "3")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["reference_agreement"] == 1.0


def test_bad_inputs_exit_2_one_line(tmp_path, shared, imported):
    ckpt = imported[0]
    assert_one_line_error(run("eval", "--weights", tmp_path / "none.pt", "--data", shared["voc"]), "not found")
    assert_one_line_error(run("eval", "--weights", ckpt, "--data", tmp_path / "nodata"), "no such file")
    assert_one_line_error(run("eval", "--weights", ckpt, "--data", shared["camvid"]),
                          "predicts 21 classes but camvid has 11")
    assert_one_line_error(run("eval", "--data", shared["voc"]), "exactly one of --weights")
    other = tmp_path / "other.pth"
    torch.save(get_model("deeplabv3_mobilenet_v2", num_classes=3).state_dict(), other)
    assert_one_line_error(run("predict", "--weights", other, "--arch", "deeplabv3plus_mobilenet_v2",
                              shared["voc"] / "JPEGImages" / "0.png", "-o", tmp_path / "p"), "do not fit")
    notlite = tmp_path / "x.tflite"
    notlite.write_text("nope")
    out = tmp_path / "x.pt"
    assert_one_line_error(run("import", notlite, "-o", out), "not a TFLite flatbuffer")
    assert not out.exists()


def test_corrupt_image_in_predict(tmp_path, imported):
    bad = tmp_path / "in" / "bad.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff garbage")
    res = run("predict", "--weights", imported[0], bad, "-o", tmp_path / "out")
    assert_one_line_error(res, "cannot read the image")
    assert not any((tmp_path / "out").glob("*.png"))


def test_empty_path_in_predict_is_not_the_current_folder(tmp_path, imported):
    res = run("predict", "--weights", imported[0], "", "-o", tmp_path / "out")
    assert_one_line_error(res, "an empty path was given")
    assert not (tmp_path / "out").exists()


def test_no_partial_json_on_failure(tmp_path, imported, shared):
    out_json = tmp_path / "r.json"
    (tmp_path / "ref").mkdir()  # an empty reference folder (the output may not lie inside it: an input)
    res = run("eval", "--weights", imported[0], "--data", shared["voc"], "--reference", tmp_path / "ref", "-o",
              out_json)
    assert_one_line_error(res, "no reference map for image")
    assert not out_json.exists()


@pytest.mark.slow
def test_compare_is_bench_on_pytorch(shared, imported, tmp_path):
    """`compare A.pt B.tflite` is bench's torch-fp32 + litert-int8 cells without a CRF, in bench's format; the
    LiteRT cell equals `eval --tflite` on the same images, and an ONNX file is refused with what to run."""
    out = tmp_path / "cmp.json"
    res = run("compare", "--data", shared["voc"], "--num-images", "2", "--warmup", "0", "--iters", "2", imported[0],
              shared["tflite"], "-o", out, "--json")
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert json.loads(out.read_text()) == r and r["images"] == 2 and r["format"] == "deeplab-edge-bench/1"
    a, b = r["rows"]
    assert (a["backend"], b["backend"]) == ("torch-fp32", "litert-int8") and {a["crf"], b["crf"]} == {"none"}
    assert a["speedup"] == 1.0 and a["miou_delta_points"] == 0.0
    assert b["speedup"] == pytest.approx(a["latency_ms"] / b["latency_ms"])
    assert b["miou_delta_points"] == pytest.approx(100 * (b["miou"] - a["miou"]))
    ev = json.loads(run("eval", "--tflite", shared["tflite"], "--data", shared["voc"], "--num-images", "2",
                        "--json").output)
    assert ev["miou"] == pytest.approx(b["miou"], abs=1e-12)
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    assert_one_line_error(run("compare", "--data", shared["voc"], imported[0], onnx_file), "eval --onnx")


def test_importing_the_cli_imports_no_torch():
    """`--help` and option errors stay instant: the command modules import the library inside the commands."""
    code = "import sys, deeplab_edge.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


def test_model_options_fill_the_model_spec():
    """The CLI's list of model options (kept beside the options, so the CLI starts without torch) names
    fields of runtime.spec.ModelSpec, every field but the library-only threads."""
    assert set(MODEL_OPTIONS) == {f.name for f in dataclasses.fields(ModelSpec)} - {"threads"}
    params = {p.name for p in main.commands["eval"].params} & {p.name for p in main.commands["predict"].params}
    assert set(MODEL_OPTIONS) <= params


def test_a_choice_given_twice_runs_once():
    """`crf bench --methods torch,torch` printed the same row twice; every comma list of names is deduplicated in
    the order given."""
    from deeplab_edge.cli.common import choices

    assert choices("torch, pydensecrf,torch", ["pydensecrf", "torch"], "CRF method") == ["torch", "pydensecrf"]
