"""The imported real model against the TFLite interpreter (LiteRT), run here in the test."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_edge.errors import ImportModelError
from deeplab_edge.tflite_import import import_tflite


def _litert_argmax(path, images):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    preds = []
    for img in images:  # the MANIFEST's exact preprocessing: 513x513 RGB uint8 fed as is
        interp.set_tensor(inp["index"], img[None])
        interp.invoke()
        preds.append(interp.get_tensor(out["index"])[0].astype(np.int64))
    return preds


def _miou(preds, labels, n=21):
    conf = np.zeros((n, n), np.int64)
    for p, lab in zip(preds, labels):
        m = lab != 255
        conf += np.bincount(lab[m].astype(np.int64) * n + p[m], minlength=n * n).reshape(n, n)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return float((tp[union > 0] / union[union > 0]).mean())


@pytest.mark.slow
def test_imported_model_reproduces_litert(shared, imported):
    _, model, meta = imported
    ids = (shared["voc"] / "ImageSets/Segmentation/val.txt").read_text().split()
    images = [np.array(Image.open(shared["voc"] / "JPEGImages" / f"{i}.png").convert("RGB")) for i in ids]
    labels = [np.asarray(Image.open(shared["voc"] / "SegmentationClass" / f"{i}.png")) for i in ids]
    lite = _litert_argmax(shared["tflite"], images)
    mean, std = meta["preprocess"]["mean"][0], meta["preprocess"]["std"][0]
    ours = []
    with torch.inference_mode():
        for img in images:
            x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() - mean) / std
            ours.append(model(x).argmax(1)[0].numpy())
    lite_miou, our_miou = _miou(lite, labels), _miou(ours, labels)
    agreement = float(np.mean([(a == b).mean() for a, b in zip(ours, lite)]))
    print(f"litert mIoU {lite_miou:.4%}, imported {our_miou:.4%}, pixel agreement {agreement:.4%}")
    # the interpreter here reproduces the committed reference, and the import stays within 1 point of it
    assert lite_miou == pytest.approx(json.loads(shared["ref_json"].read_text())["miou"], abs=1e-6)
    assert abs(our_miou - lite_miou) < 0.01
    assert agreement > 0.99


def test_import_reads_structure_from_graph(shared):
    model, meta = import_tflite(shared["tflite"])
    cfg = model.config
    # what MANIFEST.md says of this file: MobileNetV2 depth 1.0, OS 16, ASPP without atrous branches, 21 classes
    assert cfg["num_classes"] == 21 and cfg["output_stride"] == 16 and cfg["aspp_rates"] == []
    assert cfg["stem"] == 32 and len(cfg["blocks"]) == 17 and cfg["blocks"][-1][2] == 320
    assert [b[4] for b in cfg["blocks"]][-3:] == [2, 2, 2]  # the last stage runs atrous at rate 2
    assert cfg["align_corners"] is True
    assert meta["preprocess"]["mean"] == [128.0] * 3 and meta["preprocess"]["std"] == [128.0] * 3
    assert meta["source"]["concat_order"] == ["pool", "1x1"]


def test_not_a_tflite_file(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"hello world, not a flatbuffer")
    with pytest.raises(ImportModelError, match="not a TFLite flatbuffer"):
        import_tflite(bad)
    with pytest.raises(ImportModelError, match="no such file"):
        import_tflite(tmp_path / "missing.tflite")


def test_truncated_tflite(shared, tmp_path):
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(shared["tflite"].read_bytes()[:4096])
    with pytest.raises(ImportModelError):
        import_tflite(bad)


# Graphs this importer has never seen, written here and run by LiteRT: other widths, class
# counts, output strides, atrous ASPP branches, ASPP width and concatenation orders.
GRAPHS = {
    # OS 8 with rate-2 blocks, two atrous branches, concat order shuffled, 5 classes, ASPP width 32
    "os8_atrous": dict(side=33, stem=8, num_classes=5, rates=(2, 3), concat_order=("rate3", "pool", "1x1", "rate2"),
                       blocks=[(8, 8, 8, 1, 1), (8, 48, 16, 2, 1), (16, 96, 16, 1, 1), (16, 96, 24, 2, 1),
                               (24, 144, 24, 1, 2), (24, 144, 32, 1, 2)]),
    # OS 16, Google-style head (no atrous), 2 classes, 49 = 3 * 16 + 1 input
    "os16_plain": dict(side=49, stem=16, num_classes=2, rates=(), concat_order=("pool", "1x1"),
                       blocks=[(16, 16, 8, 1, 1), (8, 48, 8, 2, 1), (8, 48, 16, 2, 1), (16, 96, 16, 1, 1),
                               (16, 96, 24, 2, 1), (24, 144, 24, 1, 2)]),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_import_other_graphs_matches_litert_logits(tmp_path, name):
    from ai_edge_litert.interpreter import Interpreter
    from tflite_writer import deeplab_mnv2_graph

    spec = GRAPHS[name]
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(deeplab_mnv2_graph(**spec))
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    side = spec["side"]
    x = np.random.default_rng(3).standard_normal((1, side, side, 3)).astype(np.float32)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    expected = interp.get_tensor(interp.get_output_details()[0]["index"])

    model, meta = import_tflite(path)
    cfg = model.config
    assert cfg["num_classes"] == spec["num_classes"] and cfg["aspp_rates"] == list(spec["rates"])
    assert cfg["stem"] == spec["stem"] and [tuple(b) for b in cfg["blocks"]] == spec["blocks"]
    assert meta["preprocess"]["mean"] == [127.5] * 3  # a float graph: TF DeepLab's x / 127.5 - 1
    with torch.no_grad():
        ours = model(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(ours, torch.from_numpy(expected), atol=1e-4, rtol=1e-4)
    assert "warnings" not in meta


def test_asymmetric_same_padding_is_flagged(tmp_path):
    """41x41 reaches a stride-2 conv with a 6x6 input, which TF pads bottom/right only."""
    from tflite_writer import deeplab_mnv2_graph

    path = tmp_path / "even.tflite"
    path.write_bytes(deeplab_mnv2_graph(**{**GRAPHS["os16_plain"], "side": 41}))
    _, meta = import_tflite(path)
    assert len(meta["warnings"]) == 1 and "on 6x6" in meta["warnings"][0]


def test_graph_without_blocks_is_refused(tmp_path):
    from tflite_writer import RELU6, Writer
    from tflite import BuiltinOperator as OP
    from tflite import BuiltinOptions as OPT

    w = Writer()
    x = w.tensor("input", [1, 9, 9, 3])
    wt = w.tensor("w", [4, 3, 3, 3], data=np.ones((4, 3, 3, 3), np.float32))
    b = w.tensor("b", [4], data=np.zeros(4, np.float32))
    y = w.tensor("y", [1, 5, 5, 4])
    w.op(OP.CONV_2D, [x, wt, b], [y], OPT.Conv2DOptions, stride=2, act=RELU6)
    w.inputs, w.outputs = [x], [y]
    path = tmp_path / "conv.tflite"
    path.write_bytes(w.to_bytes())
    with pytest.raises(ImportModelError, match="not a DeepLab-v3 MobileNetV2 TFLite model: no inverted residual"):
        import_tflite(path)
