import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_edge.data.preprocess import Preprocess


def test_long_side_resize_and_pad_geometry():
    pre = Preprocess(size=64, mean=[128] * 3, std=[128] * 3)
    img = np.random.default_rng(0).integers(0, 256, (30, 48, 3), dtype=np.uint8)
    x, g = pre(img)
    assert x.shape == (3, 64, 64) and g.orig_hw == (30, 48) and g.resized_hw == (40, 64) and g.input_hw == (64, 64)
    # content: PIL bilinear resize, normalised (x - 128) / 128; padding is the mean -> exactly 0
    ref = np.asarray(Image.fromarray(img).resize((64, 40), Image.BILINEAR)).astype(np.float32)
    torch.testing.assert_close(x[:, :40].permute(1, 2, 0), torch.from_numpy((ref - 128) / 128))
    assert torch.all(x[:, 40:] == 0)


def test_restore_labels_crop_and_nearest():
    pre = Preprocess(size=8)
    img = np.zeros((4, 6, 3), np.uint8)
    _, g = pre(img)
    assert g.resized_hw == (5, 8)
    labels = np.full((8, 8), 9, np.uint8)
    labels[:5, :8] = np.arange(8)[None].repeat(5, 0)
    back = pre.restore_labels(labels, g)
    assert back.shape == (4, 6) and 9 not in back  # padding rows gone
    ref = np.asarray(Image.fromarray(labels[:5]).resize((6, 4), Image.NEAREST))
    assert (back == ref).all()


def test_restore_logits_bilinear():
    pre = Preprocess(size=16)
    _, g = pre(np.zeros((10, 16, 3), np.uint8))
    logits = torch.randn(3, 16, 16)
    assert torch.equal(pre.restore_logits(logits, g), logits[:, :10, :16])


def test_no_resize_mode_is_identity_geometry():
    pre = Preprocess(size=None, resize="none", pad=False)
    x, g = pre(np.full((7, 9, 3), 255, np.uint8))
    assert x.shape == (3, 7, 9) and g.input_hw == g.orig_hw == (7, 9)
    assert torch.allclose(x, torch.full_like(x, 1.0))


def test_from_dict_roundtrip_and_validation():
    pre = Preprocess(size=321, mean=[1, 2, 3], std=[4, 5, 6], pad_value=0)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    with pytest.raises(ValueError, match="resize"):
        Preprocess(resize="crop")
    with pytest.raises(ValueError, match="uint8 RGB"):
        Preprocess()(np.zeros((4, 4), np.uint8))
