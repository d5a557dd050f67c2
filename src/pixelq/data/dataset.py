"""In-memory uint8 image data sets: what every reader returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError


@dataclass
class ImageSet:
    """Images (N, H, W, C) uint8, labels (N,) int64, and the class names labels index."""

    images: np.ndarray
    labels: np.ndarray
    classes: list

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise DataError(f"{len(self.images)} images but labels of shape {self.labels.shape}")
        self.labels = self.labels.astype(np.int64, copy=False)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(f"labels must lie in [0, {len(self.classes)}), got [{self.labels.min()}, {self.labels.max()}]")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: int, seed: int = 0) -> "ImageSet":
        """A stratified subset of about n images: the same share of every class, drawn with `seed`."""
        if n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        keep = []
        for c in range(len(self.classes)):
            idx = np.flatnonzero(self.labels == c)
            take = int(round(n * len(idx) / len(self)))
            keep.append(rng.choice(idx, size=take, replace=False))
        keep = np.sort(np.concatenate(keep))
        return ImageSet(self.images[keep], self.labels[keep], self.classes)


@dataclass
class DataSplits:
    """A train and a test ImageSet with the same classes and image shape."""

    train: ImageSet
    test: ImageSet
    source: str = ""

    def __post_init__(self):
        if self.train.classes != self.test.classes:
            raise DataError(f"{self.source}: train and test have different classes")
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise DataError(
                f"{self.source}: train images are {self.train.images.shape[1:]}, test images {self.test.images.shape[1:]}"
            )

    @property
    def classes(self) -> list:
        return self.train.classes

    @property
    def channels(self) -> int:
        return self.train.images.shape[-1]
