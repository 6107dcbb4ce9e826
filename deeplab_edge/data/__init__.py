"""Datasets, image I/O and the shared preprocessing."""

from .datasets import (CamVid, Cityscapes, ImageFolder, SegmentationDataset, VOCSegmentation, open_dataset,
                       voc_palette)
from .io import load_image, load_label, save_png
from .preprocess import IMAGENET, Geometry, Preprocess

__all__ = ["CamVid", "Cityscapes", "ImageFolder", "SegmentationDataset", "VOCSegmentation", "open_dataset",
           "voc_palette", "load_image", "load_label", "save_png", "IMAGENET", "Geometry",
           "Preprocess"]
