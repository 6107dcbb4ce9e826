"""Segmentation datasets: PASCAL VOC, Cityscapes, CamVid, and a plain folder of images.

Every dataset yields ``(sample_id, image uint8 HxWx3, label uint8 HxW or None)``;
labels use 255 for "ignore" whatever the dataset's own void value is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import DataError
from .io import IMAGE_SUFFIXES, load_image, load_label

__all__ = ["Sample", "SegmentationDataset", "VOCSegmentation", "Cityscapes", "CamVid", "ImageFolder",
           "open_dataset", "voc_palette", "DATASET_KINDS", "VOC_CLASSES", "CAMVID_CLASSES", "CITYSCAPES_CLASSES"]

IGNORE = 255

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
                  "pedestrian", "bicyclist"]
CAMVID_COLORS = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                 (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]
CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
                      "motorcycle", "bicycle"]
CITYSCAPES_COLORS = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                     (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
                     (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
                     (0, 80, 100), (0, 0, 230), (119, 11, 32)]
# cityscapesScripts labels.py: labelId -> trainId (everything else is ignored)
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved class index), (n, 3) uint8."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def _palette_from(colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    pal = voc_palette()
    pal[: len(colors)] = np.asarray(colors, np.uint8)
    pal[IGNORE] = (0, 0, 0)
    return pal


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    label: Path | None


class SegmentationDataset:
    """A list of samples plus class names, a palette and a label mapping."""

    kind = "dataset"

    def __init__(self, root: Path, samples: list[Sample], classes: list[str], palette: np.ndarray,
                 lut: np.ndarray | None = None) -> None:
        if not samples:
            raise DataError(f"{root}: no images found for this {self.kind} layout; check the folder and --split")
        self.root, self.samples, self.classes, self.palette, self.lut = root, samples, classes, palette, lut

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_labels(self) -> bool:
        return all(s.label is not None for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[str, np.ndarray, np.ndarray | None]:
        s = self.samples[i]
        image = load_image(s.image)
        label = None
        if s.label is not None:
            label = load_label(s.label)
            if self.lut is not None:
                label = self.lut[np.clip(label.astype(np.int64), 0, 255)]
            if label.shape != image.shape[:2]:
                raise DataError(f"{s.label}: label is {label.shape[1]}x{label.shape[0]} but its image is "
                                f"{image.shape[1]}x{image.shape[0]}; labels must match their images")
            self._check_values(label, s.label)
        return s.id, image, label

    def _check_values(self, label: np.ndarray, path: Path) -> None:
        """Every label value is a class index or the ignore value: anything else would be dropped from
        the metrics without a word (or trained on as a class that does not exist)."""
        bad = ((label >= self.num_classes) & (label != IGNORE)) | (label < 0)
        if bad.any():
            values = np.unique(label[bad])
            shown = ", ".join(str(int(v)) for v in values[:5]) + (", ..." if values.size > 5 else "")
            raise DataError(f"{path}: label value {shown} outside the {self.num_classes} {self.kind} classes "
                            f"(0-{self.num_classes - 1}, {IGNORE} = ignore); fix the label file or pick the "
                            "matching --dataset")

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        for i in range(len(self)):
            yield self.load(i)

    def subset(self, n: int | None) -> "SegmentationDataset":
        """The first ``n`` samples (all of them for None)."""
        if n is not None and n < 1:
            raise DataError(f"asked for {n} images; give a number of images >= 1")
        if n is None or n >= len(self.samples):
            return self
        return self.take(range(n))

    def take(self, indices: Iterable[int]) -> "SegmentationDataset":
        """The same dataset with only the samples at ``indices``, in that order."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.samples = [self.samples[i] for i in indices]
        return out


def _read_ids(path: Path) -> list[str]:
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            ids.append(Path(line.split()[0]).stem)
    return ids


def _find_image(folder: Path, stem: str) -> Path | None:
    for suf in IMAGE_SUFFIXES:
        p = folder / f"{stem}{suf}"
        if p.is_file():
            return p
    return None


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC 2012 (VOCdevkit layout). ``root`` may be ``VOC2012``, ``VOCdevkit`` or their parent.
    Images in ``JPEGImages`` may be .jpg or .png."""

    kind = "voc"

    @staticmethod
    def find_root(root: Path) -> Path | None:
        for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (cand / "ImageSets" / "Segmentation").is_dir() and (cand / "JPEGImages").is_dir():
                return cand
        return None

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        base = self.find_root(root)
        if base is None:
            raise DataError(f"{root}: not a VOC folder (no ImageSets/Segmentation and JPEGImages); "
                            "pass the VOC2012 or VOCdevkit folder")
        split_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(f"{split_file}: split file not found; choose --split from "
                            f"{sorted(p.stem for p in split_file.parent.glob('*.txt'))}")
        samples = []
        for sid in _read_ids(split_file):
            img = _find_image(base / "JPEGImages", sid)
            if img is None:
                raise DataError(f"{base / 'JPEGImages'}: no image for id {sid!r} listed in {split_file.name}; add "
                                "the image or remove the id from the split file")
            lab = base / "SegmentationClass" / f"{sid}.png"
            samples.append(Sample(sid, img, lab if lab.is_file() else None))
        super().__init__(base, samples, list(VOC_CLASSES), voc_palette())


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, mapped to the 19 train ids."""

    kind = "cityscapes"

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        img_dir = root / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise DataError(f"{root}: not a Cityscapes folder (no leftImg8bit/{split}); pass the folder that "
                            "holds leftImg8bit/ and gtFine/")
        samples = []
        for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            lab = root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelIds.png"
            samples.append(Sample(stem, img, lab if lab.is_file() else None))
        lut = np.full(256, IGNORE, np.uint8)
        for k, v in CITYSCAPES_TRAIN_IDS.items():
            lut[k] = v
        super().__init__(root, samples, list(CITYSCAPES_CLASSES), _palette_from(CITYSCAPES_COLORS), lut)


class CamVid(SegmentationDataset):
    """CamVid as SegNet distributes it (11 classes, void = 11 mapped to ignore): either
    ``<split>/`` + ``<split>annot/`` (+ ``<split>.txt``), or ``images/`` + ``labels/`` (+ ``<split>.txt``)."""

    kind = "camvid"

    @staticmethod
    def find_dirs(root: Path, split: str) -> tuple[Path, Path] | None:
        for img, lab in ((root / split, root / f"{split}annot"), (root / "images", root / "labels")):
            if img.is_dir() and lab.is_dir():
                return img, lab
        return None

    def __init__(self, root: str | Path, split: str = "val") -> None:
        root = Path(root)
        dirs = self.find_dirs(root, split)
        if dirs is None:
            raise DataError(f"{root}: not a CamVid folder (no {split}/ + {split}annot/ or images/ + labels/); "
                            "pass the folder that holds them")
        img_dir, lab_dir = dirs
        split_file = root / f"{split}.txt"
        if split_file.is_file():
            ids = _read_ids(split_file)
        else:
            ids = sorted(p.stem for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        samples = []
        for sid in ids:
            img = _find_image(img_dir, sid)
            if img is None:
                raise DataError(f"{img_dir}: no image for id {sid!r}; add it or remove the id from {split}.txt")
            lab = lab_dir / f"{sid}.png"
            samples.append(Sample(sid, img, lab if lab.is_file() else None))
        lut = np.arange(256, dtype=np.uint8)
        lut[11] = IGNORE
        super().__init__(root, samples, list(CAMVID_CLASSES), _palette_from(CAMVID_COLORS), lut)


class ImageFolder(SegmentationDataset):
    """Images without labels: a folder (searched recursively) or a list of files."""

    kind = "folder"

    def __init__(self, paths: str | Path | Sequence[str | Path], classes: list[str] | None = None) -> None:
        raw = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if any(not str(p).strip() for p in raw):  # Path("") would silently mean the current folder
            raise DataError("an empty path was given; name an image file or folder")
        items = [Path(p) for p in raw]
        files: list[Path] = []
        for p in items:
            if p.is_dir():
                files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            elif p.is_file():
                files.append(p)
            else:
                raise DataError(f"{p}: no such file or folder; check the path")
        files = list(dict.fromkeys(f.resolve() for f in files))  # a file named twice is one image
        root = items[0] if items else Path(".")
        super().__init__(root, [Sample(i, f, None) for i, f in zip(self.unique_ids(files), files)],
                         classes or list(VOC_CLASSES), voc_palette())

    @staticmethod
    def unique_ids(files: Sequence[Path]) -> list[str]:
        """One distinct id per file: the file name's stem, or where stems repeat (a/x.png and b/x.png,
        x.png and x.jpg) the path below the files' common folder, then with the suffix kept."""
        ids = [f.stem for f in files]
        if len(set(ids)) == len(ids):
            return ids
        base = Path(os.path.commonpath([str(f.parent) for f in files]))
        rel = [f.relative_to(base) for f in files]
        ids = [r.with_suffix("").as_posix() for r in rel]
        if len(set(ids)) == len(ids):
            return ids
        return [f"{r.with_suffix('').as_posix()}_{r.suffix.lstrip('.')}" for r in rel]


DATASET_KINDS = ("auto", "voc", "cityscapes", "camvid", "folder")


def open_dataset(path: str | Path, kind: str = "auto", split: str = "val") -> SegmentationDataset:
    """Open a dataset folder, detecting its layout when ``kind`` is ``auto``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass a dataset folder or images")
    if kind not in DATASET_KINDS:
        raise DataError(f"unknown dataset kind {kind!r}; choose one of {', '.join(DATASET_KINDS)}")
    if kind == "auto":
        if path.is_dir() and VOCSegmentation.find_root(path) is not None:
            kind = "voc"
        elif path.is_dir() and (path / "leftImg8bit").is_dir():
            kind = "cityscapes"
        elif path.is_dir() and CamVid.find_dirs(path, split) is not None:
            kind = "camvid"
        else:
            kind = "folder"
    return {"voc": VOCSegmentation, "cityscapes": Cityscapes, "camvid": CamVid}[kind](path, split) \
        if kind != "folder" else ImageFolder(path)
