"""Bad data, refused in the data layer: unknown splits, labels that are no class indices (colour palettes, 16-bit
values above 255), images whose EXIF orientation swaps their size, images too large to decode, labels without one
labelled pixel.

CASES_DATA uses the table machinery of test_bad_input.py (exit 2, one line ``error: problem; fix``, nothing written
or changed): ``{ckpt}`` the real imported VOC checkpoint, ``{camvid_w}`` an 11-class CamVid model, ``{w}`` a fresh
copy of the prepared bad inputs. The unit tests below check the converted-correctly cases (16-bit labels, EXIF
orientation) against computations of their own, and that every real label file still loads."""

import shlex
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deeplab_edge.cli import main
from deeplab_edge.data import CamVid, Cityscapes, VOCSegmentation, load_image, load_label, open_dataset
from deeplab_edge.data.datasets import CAMVID_COLORS, _palette_from, voc_palette
from deeplab_edge.errors import DataError
from deeplab_edge.models import get_model

from test_bad_input import assert_one_line_error, assert_refused, camvid_folder  # tests/

TRAIN = "--weights {ckpt} --epochs 1 --batch-size 1 --crop 33 --max-steps 1 -o {w}/out/t"

CASES_DATA = [
    # 1. unknown splits: refused, with the splits there are (not every image of the folder)
    ("eval-camvid-split-bogus", "eval --weights {camvid_w} --data {w}/camvid --split bogus",
     "split 'bogus' not found"),
    ("train-camvid-split-bogus", "train --data {w}/camvid --split bogus " + TRAIN, "(splits: train, val)"),
    ("train-camvid-default-split-missing", "train --data {w}/camvid_valonly " + TRAIN, "split 'train' not found"),
    ("eval-camvid-segnet-split-bogus", "eval --weights {camvid_w} --data {w}/segnet --split bogus",
     "split 'bogus' not found"),
    ("eval-cityscapes-split-bogus", "eval --weights {ckpt} --data {w}/cityscapes --split bogus",
     "split 'bogus' not found"),
    ("eval-voc-split-bogus-names-splits", "eval --weights {ckpt} --data {voc} --split bogus", "(splits: val)"),
    # 2. a colour label saved as an adaptive-palette 'P' PNG: its indices are no class ids
    ("eval-camvid-adaptive-palette", "eval --weights {camvid_w} --data {w}/camvid_adaptive", "index PNG"),
    ("train-camvid-adaptive-palette", "train --data {w}/camvid_adaptive --split val " + TRAIN, "index PNG"),
    ("eval-voc-adaptive-palette", "eval --weights {ckpt} --data {w}/voc_adaptive", "index PNG"),
    # 3. a 16-bit label: 300 is no class (not clipped to 255 = ignore by the CamVid mapping)
    ("eval-camvid-16bit-value-300", "eval --weights {camvid_w} --data {w}/camvid_16bit", "label value 300"),
    ("train-camvid-16bit-value-300", "train --data {w}/camvid_16bit --split val " + TRAIN, "label value 300"),
    # 4. an image rotated by its EXIF tag, its label at the stored (unrotated) size
    ("eval-exif-rotated-label-mismatch", "eval --weights {camvid_w} --data {w}/camvid_exif", "EXIF orientation"),
    ("train-exif-rotated-label-mismatch", "train --data {w}/camvid_exif --split val " + TRAIN, "EXIF orientation"),
    # 5. images above PIL's decompression-bomb limit
    ("predict-huge-image", "predict --weights {ckpt} {w}/huge.png -o {w}/out/p", "20000x20000"),
    ("eval-huge-image", "eval --weights {ckpt} --data {w}/voc_huge", "20000x20000"),
    # 6. every label pixel void (CamVid's 11): nothing to train on
    ("train-camvid-all-void", "train --data {w}/camvid_void --split val " + TRAIN, "void"),
]


def _huge_png(path: Path, width: int, height: int) -> None:
    """A black 8-bit grayscale PNG written row by row (a few hundred KB, never the image in memory)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    data = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _exif_jpeg(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def _adaptive(label: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A colour label (class colours) converted the way image editors and scripts do: 'P', adaptive palette."""
    return Image.fromarray(palette[label]).convert("P", palette=Image.ADAPTIVE)


@pytest.fixture(scope="module")
def data_inputs(tmp_path_factory, shared):
    """(folder of bad inputs, folder of models): built once, each case works on a copy of the first."""
    w = tmp_path_factory.mktemp("bad_data")
    models = tmp_path_factory.mktemp("bad_data_models")
    torch.save(get_model("deeplabv3_mobilenet_v2", num_classes=11).state_dict(), models / "camvid11.pth")
    cv_src = shared["camvid"]
    ids = (cv_src / "val.txt").read_text().split()[:3]
    # a CamVid folder with two split files
    camvid_folder(w / "camvid", cv_src, ids)
    (w / "camvid" / "val.txt").write_text("".join(f"{i}\n" for i in ids[:2]))
    (w / "camvid" / "train.txt").write_text(f"{ids[2]}\n")
    # one with val.txt only (train's default split is train)
    camvid_folder(w / "camvid_valonly", cv_src, ids[:2])
    # the SegNet layout: train/ + trainannot/, val/ + valannot/
    for split, part in (("train", ids[:1]), ("val", ids[1:2])):
        (w / "segnet" / split).mkdir(parents=True)
        (w / "segnet" / f"{split}annot").mkdir()
        for i in part:
            shutil.copy(w / "camvid" / "images" / f"{i}.png", w / "segnet" / split / f"{i}.png")
            shutil.copy(w / "camvid" / "labels" / f"{i}.png", w / "segnet" / f"{split}annot" / f"{i}.png")
    # Cityscapes with train and val
    for split in ("train", "val"):
        (w / "cityscapes" / "leftImg8bit" / split / "aachen").mkdir(parents=True)
        (w / "cityscapes" / "gtFine" / split / "aachen").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(
            w / "cityscapes" / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png")
        Image.fromarray(np.full((8, 16), 7, np.uint8), mode="L").save(
            w / "cityscapes" / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png")
    # the CamVid label as a colour image converted to an adaptive palette
    cam_pal = _palette_from(CAMVID_COLORS)
    camvid_folder(w / "camvid_adaptive", cv_src, ids[:1])
    lab = np.asarray(Image.open(w / "camvid_adaptive" / "labels" / f"{ids[0]}.png"))
    _adaptive(lab, cam_pal).save(w / "camvid_adaptive" / "labels" / f"{ids[0]}.png")
    # a VOC label the same way (VOC colours, adaptive palette)
    voc = w / "voc_adaptive"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    shutil.copy(shared["voc"] / "JPEGImages" / "120.png", voc / "JPEGImages" / "120.png")
    vlab = np.asarray(Image.open(shared["voc"] / "SegmentationClass" / "120.png"))
    _adaptive(vlab, voc_palette()).save(voc / "SegmentationClass" / "120.png")
    (voc / "ImageSets/Segmentation/val.txt").write_text("120\n")
    # a 16-bit CamVid label holding 300
    camvid_folder(w / "camvid_16bit", cv_src, ids[:1])
    lab16 = np.asarray(Image.open(w / "camvid_16bit" / "labels" / f"{ids[0]}.png")).astype(np.uint16)
    lab16[:4, :4] = 300
    Image.fromarray(lab16).save(w / "camvid_16bit" / "labels" / f"{ids[0]}.png")
    # a JPEG stored 64x48 with EXIF orientation 6 (shown 48x64), its label 64x48
    camvid_folder(w / "camvid_exif", cv_src, ids[:1])
    img = w / "camvid_exif" / "images" / f"{ids[0]}.png"
    _exif_jpeg(img.with_suffix(".jpg"), np.asarray(Image.open(img)), 6)
    img.unlink()
    # every label pixel void
    camvid_folder(w / "camvid_void", cv_src, ids[:1])
    Image.fromarray(np.full((48, 64), 11, np.uint8), mode="L").save(w / "camvid_void" / "labels" / f"{ids[0]}.png")
    # huge images: one to predict, one in a VOC folder
    _huge_png(w / "huge.png", 20000, 20000)
    vh = w / "voc_huge"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (vh / sub).mkdir(parents=True)
    shutil.copy(w / "huge.png", vh / "JPEGImages" / "0.png")
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(vh / "SegmentationClass" / "0.png")
    (vh / "ImageSets/Segmentation/val.txt").write_text("0\n")
    return w, models


def test_cases_cover_eval_train_predict():
    assert len(CASES_DATA) >= 10 and len({c[0] for c in CASES_DATA}) == len(CASES_DATA)
    assert {c[1].split()[0] for c in CASES_DATA} >= {"eval", "train", "predict"}


def _argv(template: str, w: Path, models: Path, shared, imported) -> list[str]:
    return shlex.split(template.format(ckpt=imported[0], camvid_w=models / "camvid11.pth", voc=shared["voc"], w=w))


def _invoke(template: str, w: Path, models: Path, shared, imported):
    return CliRunner().invoke(main, _argv(template, w, models, shared, imported), prog_name="deeplab-edge",
                              catch_exceptions=False)


@pytest.mark.parametrize("case", CASES_DATA, ids=[c[0] for c in CASES_DATA])
def test_bad_data(case, data_inputs, shared, imported, tmp_path):
    name, template, pattern = case
    w = tmp_path / "w"
    shutil.copytree(data_inputs[0], w, symlinks=True)
    assert_refused(_argv(template, w, data_inputs[1], shared, imported), w, pattern, watch=(data_inputs[1],))


def test_predict_image_above_the_warning_limit_is_one_line(data_inputs, shared, imported, tmp_path, monkeypatch):
    """Between PIL's limit and twice it PIL only warns (and decodes it all): the same one-line error, no warning."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000 * 1000)
    Image.fromarray(np.zeros((1100, 1100, 3), np.uint8)).save(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = _invoke(f"predict --weights {{ckpt}} {tmp_path / 'big.png'} -o {tmp_path / 'out'}", tmp_path,
                      data_inputs[1], shared, imported)
    line = assert_one_line_error(res, "1100x1100")
    assert "big.png" in line and ";" in line
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- splits

def test_camvid_unknown_split_names_the_splits(data_inputs):
    w = data_inputs[0]
    with pytest.raises(DataError, match=r"split 'bogus' not found in .*camvid \(splits: train, val\); pass --split "
                                        r"train or val"):
        open_dataset(w / "camvid", split="bogus")
    assert [s.id for s in open_dataset(w / "camvid", split="train").samples] == \
        [ln for ln in (w / "camvid" / "train.txt").read_text().split()]


def test_camvid_without_split_files_keeps_every_image(tmp_path, shared):
    """Kept behaviour: no split file, no split folders -> every image of images/, whatever the split's name."""
    ids = sorted(p.stem for p in (shared["camvid"] / "images").iterdir())[:3]
    camvid_folder(tmp_path, shared["camvid"], ids)
    (tmp_path / "val.txt").unlink()
    (tmp_path / "notes.txt").write_text("not a split: names no image\n")
    for split in ("val", "train", "anything"):
        assert [s.id for s in open_dataset(tmp_path, split=split).samples] == ids
    assert [s.id for s in open_dataset(tmp_path).samples] == ids


def test_split_left_to_the_dataset_keeps_every_image_of_a_train_folder(shared):
    """A caller that picks no split (calibration images) still gets every image of camvid_train (train.txt only);
    asking for its val split is refused."""
    root = shared["camvid"].parent / "camvid_train"
    ds = open_dataset(root, split=None)
    assert isinstance(ds, CamVid) and len(ds) == len((root / "train.txt").read_text().split())
    with pytest.raises(DataError, match=r"split 'val' not found .*\(splits: train\); pass --split train"):
        open_dataset(root, split="val")


def test_segnet_and_cityscapes_unknown_split(data_inputs):
    w = data_inputs[0]
    with pytest.raises(DataError, match=r"split 'bogus' not found .*\(splits: train, val\)"):
        open_dataset(w / "segnet", split="bogus")
    assert isinstance(open_dataset(w / "segnet", split="train"), CamVid)
    with pytest.raises(DataError, match=r"split 'bogus' not found .*\(splits: train, val\)"):
        open_dataset(w / "cityscapes", split="bogus")
    with pytest.raises(DataError, match=r"split 'bogus' not found .*\(splits: train, val\)"):
        Cityscapes(w / "cityscapes", split="bogus")


def test_voc_unknown_split_names_the_splits(shared):
    with pytest.raises(DataError, match=r"split file not found.*\(splits: val\); pass --split val"):
        VOCSegmentation(shared["voc"], split="bogus")


# ----------------------------------------------------------------------------- palettes

def test_real_label_files_still_load(shared):
    """Every real label of the shared data loads, equal to its raw indices (CamVid's void 11 -> 255)."""
    voc = open_dataset(shared["voc"])
    for i in range(len(voc)):
        sid, _, label = voc.load(i)
        raw = np.asarray(Image.open(shared["voc"] / "SegmentationClass" / f"{sid}.png"))
        assert label.dtype == np.uint8 and (label == raw).all()
    for root, split in ((shared["camvid"], "val"), (shared["camvid"].parent / "camvid_train", "train")):
        ds = open_dataset(root, split=split)
        assert len(ds) > 100
        for i in range(len(ds)):
            label = ds.load_label(i)
            raw = np.asarray(Image.open(root / "labels" / f"{ds.samples[i].id}.png"))
            assert (label == np.where(raw == 11, 255, raw)).all()


def _one_camvid(tmp_path: Path, label: Image.Image, size=(6, 4)) -> CamVid:
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "labels").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(tmp_path / "images" / "a.png")
    label.save(tmp_path / "labels" / "a.png")
    return CamVid(tmp_path)


def test_adaptive_palette_label_is_refused(tmp_path):
    lab = np.arange(24, dtype=np.uint8).reshape(4, 6) % 11
    ds = _one_camvid(tmp_path, _adaptive(lab, _palette_from(CAMVID_COLORS)))
    raw = np.asarray(Image.open(tmp_path / "labels" / "a.png"))
    assert not (raw == lab).all()  # the adaptive indices are no class ids: what today's code scored as classes
    with pytest.raises(DataError, match=r"a\.png: .*camvid.*colour map.*; convert colour labels to index PNGs"):
        ds.load(0)


@pytest.mark.parametrize("palette", ["grayscale", "voc", "camvid"])
def test_index_labels_with_a_known_palette_load(tmp_path, palette):
    lab = np.arange(24, dtype=np.uint8).reshape(4, 6) % 12  # 0-10 and the void 11
    im = Image.fromarray(lab, mode="L").convert("P")  # Pillow's grayscale palette
    if palette != "grayscale":
        im.putpalette((voc_palette() if palette == "voc" else _palette_from(CAMVID_COLORS)).reshape(-1).tolist())
    label = _one_camvid(tmp_path, im).load(0)[2]
    assert (label == np.where(lab == 11, 255, lab)).all()


# ----------------------------------------------------------------------------- 16-bit labels

def test_16bit_label_values_are_read_exactly(tmp_path):
    raw = np.array([[0, 1, 300, 255], [11, 7, 65535, 1000]], np.uint16)
    Image.fromarray(raw).save(tmp_path / "l.png")
    with Image.open(tmp_path / "l.png") as im:
        assert im.mode in ("I;16", "I;16B", "I")  # what Pillow makes of it here
    got = load_label(tmp_path / "l.png")
    assert got.tolist() == raw.astype(np.int64).tolist()


def test_16bit_label_in_range_is_used_as_uint8(tmp_path):
    base = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    raw = (np.arange(30, dtype=np.uint16).reshape(5, 6) % 21)
    raw[0, 0] = 255
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(base / "JPEGImages" / "a.png")
    Image.fromarray(raw).save(base / "SegmentationClass" / "a.png")
    (base / "ImageSets/Segmentation/val.txt").write_text("a\n")
    label = open_dataset(tmp_path).load(0)[2]
    assert label.dtype == np.uint8 and label.tolist() == raw.tolist()


def test_16bit_label_above_255_is_a_bad_value_not_ignore(tmp_path):
    raw = np.full((4, 6), 3, np.uint16)
    raw[0, 0] = 256 + 3  # clipped or wrapped it would be ignore (255) or class 3
    Image.fromarray(raw).save(tmp_path / "l.png")
    ds = _one_camvid(tmp_path, Image.open(tmp_path / "l.png"))
    with pytest.raises(DataError, match="label value 259 outside the 11 camvid classes"):
        ds.load(0)


# ----------------------------------------------------------------------------- EXIF orientation

# EXIF orientation -> what a viewer does to the stored pixels (EXIF 2.3, tag 0x0112)
_SHOWN = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
          5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a[:, ::-1], -1),
          8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_load_image_applies_exif_orientation(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    pixels[:8, :8] = 255  # a corner to follow
    path = tmp_path / "a.jpg"
    _exif_jpeg(path, pixels, orientation)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))  # the decoded pixels as stored, no rotation
        assert im.getexif()[0x0112] == orientation
    assert (load_image(path) == _SHOWN[orientation](stored)).all()


def test_label_of_the_unrotated_image_names_the_exif_tag(tmp_path):
    _one_camvid(tmp_path, Image.fromarray(np.zeros((4, 6), np.uint8), mode="L"))
    (tmp_path / "images" / "a.png").unlink()
    _exif_jpeg(tmp_path / "images" / "a.jpg", np.zeros((4, 6, 3), np.uint8), 8)
    ds = CamVid(tmp_path)
    with pytest.raises(DataError, match=r"label is 6x4 but its image is 4x6 .*EXIF orientation"):
        ds.load(0)


# ----------------------------------------------------------------------------- huge images

def test_huge_image_is_a_data_error_naming_file_and_size(tmp_path):
    _huge_png(tmp_path / "huge.png", 20000, 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"huge\.png: .*20000x20000 \(400 Mpixels\).*; resize"):
            load_image(tmp_path / "huge.png")
        with pytest.raises(DataError, match=r"huge\.png: .*20000x20000"):
            load_label(tmp_path / "huge.png")


def test_image_above_the_warning_limit_is_refused_without_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "a.png")  # 1200 pixels: PIL only warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"a\.png: .*30x40"):
            load_image(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # the limit a caller set is the one applied
    assert load_image(tmp_path / "a.png").shape == (40, 30, 3)


# ----------------------------------------------------------------------------- all-void labels

def test_has_labelled_pixels(data_inputs, shared):
    void = open_dataset(data_inputs[0] / "camvid_void")
    assert void.has_labelled_pixels() is False
    assert open_dataset(shared["camvid"]).has_labelled_pixels() is True
    with pytest.raises(DataError, match=r"camvid_void: every label pixel of the 1 image of split 'val' is void or "
                                        r"ignore.*; "):
        void.check_labelled_pixels("train on")
