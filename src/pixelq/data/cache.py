"""Decode once, keep the uint8 arrays: `load_dataset(path)` with a cache keyed by the source."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
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


def _cache_file(cache_dir: Path, layout: str, path: Path) -> Path:
    key = hashlib.sha256(f"{CACHE_VERSION}\0{layout}\0{path.resolve()}\0{source_fingerprint(path)}".encode())
    return cache_dir / f"{path.name}-{key.hexdigest()[:16]}.npz"


def _save(splits: DataSplits, file: Path) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(
        tmp,
        train_images=splits.train.images, train_labels=splits.train.labels,
        test_images=splits.test.images, test_labels=splits.test.labels,
        classes=np.frombuffer(json.dumps(splits.classes).encode(), dtype=np.uint8),
    )
    os.replace(tmp, file)


def _load(file: Path, source: str) -> DataSplits:
    with np.load(file) as z:
        classes = json.loads(z["classes"].tobytes().decode())
        return DataSplits(
            ImageSet(z["train_images"], z["train_labels"], classes),
            ImageSet(z["test_images"], z["test_labels"], classes),
            source,
        )


def load_dataset(path: "str | os.PathLike | None" = None, cache_dir: "str | os.PathLike | None" = None,
                 use_cache: bool = True) -> DataSplits:
    """Read the data set at `path` (any layout `pixelq.data.readers` knows) as uint8 NHWC arrays.

    `path=None` loads the embedded subset. The decoded arrays are cached in `cache_dir`
    (default `$XDG_CACHE_HOME/pixelq`); the key covers the path, the reader and every source file's
    size and mtime, so an edited source is decoded again.
    """
    path = Path(path) if path is not None else embedded_data_path()
    layout, root = detect_layout(path)
    if not use_cache:
        return READERS[layout](root)
    file = _cache_file(Path(cache_dir) if cache_dir is not None else default_cache_dir(), layout, root)
    if file.is_file():
        try:
            return _load(file, str(path))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, DataError) as e:
            warnings.warn(f"{file}: unreadable cache ({e}); decoding {path} again", stacklevel=2)
    splits = READERS[layout](root)
    _save(splits, file)
    return splits
