import numpy as np
import pytest

from deeplab_edge.metrics import ConfusionMatrix


def test_hand_computed_two_classes():
    # gt:   0 0 1 1 ; pred: 0 1 1 1  -> class 0: TP1 FP0 FN1 -> 1/2 ; class 1: TP2 FP1 FN0 -> 2/3
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]))
    r = cm.compute()
    assert r["class_iou"] == pytest.approx([0.5, 2 / 3])
    assert r["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert r["pixel_acc"] == pytest.approx(0.75)
    assert r["class_acc"] == pytest.approx([0.5, 1.0])


def test_ignore_index_and_absent_classes():
    cm = ConfusionMatrix(4, ignore_index=255)
    pred = np.array([[0, 2], [2, 3]])
    gt = np.array([[0, 255], [2, 255]])  # the two 255 pixels (pred 2 and 3) are skipped
    cm.update(pred, gt)
    r = cm.compute()
    # class 1 never appears (union empty) -> None and left out; class 3 predicted only on an ignored pixel
    assert r["class_iou"] == [1.0, None, 1.0, None]
    assert r["miou"] == 1.0 and r["classes_counted"] == 2 and r["pixels"] == 2


def test_accumulates_across_batches_like_one_matrix():
    rng = np.random.default_rng(1)
    pred, gt = rng.integers(0, 5, (3, 40, 50)), rng.integers(0, 5, (3, 40, 50))
    gt[0, :5] = 255
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    for i in range(3):
        a.update(pred[i], gt[i])
    b.update(pred, gt)
    assert (a.mat == b.mat).all()
    # the matrix against a direct count
    for g in range(5):
        for p in range(5):
            assert a.mat[g, p] == int(((gt == g) & (pred == p)).sum())


def test_predicted_only_class_counts_in_union():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 2]), np.array([0, 0]))  # class 2 predicted but absent: IoU 0, counted
    r = cm.compute()
    assert r["class_iou"] == [0.5, None, 0.0]
    assert r["miou"] == pytest.approx(0.25)


def test_bad_inputs():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="equal size"):
        cm.update(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError, match="predictions in"):
        cm.update(np.array([7]), np.array([0]))


def test_argmax_labels_equals_torch_argmax_with_ties():
    import torch

    from deeplab_edge.inference import argmax_labels

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (21, 37, 53), generator=g).float()  # few distinct values: many ties
    assert np.array_equal(argmax_labels(x), x.argmax(0).numpy().astype(np.uint8))
    y = torch.randn(3, 5, 7, generator=g).transpose(1, 2)
    assert np.array_equal(argmax_labels(y), y.argmax(0).numpy().astype(np.uint8))  # non-contiguous input
    with pytest.raises(ValueError):
        argmax_labels(torch.zeros(2, 3))
