"""Readers for the layouts pixelq knows, each returning uint8 NHWC DataSplits.

- image folders `ROOT/{train,test}/<class>/<image>` (suffixes: `pixelq.images.IMAGE_SUFFIXES`; an
  ImageNet-style `val/` is read as the test split), also inside a .tar / .tar.gz (under one top folder or none);
- CIFAR-10 and CIFAR-100 in the official python format (`cifar-10-batches-py/`,
  `cifar-100-python/`, fine labels), given that folder or the one holding it;
- MNIST-style IDX files (`train-images-idx3-ubyte[.gz]` and friends).
Every reader takes `image_size`: None keeps the images as stored (they must then share one size);
an int S scales each image's shorter side to S and keeps the centre S x S (ImageNet's eval
transform), which folders of mixed sizes need. Images are decoded as they are read, so only the
uint8 arrays stay in memory. Nothing is skipped silently: a file that cannot be read raises
DataError naming it.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..images import IMAGE_SUFFIXES, fit
from .dataset import DataSplits, ImageSet

SPLITS = ("train", "test")
# folder names read as each split, first found wins: ImageNet-style trees call the test split `val`
SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val")}


def _decode_jpeg(data: bytes, image_size: "int | None") -> "np.ndarray | None":
    """A baseline grey or colour JPEG through libjpeg-turbo (simplejpeg): the same pixels as Pillow,
    about 5x faster on small images (`pixelq bench-data`). None for what it does not take (CMYK...)."""
    import simplejpeg

    try:
        h, w, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # let Pillow say what is wrong
    if colourspace not in ("Gray", "YCbCr", "RGB"):
        return None
    scale = {}
    if image_size is not None:  # Pillow's draft(): the largest 1/s, s in 8, 4, 2, 1, that keeps both sides >= S
        s = next(s for s in (8, 4, 2, 1) if s <= min(w // image_size, h // image_size) or s == 1)
        scale = {"min_height": -(-h // s), "min_width": -(-w // s)}
    a = simplejpeg.decode_jpeg(data, colorspace="GRAY" if colourspace == "Gray" else "RGB", **scale)
    if image_size is not None:
        a = np.asarray(fit(Image.fromarray(a[..., 0] if a.shape[2] == 1 else a), image_size))
    return a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a


def _decode(data: bytes, name: str, image_size: "int | None" = None) -> np.ndarray:
    try:
        if data[:2] == b"\xff\xd8":
            a = _decode_jpeg(data, image_size)
            if a is not None:
                return a
        with Image.open(io.BytesIO(data)) as img:
            if image_size is not None:
                img.draft(None, (image_size, image_size))  # JPEG: decode at the smallest DCT scale >= S
            img.load()
            if img.mode not in ("L", "RGB"):
                img = img.convert("RGB")
            if image_size is not None:
                img = fit(img, image_size)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: cannot decode image ({e}); remove or replace the file") from e


def resize_images(images: np.ndarray, image_size: "int | None") -> np.ndarray:
    """(N, H, W, C) uint8 through `fit` image by image; unchanged when already image_size square."""
    if image_size is None or images.shape[1:3] == (image_size, image_size):
        return images
    gray = images.shape[3] == 1
    out = [np.asarray(fit(Image.fromarray(a[..., 0] if gray else a), image_size)) for a in images]
    out = np.stack(out)
    return out[..., None] if gray else out


def _stack(items: list, split: str, source: str) -> ImageSet:
    """items: (class name, file name, decoded array). Classes are the sorted folder names."""
    if not items:
        raise DataError(f"{source}: no images found for split {split!r}")
    classes = sorted({c for c, _, _ in items})
    items = sorted(items, key=lambda t: (t[0], t[1]))
    if {a.shape[2] for _, _, a in items} == {1, 3}:  # a few grey images among colour ones (ImageNet has some)
        items = [(c, name, a.repeat(3, axis=2) if a.shape[2] == 1 else a) for c, name, a in items]
    first_name, first = items[0][1], items[0][2]
    for _, name, a in items:
        if a.shape != first.shape:
            raise DataError(f"{name}: image shape {a.shape} differs from {first.shape} of {first_name}; "
                            "pass an image size (--image-size S) to scale and centre-crop every image to S x S")
    index = {c: i for i, c in enumerate(classes)}
    return ImageSet(np.stack([a for _, _, a in items]), np.asarray([index[c] for c, _, _ in items], dtype=np.int64),
                    classes)


def _as_hwc(a: np.ndarray) -> np.ndarray:
    return a[:, :, None] if a.ndim == 2 else a


def _split_folders(splits: dict, source: str) -> DataSplits:
    train, test = (_stack(splits[s], s, source) for s in SPLITS)
    if train.classes != test.classes:
        raise DataError(f"{source}: train classes {train.classes} differ from test classes {test.classes}")
    return DataSplits(train, test, source)


def _split_dir(root: Path, split: str) -> "Path | None":
    return next((root / name for name in SPLIT_FOLDERS[split] if (root / name).is_dir()), None)


def read_image_folders(root: Path, image_size: "int | None" = None) -> DataSplits:
    """`root/{train,test|val}/<class>/<image>`."""
    splits: dict = {s: [] for s in SPLITS}
    for split in SPLITS:
        folder = _split_dir(root, split)
        if folder is None:
            raise DataError(f"{root}: no {' or '.join(SPLIT_FOLDERS[split])} folder")
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for f in sorted(class_dir.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    splits[split].append((class_dir.name, str(f), _as_hwc(_decode(f.read_bytes(), str(f), image_size))))
    return _split_folders(splits, str(root))


def read_image_folder_tar(path: Path, image_size: "int | None" = None) -> DataSplits:
    """The image-folder layout inside a .tar or .tar.gz (optionally under one top folder)."""
    found: dict = {name: [] for names in SPLIT_FOLDERS.values() for name in names}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) < 3 or Path(member.name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                folder, cls = parts[-3], parts[-2]
                if folder in found:
                    name = f"{path}:{member.name}"
                    found[folder].append((cls, name, _as_hwc(_decode(tar.extractfile(member).read(), name, image_size))))
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read the archive ({e}); it may be truncated or corrupt") from e
    splits = {s: next((found[n] for n in SPLIT_FOLDERS[s] if found[n]), []) for s in SPLITS}
    return _split_folders(splits, str(path))


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds only what the official CIFAR pickles hold: dicts, lists, strings, bytes and numpy
    arrays. Any other global a pickle names (the way a pickle runs code) is refused, never imported."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch holds only arrays, "
                                         "lists and strings, and this file asks to run other code")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            value = _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; the official CIFAR python folder is incomplete") from None
    except Exception as e:  # a corrupt pickle can raise almost anything
        raise DataError(f"{path}: cannot read the CIFAR batch ({type(e).__name__}: {e}); re-extract the archive "
                        "from the official release") from e
    if not isinstance(value, dict):
        raise DataError(f"{path}: not a CIFAR batch (holds a {type(value).__name__}, not a dict)")
    return value


def _class_names(path: Path, key: str) -> list:
    names = _unpickle(path).get(key)
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{path}: no list of class names under {key!r}; re-extract the official archive")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


def _cifar_batch(path: Path, label_key: str) -> tuple:
    batch = _unpickle(path)
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not a CIFAR batch (missing or bad {e})") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: expected (N, 3072) data and N labels, got {data.shape} and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _array_splits(train: tuple, test: tuple, classes: list, source: str, image_size: "int | None") -> DataSplits:
    return DataSplits(ImageSet(resize_images(train[0], image_size), train[1], classes),
                      ImageSet(resize_images(test[0], image_size), test[1], classes), source)


def read_cifar10(root: Path, image_size: "int | None" = None) -> DataSplits:
    """The official `cifar-10-batches-py` folder: data_batch_1..5, test_batch, batches.meta."""
    classes = _class_names(root / "batches.meta", "label_names")
    parts = [_cifar_batch(root / f"data_batch_{i}", "labels") for i in range(1, 6)]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return _array_splits(train, _cifar_batch(root / "test_batch", "labels"), classes, str(root), image_size)


def read_cifar100(root: Path, image_size: "int | None" = None) -> DataSplits:
    """The official `cifar-100-python` folder: train, test, meta; fine labels (100 classes)."""
    classes = _class_names(root / "meta", "fine_label_names")
    return _array_splits(_cifar_batch(root / "train", "fine_labels"), _cifar_batch(root / "test", "fine_labels"),
                         classes, str(root), image_size)


_IDX_DTYPES = {0x08: np.uint8}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e}); it may be truncated or corrupt") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DataError(f"{path}: IDX header says {count} bytes of data for shape {shape}, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_file(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: missing {stem}[.gz]; an IDX data set needs train/t10k images and labels")


def read_idx(root: Path, image_size: "int | None" = None) -> DataSplits:
    """MNIST-style IDX files: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] -> (N, H, W, 1)."""
    sets = []
    for prefix in ("train", "t10k"):
        images = _read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{root}: {prefix} has images {images.shape} but labels {labels.shape}; they must match")
        sets.append((images[..., None], labels))
    n_classes = int(max(s[1].max() for s in sets)) + 1
    classes = [str(i) for i in range(n_classes)]
    return _array_splits(sets[0], sets[1], classes, str(root), image_size)


def detect_layout(path: Path) -> tuple:
    """(layout name, path to hand its reader) for what `path` holds; DataError if none fits."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; pass --data a data set path (or omit it for the embedded subset)")
    if path.is_file():
        if tarfile.is_tarfile(path) or path.name.endswith((".tar", ".tar.gz", ".tgz")):
            return "image-folder-tar", path
        raise DataError(f"{path}: a file, but not a .tar/.tar.gz of image folders")
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "batches.meta").is_file():
            return "cifar10", candidate
    for candidate in (path, path / "cifar-100-python"):
        if (candidate / "meta").is_file() and (candidate / "train").is_file():
            return "cifar100", candidate
    if any(path.glob("train-images*idx3-ubyte*")):
        return "idx", path
    for candidate in (path, *sorted(p for p in path.iterdir() if p.is_dir())):
        if all(_split_dir(candidate, s) is not None for s in SPLITS):
            return "image-folders", candidate
    raise DataError(
        f"{path}: unknown layout; expected {{train,test or val}}/<class>/ image folders (or a .tar.gz of them), "
        "cifar-10-batches-py/, cifar-100-python/, or MNIST-style IDX files"
    )


READERS = {
    "image-folders": read_image_folders,
    "image-folder-tar": read_image_folder_tar,
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "idx": read_idx,
}
