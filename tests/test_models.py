import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from deeplab_edge.models import MODELS, count_flops, count_params, get_model
from deeplab_edge.models.heads import ASPPSum
from deeplab_edge.testing import TOLERANCES, assert_close, deterministic_state_dict

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "torchvision_keys.json").read_text())


def probe_input() -> torch.Tensor:
    # the same input tests/fixtures/make_torchvision_fixture.py fed torchvision
    h, w = FIXTURE["input_hw"]
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([torch.sin(xx * 0.1 + c) * torch.cos(yy * 0.07 - c) for c in range(3)])[None].float()


@pytest.mark.parametrize("name", sorted(FIXTURE["models"]))
def test_torchvision_parameter_names_and_shapes(name):
    """Key list and shapes recorded from torchvision 0.29 itself; strict load must work."""
    arch, aux = name.split("+")[0], name.endswith("+aux")
    model = get_model(arch, num_classes=21, aux_loss=aux)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = FIXTURE["models"][name]["keys"]
    assert list(ours) == list(theirs)
    assert ours == theirs
    model.load_state_dict(deterministic_state_dict(theirs), strict=True)


@pytest.mark.parametrize("name", [k for k in sorted(FIXTURE["models"]) if "logits_every8" in FIXTURE["models"][k]])
def test_same_logits_as_torchvision(name):
    """Same weights, same input -> torchvision's logits (checks dilation, eps, SE, hard-swish, resize)."""
    arch = name.split("+")[0]
    entry = FIXTURE["models"][name]
    model = get_model(arch, num_classes=21, aux_loss=True).eval()
    model.load_state_dict(deterministic_state_dict(entry["keys"]), strict=True)
    with torch.no_grad():
        ours = model(probe_input())[0, :, ::8, ::8]
    atol, rtol = TOLERANCES[torch.float32]
    assert_close(ours, torch.tensor(entry["logits_every8"]), atol=atol, rtol=rtol, what=name)


def test_param_counts_match_torchvision_shapes():
    for name, entry in FIXTURE["models"].items():
        if name.endswith("+aux"):
            continue
        expected = sum(torch.Size(s).numel() for k, s in entry["keys"].items()
                       if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        with torch.device("meta"):
            model = get_model(name)
        assert count_params(model) == expected, name


# Every variant, small input: output shape, finite values, FLOPs against torch's own counter.
@pytest.mark.parametrize("name", list(MODELS))
def test_forward_shape_and_flops_small(name):
    model = get_model(name, num_classes=5).eval()
    x = torch.randn(2, 3, 65, 97)  # batch 2, odd non-square size
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        y = model(x)
    assert y.shape == (2, 5, 65, 97)
    assert torch.isfinite(y).all()
    assert count_flops(model, 65, 97, batch=2) == fc.get_total_flops()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_forward_513(name):
    model = get_model(name, num_classes=21).eval()
    with torch.inference_mode():
        y = model(torch.randn(1, 3, 513, 513))
    assert y.shape == (1, 21, 513, 513)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name,os_", [("deeplabv3_resnet50", 8), ("deeplabv3_resnet50", 16),
                                      ("deeplabv3_mobilenet_v2", 8), ("deeplabv3_mobilenet_v2", 16),
                                      ("deeplabv3_mobilenet_v2", 32), ("deeplabv2_resnet101", 8)])
def test_output_stride(name, os_):
    with torch.device("meta"):
        model = get_model(name, output_stride=os_)
        feats = model.backbone(torch.empty(1, 3, 513, 513))
    assert feats["out"].shape[-1] == (513 - 1) // os_ + 1
    assert model.backbone.output_stride == os_


def test_default_aspp_rates_follow_output_stride():
    assert get_model("deeplabv3_resnet50", output_stride=16).config["aspp_rates"] == [6, 12, 18]
    assert get_model("deeplabv3_resnet50", output_stride=8).config["aspp_rates"] == [12, 24, 36]
    assert get_model("deeplabv2_resnet101").config["aspp_rates"] == [6, 12, 18, 24]
    assert get_model("deeplabv3_mobilenet_v2").config["aspp_rates"] == []


def test_aspp_without_atrous_branches_has_only_1x1_and_pooling():
    aspp = get_model("deeplabv3_mobilenet_v2").classifier[0]
    assert len(aspp.convs) == 2 and aspp.project[0].in_channels == 512


def test_v2_aspp_sums_branch_logits():
    head = ASPPSum(8, 3, (1, 2, 5)).eval()
    x = torch.randn(1, 8, 9, 11, dtype=torch.float64)
    head = head.double()
    ref = sum(F.conv2d(x, c.weight, c.bias, padding=r, dilation=r) for c, r in zip(head.convs, (1, 2, 5)))
    torch.testing.assert_close(head(x), ref)


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="output_stride"):
        get_model("deeplabv3_resnet50", output_stride=4)
    with pytest.raises(ValueError, match="num_classes"):
        get_model("deeplabv3_resnet50", num_classes=0)
    with pytest.raises(ValueError, match="expected one of"):
        get_model("deeplabv9")
    with pytest.raises(ValueError, match="at least one ASPP rate"):
        get_model("deeplabv2_resnet101", aspp_rates=())


# ----------------------------------------------------------------------------- output stride at load time

@pytest.mark.parametrize("name,old,new", [("deeplabv3_mobilenet_v2", 16, 8), ("deeplabv3_mobilenet_v2", 32, 8),
                                          ("deeplabv3_resnet50", 16, 8), ("deeplabv2_resnet101", 8, 16)])
def test_restrided_trunk_is_the_atrous_identity(name, old, new):
    """The algorithme a trous: a stride-2 layer made stride 1, with every later 3x3 dilated by 2,
    computes the same values on the even grid. So the restrided trunk's features, subsampled by
    new/old, equal the original trunk's exactly (up to float summation order). Independent of the
    planner: it checks what the network computes, not the block table."""
    from deeplab_edge.models import restride_config

    a = get_model(name, num_classes=5, output_stride=old).eval()
    g = torch.Generator().manual_seed(0)
    for m in a.modules():  # weights that keep activations near unit scale through every layer
        if isinstance(m, torch.nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in) ** 0.5
        elif isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=g)
            m.bias.data = 0.1 * torch.randn(m.bias.shape, generator=g)
    config = restride_config(a.config, new)
    b = get_model(config.pop("arch"), **config).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        fa, fb = a.backbone(x)["out"], b.backbone(x)["out"]
    assert fa.abs().mean() > 1e-3 and fa.std() > 1e-3  # features that depend on the input
    fine, coarse = (fb, fa) if new < old else (fa, fb)
    step = max(old, new) // min(old, new)
    assert fine.shape[-1] == (coarse.shape[-1] - 1) * step + 1
    err = (fine[..., ::step, ::step] - coarse).norm() / coarse.norm()
    assert err < 1e-5, err


def test_restride_scales_aspp_rates_as_deeplab_v3():
    """Chen et al. 2017 (DeepLab-v3), Sec. 4.1: rates (6, 12, 18) at output stride 16 are doubled at 8."""
    from deeplab_edge.models import restride_config

    cfg = get_model("deeplabv3_resnet50", num_classes=3, output_stride=16).config
    assert cfg["aspp_rates"] == [6, 12, 18]
    assert restride_config(cfg, 8)["aspp_rates"] == [12, 24, 36]
    assert restride_config(restride_config(cfg, 8), 16) == cfg


def test_restride_explicit_blocks_match_the_mobilenet_table():
    """Blocks read from a graph (the TFLite importer's explicit list) restride like the builder's own plan."""
    from deeplab_edge.models import restride_config
    from deeplab_edge.models.mobilenet import mobilenet_v2_blocks

    _, b16 = mobilenet_v2_blocks(1.0, 16)
    cfg = get_model("deeplabv3_mobilenet_v2", num_classes=3, stem=32,
                    blocks=[[b.cin, b.hidden, b.cout, b.stride, b.dilation] for b in b16]).config
    _, b8 = mobilenet_v2_blocks(1.0, 8)
    assert restride_config(cfg, 8)["blocks"] == [[b.cin, b.hidden, b.cout, b.stride, b.dilation] for b in b8]
    # the stride-2 block at output stride 8 keeps rate 1; rates 2 and then 4 follow (TF's mobilenet plan)
    assert [(b.stride, b.dilation) for b in b8][6:8] == [(1, 1), (1, 2)]
    assert [b.dilation for b in b8][-3:] == [4, 4, 4]


def test_restride_refusals():
    from deeplab_edge.models import OUTPUT_STRIDES, restride_config

    assert set(OUTPUT_STRIDES) == set(MODELS)  # every architecture says which strides it is built for

    with pytest.raises(ValueError, match="output stride 16, not 8"):
        restride_config(get_model("deeplabv3_mobilenet_v3_large", num_classes=3).config, 8)
    cfg = get_model("deeplabv2_resnet101", num_classes=3).config  # rates 6..24 at output stride 8
    with pytest.raises(ValueError, match="not 32"):
        restride_config(cfg, 32)
    with pytest.raises(ValueError, match="no whole equivalent"):
        restride_config(dict(cfg, aspp_rates=[3, 5]), 16)


# ----------------------------------------------------------------------------- the seed's heads on MobileNetV2

@pytest.mark.parametrize("name, rates", [("deeplab_largefov_mobilenet_v2", (12,)),
                                         ("deeplabv2_mobilenet_v2", (6, 12, 18, 24))])
def test_summed_logit_heads_on_mobilenet_v2_follow_their_definitions(name, rates):
    """LargeFOV (one 3x3 atrous conv, rate 12) and DeepLab-v2's ASPP-L (one per rate, 6/12/18/24): each branch goes
    from the trunk's 320 channels straight to the class logits, with its rate as padding and dilation, and the
    logits are the sum of the branches (computed here with F.conv2d in float64); the parameter count is the
    trunk's plus 320 * 9 * C + C per branch."""
    model = get_model(name, num_classes=11).eval().double()
    head = model.classifier
    assert isinstance(head, ASPPSum) and head.rates == rates and model.config["aspp_rates"] == list(rates)
    for conv, r in zip(head.convs, rates):
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (320, 11, (3, 3))
        assert conv.dilation == (r, r) and conv.padding == (r, r) and conv.bias is not None
    x = torch.randn(1, 320, 7, 9, dtype=torch.float64)
    ref = sum(F.conv2d(x, c.weight, c.bias, padding=r, dilation=r) for c, r in zip(head.convs, rates))
    torch.testing.assert_close(head(x), ref)
    trunk = count_params(get_model("deeplabv3_mobilenet_v2", num_classes=11).backbone)
    assert count_params(model) == trunk + len(rates) * (320 * 9 * 11 + 11)
    assert model(torch.zeros(1, 3, 33, 47, dtype=torch.float64)).shape == (1, 11, 33, 47)


def test_separable_v3plus_head_follows_its_definition():
    """DeepLab-v3+ with atrous separable convolutions (ECCV 2018, Sec. 3.1): each ASPP atrous branch and both
    decoder convs are a depthwise 3x3 (at the branch's rate) + BN + ReLU then a pointwise 1x1 + BN + ReLU; a branch
    equals that composition written with F.conv2d / F.batch_norm in float64; the parameter count is the plain
    head's with every 3x3 conv cin->cout (9 cin cout weights) replaced by 9 cin + cin cout weights and one more BN
    (2 cin); the config records it, and a checkpoint's config without the key builds the plain head."""
    sep = get_model("deeplabv3plus_mobilenet_v2", num_classes=11, separable=True).eval().double()
    plain = get_model("deeplabv3plus_mobilenet_v2", num_classes=11).eval()
    assert sep.config["separable"] is True and "separable" not in plain.config
    aspp = sep.classifier.aspp
    for branch, r in zip(aspp.convs[1:4], (6, 12, 18)):
        dw, bn1, _, pw, bn2, _ = branch
        assert dw.groups == dw.in_channels == 320 and dw.dilation == (r, r) and dw.padding == (r, r)
        assert pw.kernel_size == (1, 1) and (pw.in_channels, pw.out_channels) == (320, 256)
        for bn in (bn1, bn2):  # non-trivial statistics, so that the BN's place matters
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
        x = torch.randn(1, 320, 6, 7, dtype=torch.float64)
        ref = F.conv2d(x, dw.weight, padding=r, dilation=r, groups=320)
        ref = F.relu(F.batch_norm(ref, bn1.running_mean, bn1.running_var, bn1.weight, bn1.bias, eps=bn1.eps))
        ref = F.relu(F.batch_norm(F.conv2d(ref, pw.weight), bn2.running_mean, bn2.running_var, bn2.weight, bn2.bias,
                                  eps=bn2.eps))
        torch.testing.assert_close(branch(x), ref)
    convs = [(320, 256)] * 3 + [(304, 256), (256, 256)]  # 3 atrous branches, 2 decoder convs
    saved = sum(9 * ci * co - (9 * ci + ci * co + 2 * ci) for ci, co in convs)
    assert count_params(sep) == count_params(plain) - saved
    assert sep(torch.zeros(1, 3, 65, 49, dtype=torch.float64)).shape == (1, 11, 65, 49)


def test_summed_logit_heads_restride_their_rates():
    from deeplab_edge.models import restride_config

    config = get_model("deeplabv2_mobilenet_v2", num_classes=3).config
    assert restride_config(config, 8)["aspp_rates"] == [12, 24, 36, 48]
    assert get_model("deeplab_largefov_mobilenet_v2", num_classes=3, output_stride=8).backbone.output_stride == 8


def test_a_new_head_on_a_checkpoints_trunk_keeps_every_trunk_weight(imported):
    """with_trunk: the imported VOC model's backbone copied exactly (its explicit blocks carried over), the head
    built new with its own rates; a trunk of another shape is refused."""
    from deeplab_edge.models import with_trunk

    source = imported[1]
    src = source.state_dict()
    for name, options in (("deeplabv2_mobilenet_v2", {}), ("deeplabv3_mobilenet_v2", {"aspp_rates": [6, 12, 18]}),
                          ("deeplabv3plus_mobilenet_v2", {})):
        model = with_trunk(source, name, 11, **options)
        sd = model.state_dict()
        trunk = [k for k in sd if k.startswith("backbone.")]
        assert trunk == [k for k in src if k.startswith("backbone.")]
        assert all(torch.equal(sd[k], src[k]) for k in trunk), name
        assert model.num_classes == 11 and model.config["arch"] == name
    assert with_trunk(source, "deeplabv3_mobilenet_v2", 11, aspp_rates=[6, 12, 18]).classifier[0].rates == (6, 12, 18)
    with pytest.raises(ValueError, match="trunk"):
        with_trunk(source, "deeplabv3_mobilenet_v3_large", 11)
