"""Quantization-aware training: the fake quantization against a manual reference and ONNX Runtime's
QuantizeLinear/DequantizeLinear, and the QDQ export against the fake-quant model it came from
(the real CamVid model, real frames)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from PIL import Image

from deeplab_edge.calibration.qat import (FakeQuant, QATPlan, conv_bn_pairs, fake_quant_act, fake_quant_weight,
                                          onnx_conv_modules, ptq_ranges, qdq_from_model, residual_blocks, skip_tensors)


def _ort_qdq(x: np.ndarray, scale: np.ndarray, axis: int | None = None) -> np.ndarray:
    import onnxruntime as ort

    kw = {} if axis is None else {"axis": axis}
    zero = np.zeros(scale.shape, np.int8) if scale.ndim else np.array(0, np.int8)
    g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **kw),
                           helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw)], "q",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(scale.astype(np.float32), "s"), numpy_helper.from_array(zero, "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_activation_fake_quant_is_quantizelinear_with_a_straight_through_gradient():
    amax = 2.5
    s = np.float32(amax / 127)
    ties = (np.arange(-130, 130) + 0.5).astype(np.float32) * s  # exactly half-way: round half to even
    x = np.concatenate([ties, np.random.default_rng(0).normal(scale=2, size=2000).astype(np.float32), np.float32([-9, 9])])
    with torch.no_grad():  # validation and export checks: QuantizeLinear's own division, exactly
        y = fake_quant_act(torch.from_numpy(x), amax)
    torch.testing.assert_close(y, torch.from_numpy(_ort_qdq(x, np.array(s))), rtol=0, atol=0)
    # manual: round half to even, saturate to [-128, 127]
    manual = np.clip(np.round(x / s), -128, 127) * s
    np.testing.assert_array_equal(y.numpy(), manual.astype(np.float32))
    # training: the fused op, equal but for exact ties (x * (1/s) vs x / s), straight-through gradient
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = fake_quant_act(xt, amax)
    n = len(ties)
    assert torch.equal(yt.detach()[n:], y[n:]) and int((yt.detach()[:n] != y[:n]).sum()) <= n // 2
    yt.sum().backward()
    inside = (np.round(x / s) >= -128) & (np.round(x / s) <= 127)
    np.testing.assert_array_equal(xt.grad.numpy()[n:], inside[n:].astype(np.float32))
    assert not inside[n:].all() and inside[n:].any()


def test_weight_fake_quant_is_per_channel_symmetric():
    w = torch.randn(5, 3, 3, 3) * torch.tensor([1e-3, 0.1, 1, 10, 0]).reshape(-1, 1, 1, 1)
    got = fake_quant_weight(w)
    s = np.abs(w.numpy().reshape(5, -1)).max(axis=1) / 127
    s = np.where(s > 0, s, 1).astype(np.float32)
    manual = np.clip(np.round(w.numpy() / s[:, None, None, None]), -127, 127) * s[:, None, None, None]
    np.testing.assert_allclose(got.numpy(), manual, rtol=1e-6, atol=0)
    np.testing.assert_allclose(got.numpy(), _ort_qdq(w.numpy(), s, axis=0), rtol=1e-6, atol=0)
    assert float((got - w).abs().max()) > 0  # it did quantize


@pytest.fixture(scope="module")
def camvid_model(shared):
    from pathlib import Path

    from deeplab_edge.checkpoint import load_checkpoint

    path = Path(__file__).resolve().parents[1] / "weights" / "deeplabv3_mnv2_camvid.pt"
    loaded = load_checkpoint(path)
    cam = shared["camvid"] / "images"
    images = [np.asarray(Image.open(p).convert("RGB").resize((97, 73), Image.BILINEAR))
              for p in sorted(cam.iterdir())[:3]]
    return loaded, images


def test_qat_export_is_the_fake_quant_model(camvid_model, tmp_path):
    """What QAT trains (PyTorch fake quantization, batch norm folded) and the QDQ ONNX it writes, run by
    ONNX Runtime with graph optimizations off, compute the same thing: Conv by Conv on the same input
    to within float rounding, and end to end up to the rounding flips that float summation order
    causes (a value a hair from a rounding boundary lands on the other side, and the step
    propagates), far closer than either is to the FP32 model."""
    from deeplab_edge.calibration.collect import _session_with_outputs
    from deeplab_edge.data.preprocess import Preprocess
    from deeplab_edge.runtime.onnx import OnnxRunner

    loaded, images = camvid_model
    model, meta = loaded.model, loaded.meta
    ranges, plan = ptq_ranges(model, meta, images[:2], "minmax", tmp_path)
    pairs = plan.pairs
    assert len(pairs) == 55 and sum(b is not None for _, b in pairs) == 54  # the classifier has no batch norm
    assert len(plan.blocks) == 10 and all(k == "input" for _, k in plan.blocks)  # MobileNetV2's residuals
    pre = Preprocess.from_dict(meta["preprocess"])
    x = pre(images[2])[0][None]  # not a calibration image: values beyond the thresholds saturate
    qdq_from_model(model, meta, ranges, plan, images[:2], tmp_path / "q.onnx", tmp_path)
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) == 55  # one per Conv input tensor
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    adds = [n for n in q.graph.node if n.op_type == "Add"]
    # the float tensor each Conv's QDQ pair reads, and the Conv's output, from ONNX Runtime
    q_in = {n.output[0]: n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    dq_in = {n.output[0]: n.input[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    skip = {a.name: next(q_in[dq_in[i]] for i in a.input if i in dq_in) for a in adds if any(i in dq_in for i in a.input)}
    assert len(skip) == 10  # every residual Add reads its skip input through the pair
    wanted = [q_in[dq_in[n.input[0]]] for n in convs] + [n.output[0] for n in convs] + [a.output[0] for a in adds]
    sess = _session_with_outputs(q, wanted)
    res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: x.numpy()})))
    mods = dict(model.named_modules())
    with torch.no_grad():
        fp32 = model(x)
        fq = FakeQuant(model, plan, ranges)
        for node, (c, _) in zip(convs, pairs):  # Conv by Conv, each on ONNX Runtime's own float input
            got = mods[c](torch.from_numpy(res[q_in[dq_in[node.input[0]]]]))
            ref = torch.from_numpy(res[node.output[0]])
            assert float((got - ref).abs().max()) <= 1e-5 * max(1.0, float(ref.abs().max())), c
        # residual blocks likewise, on ONNX Runtime's float block input: their inner Convs requantize, so
        # a few values a hair from a rounding boundary may land one step apart; with the skip input left in
        # float (as before TensorRT's fusion rule was applied) most values are off
        blocks = list(zip([a for a in adds if a.name in skip], plan.blocks))
        for add, (b, _) in blocks:
            got = mods[b](torch.from_numpy(res[skip[add.name]]))
            ref = torch.from_numpy(res[add.output[0]])
            assert float(((got - ref).abs() > 1e-4 * float(ref.abs().max())).float().mean()) < 0.01, b
        fake = model(x)
        fq.remove()
        fq = FakeQuant(model, QATPlan(pairs, []), {c: ranges[c] for c, _ in pairs})
        for add, (b, _) in blocks:
            got = mods[b](torch.from_numpy(res[skip[add.name]]))
            ref = torch.from_numpy(res[add.output[0]])
            assert float(((got - ref).abs() > 1e-4 * float(ref.abs().max())).float().mean()) > 0.2, b
        fq.remove()
        assert torch.equal(model(x), fp32)  # removed: the FP32 model again
    got = OnnxRunner(tmp_path / "q.onnx", optimize=False)(x)
    d_qdq, d_fp32 = float((got - fake).abs().mean()), float((fp32 - fake).abs().mean())
    assert d_qdq < 0.35 * d_fp32, (d_qdq, d_fp32)
    assert float((got.argmax(1) == fake.argmax(1)).float().mean()) >= 0.99


def test_conv_matching_checks_the_folded_weights(camvid_model, tmp_path):
    loaded, images = camvid_model
    model = loaded.model
    pre_x = torch.zeros(1, 3, 40, 56)
    pairs = conv_bn_pairs(model, pre_x)
    from deeplab_edge.calibration.qat import _export

    m = _export(model, loaded.meta, images[:1], tmp_path / "f.onnx")
    assert len(onnx_conv_modules(model, m, pairs)) == 55  # Conv input tensors
    plan = QATPlan(pairs, residual_blocks(model, pre_x))
    assert len(skip_tensors(m, plan)) == 10
    with pytest.raises(ValueError, match="cannot match"):  # a block matched to another block's Add
        skip_tensors(m, QATPlan(pairs, plan.blocks[1:] + plan.blocks[:1]))
    wrong = [(c, None) if i == 3 else (c, b) for i, (c, b) in enumerate(pairs)]  # a batch norm not folded
    with pytest.raises(ValueError, match="folded weights"):
        onnx_conv_modules(model, m, wrong)
    swapped = pairs[:5] + [pairs[6], pairs[5]] + pairs[7:]
    with pytest.raises(ValueError, match="folded weights"):
        onnx_conv_modules(model, m, swapped)
