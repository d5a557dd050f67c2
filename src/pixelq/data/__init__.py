"""Data: readers for image folders, CIFAR and IDX, a decode cache, uint8 augmentation."""
from .augment import batches, random_crop_flip
from .cache import embedded_data_path, load_dataset
from .dataset import DataSplits, ImageSet
from .readers import READERS, detect_layout

__all__ = [
    "READERS",
    "DataSplits",
    "ImageSet",
    "batches",
    "detect_layout",
    "embedded_data_path",
    "load_dataset",
    "random_crop_flip",
]
