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
from .io import IMAGE_SUFFIXES, SWAPS_SIZE, exif_orientation, label_size, load_image, shown_size, voc_palette
from .io import load_label as read_label

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
                 lut: np.ndarray | None = None, split: str | None = None) -> None:
        if not samples:
            raise DataError(f"{root}: no images found for this {self.kind} layout; check the folder and --split")
        self.root, self.samples, self.classes, self.palette, self.lut = root, samples, classes, palette, lut
        self.split = split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_labels(self) -> bool:
        return all(s.label is not None for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def label_palettes(self) -> dict[str, np.ndarray]:
        """The colour maps a 'P' label of this dataset may carry, besides grayscale and VOC's."""
        return {self.kind: self.palette}

    def load_label(self, i: int) -> np.ndarray | None:
        """Sample ``i``'s label as class indices (uint8, 255 = ignore), checked; its image is not read."""
        s = self.samples[i]
        if s.label is None:
            return None
        unchecked = np.flatnonzero(self.lut == IGNORE) if self.lut is not None else [IGNORE]
        label = read_label(s.label, self.label_palettes(), unchecked)
        if label.dtype != np.uint8:  # 16/32-bit: a value above 255 is no class, whatever the mapping makes of it
            outside = (label < 0) | (label > 255)
            if outside.any():
                raise self._value_error(s.label, label[outside])
            label = label.astype(np.uint8)
        if self.lut is not None:
            label = self.lut[label]
        self._check_values(label, s.label)
        return label

    def load(self, i: int) -> tuple[str, np.ndarray, np.ndarray | None]:
        s = self.samples[i]
        image = load_image(s.image)
        label = self.load_label(i)
        if label is not None and label.shape != image.shape[:2]:
            lh, lw, ih, iw = *label.shape, *image.shape[:2]
            turn = exif_orientation(s.image) if (lh, lw) == (iw, ih) else 1
            if turn in SWAPS_SIZE:
                raise DataError(f"{s.label}: label is {lw}x{lh} but its image is {iw}x{ih} as shown: the image has an "
                                f"EXIF orientation tag ({turn}, {SWAPS_SIZE[turn]}) and the label matches its stored, "
                                "unturned pixels; turn the label the same way, or save the image turned and without "
                                "the tag")
            raise DataError(f"{s.label}: label is {lw}x{lh} but its image is {iw}x{ih}; labels must match their images")
        return s.id, image, label

    def check_pairs(self) -> None:
        """Every image opens and every label has its image's size, read from the file headers (nothing is
        decoded): a long run refuses a bad pair before it starts instead of at the image."""
        for i, s in enumerate(self.samples):
            size = shown_size(s.image)
            if s.label is not None and label_size(s.label) != size:
                self.load(i)  # raises the one-line error that names the pair (and an EXIF turn)

    def has_labelled_pixels(self) -> bool:
        """Some label pixel is a class, not ignore (reads the labels only, up to the first such one)."""
        return any(lab is not None and bool((lab != IGNORE).any()) for lab in map(self.load_label, range(len(self))))

    def check_labelled_pixels(self, purpose: str = "train on") -> None:
        """Refuse a dataset whose every label pixel is ignore (255 or the dataset's void): nothing to ``purpose``."""
        if not self.has_labelled_pixels():
            n = len(self)
            split = f" of split {self.split!r}" if self.split else ""
            raise DataError(f"{self.root}: every label pixel of the {n} image{'s' if n != 1 else ''}{split} is "
                            f"void or ignore ({IGNORE} or the {self.kind} void); nothing to {purpose}, so check the "
                            "label files or --dataset")

    def _value_error(self, path: Path, values: np.ndarray) -> DataError:
        values = np.unique(values)
        shown = ", ".join(str(int(v)) for v in values[:5]) + (", ..." if values.size > 5 else "")
        return DataError(f"{path}: label value {shown} outside the {self.num_classes} {self.kind} classes "
                         f"(0-{self.num_classes - 1}, {IGNORE} = ignore); fix the label file or pick the "
                         "matching --dataset")

    def _check_values(self, label: np.ndarray, path: Path) -> None:
        """Every label value is a class index or the ignore value: anything else would be dropped from
        the metrics without a word (or trained on as a class that does not exist)."""
        bad = ((label >= self.num_classes) & (label != IGNORE)) | (label < 0)
        if bad.any():
            raise self._value_error(path, label[bad])

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        for i in range(len(self)):
            yield self.load(i)

    def subset(self, n: int | None) -> "SegmentationDataset":
        """The first ``n`` samples (all of them for None), as a user's image count asks: :meth:`take` of
        ``range(n)``, the count checked."""
        if n is not None and n < 1:
            raise DataError(f"asked for {n} images; give a number of images >= 1")
        if n is None or n >= len(self.samples):
            return self
        return self.take(range(n))

    def take(self, indices: Iterable[int]) -> "SegmentationDataset":
        """The same dataset with only the samples at ``indices`` (a range, a list...), in that order: the one way to
        select samples (a process's shard, the first N, the images calibration left); ``self`` keeps all of its
        own. It may be empty, which no dataset opened from a folder is."""
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


def _either(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _no_split(where: Path, split: str, splits: Sequence[str]) -> DataError:
    """The one-line error for a split a layout does not have, naming those it has."""
    splits = sorted(splits)
    fix = f"pass --split {_either(splits)}" if splits else "check the folder"
    return DataError(f"split {split!r} not found in {where} (splits: {', '.join(splits) or 'none'}); {fix}")


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

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        root = Path(root)
        split = split or "val"
        base = self.find_root(root)
        if base is None:
            raise DataError(f"{root}: not a VOC folder (no ImageSets/Segmentation and JPEGImages); "
                            "pass the VOC2012 or VOCdevkit folder")
        split_file = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            splits = sorted(p.stem for p in split_file.parent.glob("*.txt"))
            fix = f"pass --split {_either(splits)}" if splits else f"add {split_file.name} there"
            raise DataError(f"{split_file}: split file not found, so no split {split!r} in {base} "
                            f"(splits: {', '.join(splits) or 'none'}); {fix}")
        samples = []
        for sid in _read_ids(split_file):
            img = _find_image(base / "JPEGImages", sid)
            if img is None:
                raise DataError(f"{base / 'JPEGImages'}: no image for id {sid!r} listed in {split_file.name}; add "
                                "the image or remove the id from the split file")
            lab = base / "SegmentationClass" / f"{sid}.png"
            samples.append(Sample(sid, img, lab if lab.is_file() else None))
        super().__init__(base, samples, list(VOC_CLASSES), voc_palette(), split=split)

    def label_palettes(self) -> dict[str, np.ndarray]:
        return {"VOC": self.palette}


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png``, mapped to the 19 train ids."""

    kind = "cityscapes"

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        root = Path(root)
        split = split or "val"
        if not (root / "leftImg8bit").is_dir():
            raise DataError(f"{root}: not a Cityscapes folder (no leftImg8bit/); pass the folder that "
                            "holds leftImg8bit/ and gtFine/")
        img_dir = root / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise _no_split(root, split, [d.name for d in (root / "leftImg8bit").iterdir() if d.is_dir()])
        samples = []
        for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            lab = root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelIds.png"
            samples.append(Sample(stem, img, lab if lab.is_file() else None))
        lut = np.full(256, IGNORE, np.uint8)
        for k, v in CITYSCAPES_TRAIN_IDS.items():
            lut[k] = v
        super().__init__(root, samples, list(CITYSCAPES_CLASSES), _palette_from(CITYSCAPES_COLORS), lut, split)

    def label_palettes(self) -> dict[str, np.ndarray]:
        return {}  # the labels hold label ids, not the train ids the palette colours


class CamVid(SegmentationDataset):
    """CamVid as SegNet distributes it (11 classes, void = 11 mapped to ignore): either
    ``<split>/`` + ``<split>annot/`` (+ ``<split>.txt``), or ``images/`` + ``labels/`` (+ ``<split>.txt``).
    A folder with no split at all (no split file, no split folders) is one split of every image."""

    kind = "camvid"

    @staticmethod
    def split_dirs(root: Path) -> dict[str, tuple[Path, Path]]:
        """The SegNet layout's splits: ``<split>/`` beside ``<split>annot/``."""
        if not root.is_dir():
            return {}
        return {d.name: (d, root / f"{d.name}annot") for d in sorted(root.iterdir())
                if d.is_dir() and (root / f"{d.name}annot").is_dir()}

    @staticmethod
    def split_files(root: Path, img_dir: Path) -> list[str]:
        """The ``<split>.txt`` beside ``images/`` + ``labels/`` that list images (its first id names one)."""
        out = []
        for p in sorted(root.glob("*.txt")):
            try:
                ids = _read_ids(p)
            except (OSError, UnicodeDecodeError):
                continue
            if ids and _find_image(img_dir, ids[0]) is not None:
                out.append(p.stem)
        return out

    @classmethod
    def is_layout(cls, root: Path) -> bool:
        """``root`` holds ``images/`` + ``labels/`` or some ``<split>/`` + ``<split>annot/``."""
        return ((root / "images").is_dir() and (root / "labels").is_dir()) or bool(cls.split_dirs(root))

    @classmethod
    def find_dirs(cls, root: Path, split: str) -> tuple[Path, Path] | None:
        """(images, labels) folders of ``split``: its SegNet pair, else ``images/`` + ``labels/``."""
        pairs = cls.split_dirs(root)
        if split in pairs:
            return pairs[split]
        if (root / "images").is_dir() and (root / "labels").is_dir():
            return root / "images", root / "labels"
        return None

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        root = Path(root)
        if not self.is_layout(root):
            raise DataError(f"{root}: not a CamVid folder (no <split>/ + <split>annot/ or images/ + labels/); "
                            "pass the folder that holds them")
        pairs = self.split_dirs(root)
        plain = (root / "images", root / "labels") if (root / "images").is_dir() and (root / "labels").is_dir() \
            else None
        splits = sorted(set(pairs) | set(self.split_files(root, plain[0]) if plain else ()))
        if split is None:  # the caller picked none: val where there is one, else every image (or the one split)
            if "val" in splits:
                split = "val"
            elif plain is None and len(pairs) == 1:
                split = next(iter(pairs))
            elif plain is None:
                raise _no_split(root, "val", splits)
        img_dir, lab_dir = pairs[split] if split in pairs else plain if plain is not None else (None, None)
        if img_dir is None:
            raise _no_split(root, split, splits)
        split_file = root / f"{split}.txt" if split is not None else None
        if split_file is not None and split_file.is_file():
            ids = _read_ids(split_file)
        elif split is None or split in pairs or not splits:  # no split anywhere: one split of every image
            ids = sorted(p.stem for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise _no_split(root, split, splits)
        samples = []
        for sid in ids:
            img = _find_image(img_dir, sid)
            if img is None:
                raise DataError(f"{img_dir}: no image for id {sid!r}; add it or remove the id from {split}.txt")
            lab = lab_dir / f"{sid}.png"
            samples.append(Sample(sid, img, lab if lab.is_file() else None))
        lut = np.arange(256, dtype=np.uint8)
        lut[11] = IGNORE
        super().__init__(root, samples, list(CAMVID_CLASSES), _palette_from(CAMVID_COLORS), lut, split)


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


def open_dataset(path: str | Path, kind: str = "auto", split: str | None = None) -> SegmentationDataset:
    """Open a dataset folder, detecting its layout when ``kind`` is ``auto``. A ``split`` the layout does not
    have is refused, naming those it has; None (the caller picks none) is ``val``, or for a CamVid folder
    without a val split every image of ``images/`` (or its one split)."""
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
        elif path.is_dir() and CamVid.is_layout(path):
            kind = "camvid"
        else:
            kind = "folder"
    return {"voc": VOCSegmentation, "cityscapes": Cityscapes, "camvid": CamVid}[kind](path, split) \
        if kind != "folder" else ImageFolder(path)
