"""The one evaluation loop: several post-processing options on the same network outputs (bench's
cells) give exactly the confusion matrices counted directly from each option's label maps."""

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_edge.data import open_dataset
from deeplab_edge.data.preprocess import Preprocess
from deeplab_edge.inference import Segmenter, evaluate


class RedRunner:
    """Class 1 where the red channel is bright, else 0 (logits +-1); no resizing, no padding."""

    preprocess = Preprocess.from_dict({"size": None, "resize": "none", "pad": False, "mean": [0.0] * 3,
                                       "std": [1.0] * 3})
    num_classes = 11

    def __call__(self, x):
        red = (x[:, :1] > 128).float()
        out = torch.full((x.shape[0], 11, *x.shape[2:]), -5.0)
        out[:, :2] = torch.cat([1 - red, red], 1) * 2 - 1
        return out


def flip_stage(image, logits):
    """A stand-in post-processing stage: the other of the two classes."""
    return 1 - logits[:2].argmax(0)


def test_evaluate_options_equal_direct_confusion_matrices(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    labels, reds = [], []
    for i in range(3):  # CamVid layout: 11 classes, 11 = void
        img = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
        lab = rng.integers(0, 12, (9, 13), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / "images" / f"f{i}.png")
        Image.fromarray(lab, mode="L").save(tmp_path / "labels" / f"f{i}.png")
        labels.append(lab)
        reds.append((img[..., 0] > 128).astype(np.int64))
    ds = open_dataset(tmp_path)
    res = evaluate(Segmenter(RedRunner()), ds, options={"none": None, "flip": flip_stage})

    def direct(preds):
        m = np.zeros((11, 11), np.int64)
        for p, lab in zip(preds, labels):
            keep = lab != 11
            np.add.at(m, (lab[keep].astype(np.int64), p[keep]), 1)
        return m

    for name, preds in (("none", reds), ("flip", [1 - r for r in reds])):
        tp = np.diag(direct(preds)).astype(float)
        union = direct(preds).sum(0) + direct(preds).sum(1) - tp
        iou = [t / u for t, u in zip(tp, union) if u > 0]
        assert res["options"][name]["miou"] == pytest.approx(np.mean(iou)), name
    assert res["miou"] == res["options"]["none"]["miou"]  # the top level is the first option
    s = res["samples_ms"]
    assert len(s["load"]) == len(s["preprocess"]) == len(s["postprocess"]) == len(s["crf:flip"]) == 3
    assert len(s["model"]) == 3 and len(s["restore_logits"]) == 3


def test_multi_scale_and_flip_average_the_models_own_logits(imported, shared):
    """Segmenter(scales, flip) against the model called directly: the mean over the mirrored and
    rescaled inputs, each output brought back to the input's size."""
    import torch.nn.functional as F

    from deeplab_edge.runtime.pytorch import TorchRunner

    model = imported[1].eval()  # the real VOC model: logits that depend on where things are
    pre = Preprocess.from_dict({"size": None, "resize": "none", "pad": False, "mean": [128.0] * 3, "std": [128.0] * 3})
    image = np.asarray(Image.open(shared["voc"] / "JPEGImages" / "582.png").convert("RGB"))[200:237, 150:203]
    x = pre(image)[0][None]
    with torch.no_grad():
        plain = model(x)
        mirrored = model(x.flip(-1)).flip(-1)
        half = F.interpolate(model(F.interpolate(x, size=(18, 26), mode="bilinear", align_corners=False)),
                             size=(37, 53), mode="bilinear", align_corners=False)
    runner = TorchRunner(model, "cpu", preprocess=pre)
    got = Segmenter(runner, flip=True).forward(x)
    torch.testing.assert_close(got, (plain + mirrored) / 2, atol=1e-5, rtol=1e-5)
    got = Segmenter(runner, scales=(0.5, 1.0)).forward(x)
    torch.testing.assert_close(got, (half + plain) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(Segmenter(runner).forward(x), plain)
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # flipping changes the logits: the test can tell
    with pytest.raises(ValueError, match="positive scales"):
        Segmenter(runner, scales=(0.0,))
