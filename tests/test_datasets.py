import numpy as np
import pytest
from PIL import Image

from deeplab_edge.data import CamVid, Cityscapes, ImageFolder, VOCSegmentation, open_dataset
from deeplab_edge.data.datasets import CITYSCAPES_TRAIN_IDS, voc_palette
from deeplab_edge.errors import DataError


def test_voc_real_samples(shared):
    ds = open_dataset(shared["voc"])
    assert isinstance(ds, VOCSegmentation) and len(ds) == 9 and ds.num_classes == 21
    ids = (shared["voc"] / "ImageSets/Segmentation/val.txt").read_text().split()
    assert [s.id for s in ds.samples] == ids
    sid, img, label = ds.load(0)
    assert img.shape == (513, 513, 3) and img.dtype == np.uint8 and label.shape == (513, 513)
    # the label's palette colours decode to the same classes (MANIFEST: image 0 has classes 0, 1, 255)
    assert set(np.unique(label)) == {0, 1, 255}


def test_voc_palette_matches_real_label_palette(shared):
    with Image.open(shared["voc"] / "SegmentationClass" / "0.png") as im:
        pal = np.array(im.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
    assert (pal[:21] == voc_palette()[:21]).all()


def test_camvid_real_void_becomes_ignore(shared):
    ds = open_dataset(shared["camvid"])
    assert isinstance(ds, CamVid) and len(ds) == 101 and ds.num_classes == 11
    sid, img, label = ds.load(0)
    raw = np.asarray(Image.open(shared["camvid"] / "labels" / f"{sid}.png"))
    assert img.shape == (360, 480, 3)
    assert (label[raw == 11] == 255).all() and (label[raw < 11] == raw[raw < 11]).all()


def test_voc_devkit_layout_and_jpg(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "JPEGImages").mkdir()
    (base / "SegmentationClass").mkdir()
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(base / "JPEGImages" / "2007_000033.jpg")
    Image.fromarray(np.ones((5, 7), np.uint8), mode="L").save(base / "SegmentationClass" / "2007_000033.png")
    ds = open_dataset(tmp_path)  # the parent of VOCdevkit
    assert ds.kind == "voc" and ds.samples[0].image.suffix == ".jpg"
    with pytest.raises(DataError, match="split file not found"):
        VOCSegmentation(tmp_path, split="train")


def test_cityscapes_label_ids_map_to_train_ids(tmp_path):
    img_dir = tmp_path / "leftImg8bit" / "val" / "frankfurt"
    lab_dir = tmp_path / "gtFine" / "val" / "frankfurt"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    ids = np.arange(0, 40, dtype=np.uint8).reshape(4, 10)
    Image.fromarray(np.zeros((4, 10, 3), np.uint8)).save(img_dir / "frankfurt_000000_000294_leftImg8bit.png")
    Image.fromarray(ids, mode="L").save(lab_dir / "frankfurt_000000_000294_gtFine_labelIds.png")
    ds = open_dataset(tmp_path)
    assert isinstance(ds, Cityscapes) and ds.num_classes == 19
    _, _, label = ds.load(0)
    for lid in range(40):
        assert label.ravel()[lid] == CITYSCAPES_TRAIN_IDS.get(lid, 255)
    assert (label != 255).sum() == 19


def test_segnet_camvid_layout(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "val" / "a.png")
    Image.fromarray(np.full((3, 4), 3, np.uint8), mode="L").save(tmp_path / "valannot" / "a.png")
    ds = open_dataset(tmp_path)
    assert isinstance(ds, CamVid) and ds.load(0)[2].tolist() == [[3] * 4] * 3


def test_label_size_mismatch_and_corrupt_image(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8), mode="L").save(tmp_path / "labels" / "a.png")
    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((3, 4), np.uint8), mode="L").save(tmp_path / "labels" / "b.png")
    ds = CamVid(tmp_path)
    with pytest.raises(DataError, match="label is 4x5 but its image is 4x3"):
        ds.load(0)
    with pytest.raises(DataError, match="cannot read the image"):
        ds.load(1)


def test_colour_label_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "labels" / "a.png")
    with pytest.raises(DataError, match="expected class indices"):
        CamVid(tmp_path).load(0)


def test_folder_and_errors(tmp_path):
    sub = tmp_path / "x"
    sub.mkdir()
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(sub / "a.jpg")
    (sub / "notes.txt").write_text("not an image")
    ds = open_dataset(tmp_path)
    assert isinstance(ds, ImageFolder) and len(ds) == 1 and not ds.has_labels
    with pytest.raises(DataError, match="no such file"):
        open_dataset(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found"):
        open_dataset(empty)


def test_take_selects_samples_and_leaves_the_dataset_whole(shared):
    """`take` is how a shard, the first N or the images after calibration's are selected: a range or a list, in
    that order, the same kind of dataset; the dataset it came from keeps all its samples."""
    ds = open_dataset(shared["voc"])
    ids = [s.id for s in ds.samples]
    rest = ds.take(range(2, len(ds)))
    assert type(rest) is type(ds) and [s.id for s in rest.samples] == ids[2:] and rest.classes == ds.classes
    assert [s.id for s in ds.take([3, 0]).samples] == [ids[3], ids[0]] and len(ds.take(range(0))) == 0
    assert [s.id for s in ds.subset(2).samples] == ids[:2] and ds.subset(None) is ds
    assert [s.id for s in ds.samples] == ids
