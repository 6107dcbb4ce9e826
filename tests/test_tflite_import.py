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
