"""Image folders read lazily, for data sets larger than memory.

`open_stream(root)` lists `ROOT/{train,test|val}/<class>/<image>` (names only; nothing is decoded)
and returns `StreamedSplits`. Images are decoded to uint8 as batches need them, by the worker
processes of a torch DataLoader; `pixelq.data.batches` then crops and flips each batch exactly as
it would the same images held in memory. So memory holds the file list and a few batches in
flight, whatever the size of the data set.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .dataset import check_trained_on, stratified_indices
from .readers import IMAGE_SUFFIXES, SPLITS, SPLIT_FOLDERS, _decode, _split_dir, detect_layout


class StreamedImages(torch.utils.data.Dataset):
    """Image files and their labels; item i is (image (H, W, C) uint8, label), decoded on access.

    `image_size` S scales each image's shorter side to S and keeps the centre S x S (as in memory);
    None keeps the stored size, which every image must then share. Grey images among colour ones
    are read as colour, as in memory.
    """

    def __init__(self, files: list, labels: np.ndarray, classes: list, image_size: "int | None", channels: int):
        self.files, self.labels, self.classes = list(files), np.asarray(labels, np.int64), list(classes)
        self.image_size, self.channels = image_size, channels
        self._shape = None if image_size is None else (image_size, image_size, channels)
        self.resized_crop_seed = None  # set by `with_random_resized_crop`

    def with_random_resized_crop(self, seed: int) -> "StreamedImages":
        """These images, each decoded as a random-resized crop + flip (`random_resized_crop`) drawn
        from (seed, index): the usual train transform for photographs larger than `image_size`."""
        if self.image_size is None:
            raise DataError("a random-resized crop needs an output size: pass --image-size S")
        out = StreamedImages(self.files, self.labels, self.classes, self.image_size, self.channels)
        out.resized_crop_seed = seed
        return out

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_shape(self) -> tuple:
        """(H, W, C) of every image (the first image's, when stored sizes are kept)."""
        if self._shape is None:
            self._shape = self.decode(0).shape
        return tuple(self._shape)

    def decode(self, i: int) -> np.ndarray:
        name = self.files[i]
        with open(name, "rb") as f:
            data = f.read()
        if self.resized_crop_seed is None:
            a = _decode(data, name, self.image_size)
        else:
            a = random_resized_crop(_decode(data, name), self.image_size,
                                    np.random.default_rng([self.resized_crop_seed, i]))
        if a.ndim == 2:
            a = a[:, :, None]
        if a.shape[2] != self.channels:
            a = np.asarray(Image.fromarray(a[..., 0]).convert("RGB")) if self.channels == 3 else a[..., :1]
        if self._shape is not None and a.shape != self._shape:
            raise DataError(f"{name}: image shape {a.shape} differs from {self._shape}; pass an image size "
                            "(--image-size S) to scale and centre-crop every image to S x S")
        return a

    def __getitem__(self, i: int) -> tuple:
        """(image, label), or (None, the error's message) for a file that cannot be read: `loader` raises
        it in the reading process, so the user sees the message, not a worker's traceback."""
        try:
            return self.decode(i), int(self.labels[i])
        except DataError as e:
            return None, str(e)

    def loader(self, index_batches: list, workers: int):
        """(uint8 NHWC tensor, int64 labels) for each list of indices, decoded by `workers` processes;
        DataError naming the first file of a batch that cannot be read."""
        self._shape = self.image_shape  # known before the workers copy this object
        index_batches = [[int(i) for i in idx] for idx in index_batches]
        for images, labels in torch.utils.data.DataLoader(self, batch_sampler=index_batches, num_workers=workers,
                                                          collate_fn=_collate, persistent_workers=False):
            if images is None:
                raise DataError(labels)
            yield images, labels

    def subset(self, n: int, seed: int = 0) -> "StreamedImages":
        """A stratified subset of about n images, the same one `ImageSet.subset` draws."""
        keep = stratified_indices(self.labels, len(self.classes), n, seed)
        if keep is None:
            return self
        out = StreamedImages([self.files[i] for i in keep], self.labels[keep], self.classes, self.image_size,
                             self.channels)
        out._shape = self._shape
        return out

    def require(self, classes: list, image_shape: "tuple | None", model: str) -> None:
        """DataError unless these images are what `model` was trained on (`check_trained_on`)."""
        check_trained_on(self, classes, image_shape, model)


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> np.ndarray:
    """Inception-style crop of a uint8 (H, W[, C]) image: a window of U(scale) of the area and
    log-U(ratio) aspect (10 tries, else the largest centred window within `ratio`), scaled to
    size x size (bilinear, antialiased) and flipped with probability 1/2."""
    h, w = image.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:
        aspect = min(max(w / h, ratio[0]), ratio[1])
        cw, ch = (w, int(round(w / aspect))) if w / h < aspect else (int(round(h * aspect)), h)
        cw, ch = min(cw, w), min(ch, h)
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    crop = crop.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    out = np.asarray(crop, dtype=np.uint8)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _collate(items: list) -> tuple:
    failed = next((message for image, message in items if image is None), None)
    if failed is not None:
        return None, failed
    return torch.from_numpy(np.stack([a for a, _ in items])), torch.tensor([y for _, y in items], dtype=torch.int64)


@dataclass
class StreamedSplits:
    """A streamed train and test split with the same classes (DataSplits' interface)."""

    train: StreamedImages
    test: StreamedImages
    source: str = ""

    @property
    def classes(self) -> list:
        return self.train.classes

    @property
    def channels(self) -> int:
        return self.train.channels

    def identity(self) -> dict:
        """Image shape and a SHA-256 of the class names and of every file's name, size, mtime and label."""
        h = hashlib.sha256(repr(self.classes).encode())
        for part in (self.train, self.test):
            for name, label in zip(part.files, part.labels):
                st = os.stat(name)
                h.update(f"{Path(name).name}\0{st.st_size}\0{st.st_mtime_ns}\0{label}\n".encode())
        return {"image_shape": list(self.train.image_shape), "images": [len(self.train), len(self.test)],
                "fingerprint": h.hexdigest(), "streamed": True}


def _list_split(folder: Path) -> tuple:
    files, names = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
            if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                files.append(entry.path)
                names.append(class_dir.name)
    return files, names


def _channels(files: list, image_size: "int | None", sample: int = 32) -> int:
    """3 if any of `sample` images spread over the list is colour, else 1: grey images among colour
    ones are read as colour, as in memory (where all are seen)."""
    for name in files[:: max(1, len(files) // sample)][:sample]:
        with open(name, "rb") as f:
            a = _decode(f.read(), name, image_size)
        if a.ndim == 3 and a.shape[2] == 3:
            return 3
    return 1


def open_stream(path: "str | os.PathLike", image_size: "int | None" = None) -> StreamedSplits:
    """List the image folders at `path` for streaming (see module doc); DataError for other layouts."""
    layout, root = detect_layout(Path(path))
    if layout != "image-folders":
        raise DataError(f"{path}: streaming reads image folders ROOT/{{train,test}}/<class>/<image>, not {layout} "
                        "data; extract the archive into folders, or leave --stream off to read it into memory")
    listed = {}
    for split in SPLITS:
        files, names = _list_split(_split_dir(root, split))
        if not files:
            raise DataError(f"{root}: no images found for split {split!r} (looked in {' or '.join(SPLIT_FOLDERS[split])})")
        listed[split] = (files, names)
    classes = sorted(set(listed["train"][1]))
    if sorted(set(listed["test"][1])) != classes:
        raise DataError(f"{root}: train classes {classes} differ from test classes {sorted(set(listed['test'][1]))}")
    index = {c: i for i, c in enumerate(classes)}
    channels = _channels(listed["train"][0], image_size)
    parts = [StreamedImages(files, np.array([index[c] for c in names]), classes, image_size, channels)
             for files, names in (listed[s] for s in SPLITS)]
    return StreamedSplits(parts[0], parts[1], str(path))


def open_data(path: "str | os.PathLike | None" = None, image_size: "int | None" = None, stream: bool = False,
              memory_share: float = 0.5):
    """The data at `path`: streamed (`StreamedSplits`) when `stream` is asked for, or when image
    folders would decode to more than `memory_share` of this machine's memory; else decoded into
    memory once and cached (`load_dataset`)."""
    import warnings

    from .cache import load_dataset

    if stream:
        if path is None:
            raise DataError("streaming reads image folders given with --data; the embedded subset is read into memory")
        return open_stream(path, image_size)
    if path is not None and detect_layout(Path(path))[0] == "image-folders":
        splits = open_stream(path, image_size)  # lists the files (decodes one image to learn the shape)
        need = (len(splits.train) + len(splits.test)) * int(np.prod(splits.train.image_shape))
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if need > memory_share * have:
            warnings.warn(f"{path}: decoded, these images take {need / 2**30:.1f} GiB, more than "
                          f"{memory_share:.0%} of this machine's {have / 2**30:.1f} GiB; streaming them from disk",
                          stacklevel=2)
            return splits
    return load_dataset(path, image_size=image_size)

