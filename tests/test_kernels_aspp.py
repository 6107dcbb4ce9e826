"""Fused ASPP Triton kernels against F.conv2d references, run by TRITON_INTERPRET=1 on the CPU.

References are computed in float64 from the same dtype-rounded inputs and weights; the
tolerance table is ``deeplab_edge.testing.KERNEL_TOLERANCES``.
"""

import pytest
import torch
from torch import nn

from deeplab_edge.errors import KernelUnavailableError
from deeplab_edge.kernels import aspp as A
from deeplab_edge.models import get_model
from deeplab_edge.models.heads import ASPP, ASPPSum
from deeplab_edge.testing import KERNEL_TOLERANCES, assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

SHAPES = [  # batch, C_in, H, W, rates, C_out
    (1, 16, 1, 1, (6, 12, 18, 24), 21),  # minimal 1x1 map: every off-centre tap is wholly in the padding
    (1, 24, 17, 23, (6, 12, 18, 24), 21),  # prime H, W; rates 18 and 24 >= H (taps dropped on the host)
    (2, 8, 9, 5, (1, 2, 3), 32),  # C_in < 16 (tl.dot needs K >= 16: masked), batch 2, small rates
    (1, 72, 13, 11, (6, 12, 18), 80),  # C_in and C_out not multiples of the blocks: partial K and N tiles
]


def _randomize_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _weights(n, cout, cin, k):
    return [torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5 for _ in range(n)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,cin,h,w,rates,cout", SHAPES)
def test_v2_sum_matches_conv2d_reference(batch, cin, h, w, rates, cout, dtype):
    x = torch.randn(batch, cin, h, w).to(dtype)
    ws = [wt.to(dtype) for wt in _weights(len(rates), cout, cin, 3)]
    bs = [torch.randn(cout) for _ in rates]
    out = A.aspp_sum(x, A.pack_weights(ws), torch.stack(bs).sum(0), rates)
    ref = A.aspp_sum_reference(x.double(), [wt.double() for wt in ws], [b.double() for b in bs], rates)
    atol, rtol = KERNEL_TOLERANCES[dtype]
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close(out.double(), ref, atol=atol, rtol=rtol, what=f"v2 sum {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,cin,h,w,rates,cout", SHAPES)
def test_v3_branches_match_conv2d_reference(batch, cin, h, w, rates, cout, dtype):
    x = torch.randn(batch, cin, h, w).to(dtype)
    ws = [wt.to(dtype) for wt in _weights(1, cout, cin, 1) + _weights(len(rates), cout, cin, 3)]
    bs = [torch.randn(cout) for _ in ws]
    out = A.aspp_branches(x, A.pack_weights(ws), torch.cat(bs), rates, cout)
    ref = A.aspp_branches_reference(x.double(), [wt.double() for wt in ws], [b.double() for b in bs], rates)
    atol, rtol = KERNEL_TOLERANCES[dtype]
    assert out.shape == (batch, (1 + len(rates)) * cout, h, w)
    assert_close(out.double(), ref, atol=atol, rtol=rtol, what=f"v3 branches {dtype}")


def test_channels_last_and_nchw_inputs_agree():
    x = torch.randn(2, 24, 17, 23)
    rates = (6, 12, 18)
    ws = _weights(1, 32, 24, 1) + _weights(3, 32, 24, 3)
    bs = [torch.randn(32) for _ in ws]
    packed, bias = A.pack_weights(ws), torch.cat(bs)
    ref = A.aspp_branches_reference(x.double(), [wt.double() for wt in ws], [b.double() for b in bs], rates)
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, :, :].transpose(2, 3).transpose(2, 3)):
        assert_close(A.aspp_branches(inp, packed, bias, rates, 32).double(), ref, atol=1e-5, rtol=1e-5,
                     what="memory format")


def test_small_blocks_cover_every_tile_path(monkeypatch):
    """Blocks of 16: several M tiles per image (and a partial last one), several N and K
    tiles, and a batch whose images each start a new tile."""
    monkeypatch.setattr(A, "INTERPRET_CONFIG", {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16})
    x = torch.randn(2, 40, 7, 9)
    rates = (2, 5)
    ws = _weights(1, 40, 40, 1) + _weights(2, 40, 40, 3)
    bs = [torch.randn(40) for _ in ws]
    out = A.aspp_branches(x, A.pack_weights(ws), torch.cat(bs), rates, 40)
    ref = A.aspp_branches_reference(x.double(), [wt.double() for wt in ws], [b.double() for b in bs], rates)
    assert_close(out.double(), ref, atol=1e-5, rtol=1e-5, what="16x16x16 blocks")


def test_tap_table_drops_taps_wholly_in_the_padding():
    # 17 x 23 map. Rate 24 >= both sides: only the centre tap reads real pixels.
    t = A.TapTable.build([(3, 24)], 17, 23, torch.device("cpu"))
    assert (t.tap_dy.tolist(), t.tap_dx.tolist(), t.tap_w.tolist()) == ([0], [0], [4])
    # Rate 18: rows +-18 are outside (H = 17), columns +-18 are inside (W = 23): the middle row stays.
    t = A.TapTable.build([(1, 1), (3, 18)], 17, 23, torch.device("cpu"))
    assert t.group_start.tolist() == [0, 1, 4]
    assert t.tap_dx.tolist() == [0, -18, 0, 18] and t.tap_dy.tolist() == [0, 0, 0, 0]
    assert t.tap_w.tolist() == [0, 1 + 3, 1 + 4, 1 + 5]
    # Sum fusion: one group over all branches' taps.
    t = A.TapTable.build([(3, 1), (3, 2)], 5, 5, torch.device("cpu"), sum_groups=True)
    assert t.group_start.tolist() == [0, 18] and t.num_taps == 18


@pytest.mark.parametrize("rates,pooling", [((6, 12, 18), True), ((6, 12, 18), False), ((), True)],
                         ids=["v3", "v3-no-pooling", "mobilenet-v2-head"])
def test_fused_aspp_module_matches_original(rates, pooling):
    aspp = ASPP(40, rates, cout=48, image_pooling=pooling)
    _randomize_bn(aspp)
    aspp.eval()
    x = torch.randn(2, 40, 13, 17)
    fused = A.FusedASPP(aspp)
    with torch.no_grad():
        ref = aspp.double()(x.double())
    assert_close(fused(x).double(), ref, atol=1e-5, rtol=1e-5, what="fused ASPP")


def test_fused_aspp_sum_module_matches_original():
    aspp = ASPPSum(24, 21).eval()
    x = torch.randn(1, 24, 17, 23)
    with torch.no_grad():
        ref = aspp.double()(x.double())
    assert_close(A.FusedASPPSum(aspp.float())(x).double(), ref, atol=1e-5, rtol=1e-5, what="fused ASPP sum")


@pytest.mark.parametrize("arch,kind", [("deeplabv2_resnet101", A.FusedASPPSum),
                                       ("deeplabv3plus_mobilenet_v2", A.FusedASPP)])
def test_fuse_aspp_swaps_every_head(arch, kind):
    model = get_model(arch, num_classes=5)
    A.fuse_aspp(model)
    assert not model.training
    found = [m for m in model.modules() if isinstance(m, (ASPP, ASPPSum, A.FusedASPP, A.FusedASPPSum))]
    assert found and all(isinstance(m, kind) for m in found)
    with pytest.raises(ValueError, match="ASPP"):
        A.fuse_aspp(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_refuses_bad_inputs_and_missing_gpu(monkeypatch):
    ws = A.pack_weights(_weights(1, 16, 8, 1))
    with pytest.raises(ValueError, match="expected a 4-D"):
        A.aspp_branches(torch.randn(8, 5, 5), ws, torch.zeros(16), (), 16)
    with pytest.raises(ValueError, match="expected fp32, fp16 or bf16"):
        A.aspp_branches(torch.zeros(1, 8, 5, 5, dtype=torch.float64), ws, torch.zeros(16), (), 16)
    with pytest.raises(ValueError, match="expected weight"):
        A.aspp_branches(torch.randn(1, 9, 5, 5), ws, torch.zeros(16), (), 16)
    with pytest.raises(ValueError, match="expected weight in the input's dtype torch.float16, got torch.float32"):
        A.aspp_branches(torch.randn(1, 8, 5, 5).half(), ws, torch.zeros(16), (), 16)  # never cast per call
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelUnavailableError, match="need a CUDA GPU"):
        A.aspp_branches(torch.randn(1, 8, 5, 5), ws, torch.zeros(16), (), 16)


# ----------------------------------------------------------------------------- real images

def _voc_batches(shared, imported, n):
    from deeplab_edge.data import open_dataset
    from deeplab_edge.data.preprocess import Preprocess

    ds = open_dataset(shared["voc"])
    pre = Preprocess.from_dict(imported[2]["preprocess"])
    return [pre(ds.load(i)[1])[0][None] for i in range(n)]


def _agreement(model, fused, batches):
    same = total = 0
    with torch.no_grad():
        for x in batches:
            a, b = model(x).argmax(1), fused(x).argmax(1)
            same += (a == b).sum().item()
            total += a.numel()
    return same / total


@pytest.mark.slow
def test_fused_pretrained_mobilenet_v2_agrees_on_voc(shared, imported):
    import copy

    model = imported[1].eval()
    fused = A.fuse_aspp(copy.deepcopy(model))
    assert isinstance(fused.classifier[0], A.FusedASPP)
    assert _agreement(model, fused, _voc_batches(shared, imported, 9)) >= 0.999


@pytest.mark.slow
def test_fused_atrous_head_agrees_on_voc(shared, imported):
    """All atrous branches (rates 6/12/18 at OS 16) on the real MobileNetV2 features; the
    head's weights are random (equivalence check, not accuracy)."""
    import copy

    from deeplab_edge.models.deeplab import deeplabv3_mobilenet_v2

    cfg = {k: v for k, v in imported[1].config.items() if k not in ("arch", "aspp_rates")}
    model = deeplabv3_mobilenet_v2(**cfg, aspp_rates=(6, 12, 18))
    model.backbone.load_state_dict(imported[1].backbone.state_dict())
    _randomize_bn(model.classifier)
    model.eval()
    fused = A.fuse_aspp(copy.deepcopy(model))
    assert len(fused.classifier[0].rates) == 3
    assert _agreement(model, fused, _voc_batches(shared, imported, 3)) >= 0.999


# ----------------------------------------------------------------------------- casts

@pytest.mark.parametrize("kind", ["v3", "v2"])
def test_biases_keep_their_fp32_values_through_casts(kind):
    """The biases and the image-pooling matrices stay fp32 *with their folded values* through
    ``.half()``, ``.to(bf16)`` and back ``.float()``: bit-equal, not rounded to 16 bits and widened
    back (0.0017 off after bf16 before). The packed weights do follow the cast."""
    if kind == "v3":
        head = ASPP(16, (1, 2), cout=24)
        _randomize_bn(head)
        fused = A.FusedASPP(head.eval())
    else:
        fused = A.FusedASPPSum(ASPPSum(16, 21, (1, 2)).eval())
    names = type(fused)._fp32
    assert names == (("bias",) if kind == "v2" else ("bias", "proj_bias", "pool_weight", "pool_bias",
                                                     "proj_pool_weight"))
    folded = {n: getattr(fused, n).clone() for n in names}
    for cast, weight_dtype in ((lambda m: m.half(), torch.float16), (lambda m: m.to(torch.bfloat16), torch.bfloat16),
                               (lambda m: m.float(), torch.float32), (lambda m: m.to("cpu", torch.float16),
                                                                      torch.float16)):
        cast(fused)
        assert fused.weight.dtype == weight_dtype
        for n in names:
            buf = getattr(fused, n)
            assert buf.dtype == torch.float32 and torch.equal(buf, folded[n]), n
    assert list(fused.state_dict()) == list(dict(fused.named_buffers()))  # buffers keep their order


def test_a_head_fused_after_its_cast_stores_its_weights_in_that_dtype():
    """Fusing a head that is already fp16 folds in fp32 and stores the weights in fp16 once; an
    input of another dtype is refused (as nn.Conv2d does), never cast per call."""
    head = ASPP(16, (1, 2), cout=24)
    _randomize_bn(head)
    fused = A.FusedASPP(head.eval().half())
    assert fused.weight.dtype == fused.proj_weight.dtype == torch.float16
    assert fused.bias.dtype == fused.pool_weight.dtype == torch.float32
    with pytest.raises(ValueError, match="expected weight in the input's dtype torch.float32, got torch.float16"):
        fused(torch.randn(1, 16, 5, 5))
