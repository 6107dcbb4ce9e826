"""ONNX export: checker-clean, metadata, parity with PyTorch in ONNX Runtime, fixed and dynamic shapes."""

import json

import onnx
import pytest
import torch
from click.testing import CliRunner

from deeplab_edge.checkpoint import LoadedModel
from deeplab_edge.cli import main
from deeplab_edge.errors import ExportError
from deeplab_edge.export import export_onnx, ort_session, read_metadata
from deeplab_edge.models import get_model

# Resize modes TensorRT's ONNX parser (onnx-tensorrt importResize, TRT 8.6+) and ONNX Runtime both take.
RESIZE_MODES = {"align_corners", "half_pixel", "pytorch_half_pixel"}


def _images(shared, n=2):
    from deeplab_edge.data import open_dataset

    ds = open_dataset(shared["voc"])
    return [ds.load(i)[1] for i in range(n)]


def _resize_modes(path):
    m = onnx.load(str(path))
    return {a.s.decode() for n in m.graph.node if n.op_type == "Resize" for a in n.attribute
            if a.name == "coordinate_transformation_mode"}


@pytest.mark.parametrize("arch", ["deeplabv3plus_mobilenet_v2", "deeplabv3_mobilenet_v3_large",
                                  "deeplabv2_resnet101"])
@pytest.mark.parametrize("dynamic", [(), ("batch", "hw")])
def test_export_architectures_fixed_and_dynamic(shared, tmp_path, arch, dynamic):
    model = get_model(arch, num_classes=21).eval()
    loaded = LoadedModel(model, {"classes": [str(i) for i in range(21)],
                                 "preprocess": {"size": 129, "mean": [127.5] * 3, "std": [127.5] * 3}}, None)
    out = tmp_path / "m.onnx"
    rep = export_onnx(loaded, out, _images(shared), dynamic=dynamic)
    # untrained weights give large logits (ResNet-101 v2: ~1e3): compare relative to their size
    assert rep.parity["agreement"] >= 0.999
    assert rep.parity["max_abs_diff"] < 1e-4 + 1e-5 * rep.parity["max_abs_logit"]
    assert rep.parity["images"] == 2 + (1 if dynamic else 0)
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 17
    assert _resize_modes(out) <= RESIZE_MODES
    # image pooling is a ReduceMean (any input size), never a fixed-kernel AveragePool
    ops = {n.op_type for n in m.graph.node}
    assert "AveragePool" not in ops and ("ReduceMean" in ops or arch == "deeplabv2_resnet101")
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == (["batch", 3, "height", "width"] if dynamic else [1, 3, 129, 129])
    if dynamic:  # batch 2 at a size never exported, against PyTorch
        x = torch.randn(2, 3, 97, 161)
        got = ort_session(out).run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = model(x)
        torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-4 + 1e-5 * float(ref.abs().max()), rtol=1e-4)


@pytest.mark.slow
def test_export_real_model_and_eval_onnx(shared, imported, tmp_path):
    ckpt = imported[0]
    out = tmp_path / "mnv2.onnx"
    res = CliRunner().invoke(main, ["export", "--weights", str(ckpt), "-o", str(out), "--data", str(shared["voc"]),
                                    "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["parity"]["agreement"] >= 0.999 and rep["nodes_final"] <= rep["nodes_exported"]
    meta = read_metadata(out)
    assert meta["num_classes"] == 21 and meta["preprocess"]["mean"] == [128.0] * 3
    assert meta["checkpoint_sha256"] == imported[2].get("sha256", meta["checkpoint_sha256"])
    assert _resize_modes(out) == {"align_corners"}
    res = CliRunner().invoke(main, ["eval", "--onnx", str(out), "--data", str(shared["voc"]), "--reference",
                                    str(shared["ref_pred"]), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    ref = json.loads(shared["ref_json"].read_text())
    assert abs(r["miou"] - ref["miou"]) < 0.01 and r["reference_agreement"] > 0.99


def test_export_refuses_bad_requests(shared, tmp_path):
    loaded = LoadedModel(get_model("deeplabv3_mobilenet_v2", num_classes=3).eval(),
                         {"preprocess": {"size": 65}}, None)
    with pytest.raises(ExportError, match="opset 13 is too old"):
        export_onnx(loaded, tmp_path / "a.onnx", _images(shared, 1), opset=13)
    with pytest.raises(ExportError, match="unknown dynamic axes"):
        export_onnx(loaded, tmp_path / "a.onnx", _images(shared, 1), dynamic=["channels"])
    with pytest.raises(ExportError, match="no images"):
        export_onnx(loaded, tmp_path / "a.onnx", [])
    assert not list(tmp_path.iterdir())


def test_eval_onnx_without_metadata_is_refused(tmp_path, shared):
    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    res = CliRunner().invoke(main, ["eval", "--onnx", str(path), "--data", str(shared["voc"])])
    assert res.exit_code == 2 and "no deeplab-edge metadata" in res.output


@pytest.mark.slow
def test_fp16_export_of_real_model(shared, imported, tmp_path):
    from deeplab_edge.checkpoint import load_checkpoint

    out = tmp_path / "mnv2_fp16.onnx"
    rep = export_onnx(load_checkpoint(imported[0]), out, _images(shared, 2), fp16=True)
    assert rep.parity["agreement"] >= 0.999  # float16 ONNX Runtime against float32 PyTorch
    m = onnx.load(str(out))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert read_metadata(out)["precision"] == "fp16"
    res = CliRunner().invoke(main, ["eval", "--onnx", str(out), "--data", str(shared["voc"]), "--json"])
    assert res.exit_code == 0, res.output
    ref = json.loads(shared["ref_json"].read_text())
    assert abs(json.loads(res.output)["miou"] - ref["miou"]) < 0.01


@pytest.mark.parametrize("dtype", ["uint8", "int32"])
def test_label_output_is_the_argmax_of_pytorch_logits(shared, imported, tmp_path, dtype):
    """`export --emit labels`: the graph ends in ArgMax + Cast; on real VOC images its [1, H, W] output equals the
    arg-max of the PyTorch model's logits (every pixel: no ties here), `eval --onnx` of it scores what eval of the
    checkpoint scores, and CRF, --scales and calibration refuse it with the reason."""
    import numpy as np

    from deeplab_edge.data import open_dataset
    from deeplab_edge.data.preprocess import Preprocess

    out = tmp_path / "labels.onnx"
    voc = str(shared["voc"])
    res = CliRunner().invoke(main, ["export", "--weights", str(imported[0]), "--data", voc, "--parity-images", "1",
                                    "--emit", "labels", "--labels-dtype", dtype, "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    m = onnx.load(str(out))
    assert [n.op_type for n in m.graph.node][-2:] == ["ArgMax", "Cast"] and read_metadata(m)["output"] == "labels"
    sess = ort_session(out)
    assert sess.get_outputs()[0].type == f"tensor({dtype})"
    pre = Preprocess.from_dict(imported[2]["preprocess"])
    ds = open_dataset(shared["voc"])
    for i in (1, 2):  # images the export's parity check did not see
        x = pre(ds.load(i)[1])[0][None]
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.inference_mode():
            ref = imported[1].eval()(x).argmax(1).numpy()
        assert got.shape == ref.shape == (1, *x.shape[-2:]) and (got.astype(np.int64) == ref).all()
    base = ["eval", "--data", voc, "--num-images", "2", "--json"]
    ev_onnx = json.loads(CliRunner().invoke(main, base + ["--onnx", str(out)]).output)
    ev_pt = json.loads(CliRunner().invoke(main, base + ["--weights", str(imported[0]), "--device", "cpu"]).output)
    assert ev_onnx["miou"] == pytest.approx(ev_pt["miou"], abs=1e-4)
    for extra, says in ((["--crf", "torch"], "outputs labels, not scores"), (["--scales", "0.75,1"], "--scales")):
        r = CliRunner().invoke(main, base + ["--onnx", str(out), *extra])
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["calibrate", "--onnx", str(out), "--data", voc, "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and "outputs labels" in r.output and not (tmp_path / "c").exists()
    from deeplab_edge.export import with_label_output

    with pytest.raises(ExportError, match="outputs labels already"):
        with_label_output(m)
