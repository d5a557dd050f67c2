"""In-memory uint8 image data sets: what every reader returns."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from ..errors import DataError


def stratified_indices(labels: np.ndarray, classes: int, n: int, seed: int) -> "np.ndarray | None":
    """Sorted indices of about n items with the same share of every class, drawn with `seed`;
    None when n covers them all. DataError when n is not an integer >= the class count."""
    if isinstance(n, bool) or not isinstance(n, int) or n < classes:
        raise DataError(f"a subset needs at least one image per class: at least {classes}, got {n!r}")
    if n >= len(labels):
        return None
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(classes):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, size=int(round(n * len(idx) / len(labels))), replace=False))
    return np.sort(np.concatenate(keep))


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
        """A stratified subset of about n images: the same share of every class, drawn with `seed`
        (so the first n of a class-sorted split, which would be one class, are never what is taken)."""
        keep = stratified_indices(self.labels, len(self.classes), n, seed)
        return self if keep is None else ImageSet(self.images[keep], self.labels[keep], self.classes)

    @property
    def image_shape(self) -> tuple:
        """(H, W, C) of every image."""
        return tuple(self.images.shape[1:])

    def require(self, classes: list, image_shape: "tuple | None", model: str) -> None:
        """DataError unless these images are what `model` was trained on (`check_trained_on`)."""
        check_trained_on(self, classes, image_shape, model)


def check_trained_on(images, classes: list, image_shape: "tuple | None", model: str) -> None:
    """DataError unless `images` (an ImageSet or a stream) are what `model` was trained on: the same
    class names in the same order (else its label indices mean other classes) and, when known, the
    same image shape."""
    if list(classes) != list(images.classes):
        raise DataError(f"{model} was trained on classes {list(classes)}, the data has {list(images.classes)}; "
                        "its predictions would be scored against the wrong labels. Use data with the same "
                        "class folders (names and order)")
    if image_shape and tuple(image_shape) != images.image_shape:
        h, w, _ = image_shape
        scale = f"--image-size {h} scales square images to it" if h == w else "scale the images to it"
        raise DataError(f"{model} was trained on images of shape {tuple(image_shape)} (H, W, C), the data has "
                        f"{images.image_shape}; {scale}, or use the matching data")


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

    def identity(self) -> dict:
        """What a run trained on these splits records: image shape and a SHA-256 of every class
        name, label and pixel, so that resuming on other data is noticed."""
        h = hashlib.sha256(json.dumps(self.classes).encode())
        for part in (self.train, self.test):
            h.update(repr(part.images.shape).encode())
            h.update(np.ascontiguousarray(part.labels))
            h.update(np.ascontiguousarray(part.images))
        return {"image_shape": list(self.train.image_shape), "images": [len(self.train), len(self.test)],
                "fingerprint": h.hexdigest(), "streamed": False}

    @property
    def channels(self) -> int:
        return self.train.images.shape[-1]
