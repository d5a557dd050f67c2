"""Decode once, keep the uint8 arrays: `load_dataset(path)` with a cache keyed by the source."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import DataSplits, ImageSet
from .readers import READERS, detect_layout

CACHE_VERSION = 1
DEFAULT_DATA = "cifar10-jpeg-subset.tar.gz"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pixelq"


def embedded_data_path() -> Path:
    """The stratified CIFAR-10-JPEG subset shipped inside the package (demo and tests default)."""
    return Path(str(resources.files("pixelq.data") / "assets" / DEFAULT_DATA))


def source_fingerprint(path: Path) -> str:
    """Hash of every file's relative name, size and mtime under `path`: a changed source changes it."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def _cache_entry(cache_dir: Path, layout: str, path: Path, image_size: "int | None" = None) -> Path:
    key = f"{CACHE_VERSION}\0{layout}\0{path.resolve()}\0{source_fingerprint(path)}"
    if image_size is not None:  # the key of an as-stored read is the one earlier versions wrote
        key += f"\0size={image_size}"
    return cache_dir / f"{path.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _save(splits: DataSplits, entry: Path) -> None:
    """One .npy per array (a plain read to load, unlike a zip), written to a folder of this process's
    own, then renamed into place in one step. Several processes (DDP ranks, parallel jobs) may
    decode the same source at once: the first rename wins, the others find the entry there and drop
    their copy. A damaged entry is first renamed aside, so no reader ever sees a half-written one."""
    tmp = entry.with_name(f".{entry.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        parts = (splits.train.images, splits.train.labels, splits.test.images, splits.test.labels)
        for name, array in zip(ARRAYS, parts):
            np.save(tmp / f"{name}.npy", array)
        (tmp / "classes.json").write_text(json.dumps(splits.classes))
        if entry.exists():  # damaged (it failed to load): move it aside in one step, then delete it
            trash = entry.with_name(f".{entry.name}.old{os.getpid()}")
            try:
                os.replace(entry, trash)
            except OSError:
                pass  # another process moved it first
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process's complete entry is in place
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"cannot write the decode cache at {entry.parent} ({e.strerror or e}); going on without it, "
                      "so the data is decoded again next time. Set XDG_CACHE_HOME to a writable folder",
                      stacklevel=3)


def _load(entry: Path, source: str) -> DataSplits:
    classes = json.loads((entry / "classes.json").read_text())
    a = {name: np.load(entry / f"{name}.npy") for name in ARRAYS}
    return DataSplits(
        ImageSet(a["train_images"], a["train_labels"], classes),
        ImageSet(a["test_images"], a["test_labels"], classes),
        source,
    )


def load_dataset(path: "str | os.PathLike | None" = None, cache_dir: "str | os.PathLike | None" = None,
                 use_cache: bool = True, image_size: "int | None" = None) -> DataSplits:
    """Read the data set at `path` (any layout `pixelq.data.readers` knows) as uint8 NHWC arrays.

    `path=None` loads the embedded subset. `image_size=S` scales every image's shorter side to S
    and keeps the centre S x S (needed for folders of mixed sizes, e.g. ImageNet-style trees); None
    keeps the stored size. The decoded arrays are cached in `cache_dir` (default
    `$XDG_CACHE_HOME/pixelq`); the key covers the path, the reader, the image size and every source
    file's size and mtime, so an edited source is decoded again.
    """
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive int or None, got {image_size!r}")
    path = Path(path) if path is not None else embedded_data_path()
    layout, root = detect_layout(path)
    if not use_cache:
        return READERS[layout](root, image_size)
    entry = _cache_entry(Path(cache_dir) if cache_dir is not None else default_cache_dir(), layout, root, image_size)
    if entry.is_dir():
        try:
            return _load(entry, str(path))
        except (OSError, ValueError, KeyError, TypeError, DataError) as e:
            warnings.warn(f"{entry}: unreadable cache ({e}); decoding {path} again", stacklevel=2)
    splits = READERS[layout](root, image_size)
    _save(splits, entry)
    return splits
