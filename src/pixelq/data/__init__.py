"""Data: readers for image folders, CIFAR and IDX, a decode cache, uint8 augmentation."""
from .augment import alternating_flips, batch_source, batches, random_crop_flip
from .cache import embedded_data_path, load_dataset
from .dataset import DataSplits, ImageSet
from .readers import READERS, detect_layout
from .streaming import StreamedImages, StreamedSplits, open_data, open_stream

__all__ = [
    "alternating_flips",
    "READERS",
    "DataSplits",
    "ImageSet",
    "StreamedImages",
    "StreamedSplits",
    "batch_source",
    "batches",
    "detect_layout",
    "embedded_data_path",
    "load_dataset",
    "open_data",
    "open_stream",
    "random_crop_flip",
]
