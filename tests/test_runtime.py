"""The runtime's one factory: every model file to a runner with the same attributes, checked against
the models themselves (PyTorch directly, ONNX Runtime against PyTorch, LiteRT against the recorded
reference predictions)."""

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_edge.errors import DeepLabEdgeError
from deeplab_edge.runtime import backend_for, open_runner


@pytest.fixture(scope="module")
def voc_image(shared):
    return np.asarray(Image.open(shared["voc"] / "JPEGImages" / "582.png").convert("RGB"))


def _labels(runner, image):
    x, geom = runner.preprocess(image)
    with torch.no_grad():
        out = runner(x[None])
    runner.synchronize()
    assert out.shape[1] == runner.num_classes and out.dtype == torch.float32
    return runner.preprocess.restore_labels(out[0].argmax(0).to(torch.uint8).numpy(), geom)


def test_torch_runner_is_the_checkpoint(imported, voc_image):
    r = open_runner(imported[0])
    assert r.info["backend"] == "torch" and r.num_classes == 21 and r.classes[15] == "person"
    x, _ = r.preprocess(voc_image)
    with torch.no_grad():
        direct = imported[1].eval()(x[None])
    torch.testing.assert_close(r(x[None]), direct)


@pytest.mark.slow
def test_onnx_and_litert_runners_agree_with_their_references(imported, shared, voc_image, tmp_path):
    from deeplab_edge.checkpoint import load_checkpoint
    from deeplab_edge.export import export_onnx

    onnx_path = tmp_path / "m.onnx"
    export_onnx(load_checkpoint(imported[0]), onnx_path, [voc_image])
    ours = _labels(open_runner(imported[0]), voc_image)
    ort = open_runner(onnx_path)
    assert ort.info["backend"] == "onnxruntime" and ort.info["precision"] == "fp32" and ort.classes[0] == "background"
    assert (_labels(ort, voc_image) == ours).mean() > 0.999
    lite = open_runner(shared["tflite"], threads=1)
    assert lite.info["backend"] == "litert" and lite.info["precision"] == "uint8" and lite.classes == []
    ref = np.asarray(Image.open(shared["ref_pred"] / "582.png"))
    assert (_labels(lite, voc_image) == ref).mean() == 1.0  # the interpreter's own recorded ArgMax


def test_backend_by_suffix_and_refusals(imported, shared, tmp_path):
    assert [backend_for(p) for p in ("a.pt", "b.PTH", "c.onnx", "d.tflite", "e.engine")] == \
        ["torch", "torch", "onnxruntime", "litert", "tensorrt"]
    with pytest.raises(DeepLabEdgeError, match="unknown model file type"):
        backend_for("model.h5")
    with pytest.raises(DeepLabEdgeError, match="cannot run on the onnxruntime backend"):
        open_runner(imported[0], backend="onnxruntime")
    with pytest.raises(DeepLabEdgeError, match="--input-size cannot change"):
        open_runner(shared["tflite"], input_size=257)
    with pytest.raises(DeepLabEdgeError, match="precision is fixed"):
        open_runner(shared["tflite"], precision="fp16")
    with pytest.raises(DeepLabEdgeError, match="unknown backend"):
        open_runner(imported[0], backend="tvm")
    r = open_runner(imported[0], input_size=250)  # not k x 16 + 1 for imported TF weights: warned, not refused
    assert r.preprocess.size == 250 and "k x 16 + 1" in r.info["warnings"][0]


def test_triton_availability_is_one_rule(monkeypatch):
    from deeplab_edge.kernels.device import triton_unavailable

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_unavailable("cpu") is None
    assert "too slow to time" in triton_unavailable("cpu", timing=True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "need a CUDA GPU" in triton_unavailable("cpu")


def test_openvino_runs_the_fp32_export_and_the_qdq_model_in_int8(shared, imported, tmp_path):
    """OpenVINO (CPU plugin) against ONNX Runtime on the same files and a real VOC crop: the FP32 export's logits
    match ONNX Runtime's; the TensorRT QDQ model, unchanged, runs with int8 nodes in OpenVINO's runtime graph (read
    back from it). With 7-bit weights (calibrate --weight-bits 7) it labels nearly every pixel as ONNX Runtime's exact
    fake-quant emulation of the same file does, on any x86 CPU: with TensorRT's 8-bit weights an x86 CPU without VNNI
    saturates int16 pair sums (measured here on an AVX2-only EPYC: 83% of the pixels of this crop), and the runner
    says so where that can happen."""
    pytest.importorskip("openvino")
    from deeplab_edge.calibration.workflow import CalibrationConfig, calibrate
    from deeplab_edge.checkpoint import load_checkpoint
    from deeplab_edge.data import open_dataset
    from deeplab_edge.export import export_onnx
    from deeplab_edge.hostinfo import int8_saturates
    from deeplab_edge.runtime import open_runner

    voc = open_dataset(shared["voc"])
    image = voc.load(0)[1]
    fp32 = tmp_path / "m.onnx"
    export_onnx(load_checkpoint(imported[0]), fp32, [image], input_size=129)
    calibrate(fp32, shared["voc"], tmp_path / "cal", CalibrationConfig(num=2, method="minmax", cpu_int8=False))
    calibrate(fp32, shared["voc"], tmp_path / "cal7", CalibrationConfig(num=2, method="minmax", cpu_int8=False,
                                                                        weight_bits=7))
    x = open_runner(fp32).preprocess(image)[0][None]
    ref = open_runner(fp32, backend="onnxruntime")(x)
    ov32 = open_runner(fp32, backend="openvino", threads=1)
    got = ov32(x)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=2e-3, rtol=1e-3)
    assert ov32.info["precision_hint"] == "f32" and ov32.info["threads"] == 1
    assert set(ov32.runtime_precisions) == {"f32"}, ov32.runtime_precisions
    qdq = tmp_path / "cal" / "model_qdq.onnx"
    ov8 = open_runner(qdq, backend="openvino")
    int8_nodes = sum(n for p, n in ov8.runtime_precisions.items() if p in ("i8", "u8"))
    assert int8_nodes > 0, ov8.runtime_precisions
    assert (ov8.info["int8_saturation"] is not None) == int8_saturates()
    qdq7 = tmp_path / "cal7" / "model_qdq.onnx"
    ov7 = open_runner(qdq7, backend="openvino")
    assert sum(n for p, n in ov7.runtime_precisions.items() if p in ("i8", "u8")) == int8_nodes
    assert ov7.info["int8_saturation"] is None
    emulated = open_runner(qdq7, backend="onnxruntime")(x).argmax(1)
    assert (ov7(x).argmax(1) == emulated).float().mean() > 0.97
    with pytest.raises(DeepLabEdgeError, match="precision is fixed"):
        open_runner(fp32, backend="onnxruntime", precision="bf16")
    with pytest.raises(DeepLabEdgeError, match="cannot run on the openvino backend"):
        open_runner(imported[0], backend="openvino")
