"""bench.ptq.compare_methods (run by hand as bench/experiments/ptq_compare.py), the INT8 comparison, on 6 real
CamVid val frames (96 x 72): the folds are disjoint and cover every image once, FP32 pooled over the folds is the whole set's mIoU as `evaluate`
computes it, and each method's row is there."""

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def small(shared, tmp_path_factory):
    from pathlib import Path

    from deeplab_edge.checkpoint import load_checkpoint
    from deeplab_edge.export import export_onnx

    root = tmp_path_factory.mktemp("camvid6")
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "labels").mkdir()
    src = shared["camvid"]
    for i in sorted(p.stem for p in (src / "images").iterdir())[:6]:
        Image.open(next((src / "images").glob(f"{i}.*"))).convert("RGB").resize((96, 72), Image.BILINEAR).save(
            root / "val" / "images" / f"{i}.png")
        Image.open(src / "labels" / f"{i}.png").resize((96, 72), Image.NEAREST).save(root / "val" / "labels" / f"{i}.png")
    weights = Path(__file__).resolve().parents[1] / "weights" / "deeplabv3_mnv2_camvid.pt"
    loaded = load_checkpoint(weights)
    frames = [np.asarray(Image.open(p)) for p in sorted((root / "val" / "images").iterdir())[:2]]
    export_onnx(loaded, root / "fp32.onnx", frames, dynamic=("hw",))
    return root


def test_folds_pool_to_the_whole_set(small, tmp_path):
    from deeplab_edge.bench.ptq import compare_methods
    from deeplab_edge.data.datasets import open_dataset
    from deeplab_edge.inference import Segmenter, evaluate
    from deeplab_edge.runtime.onnx import OnnxRunner

    res = compare_methods(small / "fp32.onnx", str(small / "val"), tmp_path / "r.json", calib_dir=None, num=1,
                          folds=3, methods=["minmax", "search", "ort-u8s8"], modelopt_python=None, log=lambda s: None)
    assert json.loads((tmp_path / "r.json").read_text())["methods"].keys() == {"minmax", "search", "ort-u8s8"}
    assert res["calibration_images"] == [4, 4, 4] and res["evaluation_images"] == 6
    whole = evaluate(Segmenter(OnnxRunner(small / "fp32.onnx")), open_dataset(small / "val"))
    assert res["fp32_miou"] == pytest.approx(whole["miou"], abs=1e-9)
    for m, row in res["methods"].items():
        assert len(row["per_fold_miou"]) == 3 and 0.9 < row["fp32_agreement"] <= 1, m
        assert abs(row["drop_points"]) < 10, m
    u8 = res["methods"]["ort-u8s8"]
    assert 0 <= u8["kernels_vs_emulation_agreement"] <= 1 and "reduce_range" in u8["settings"]
