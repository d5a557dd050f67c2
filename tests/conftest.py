import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelq import TrainConfig
from pixelq.data import DataSplits, ImageSet

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"  # scripts tests import by putting it on sys.path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test decodes into its own cache folder, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    torch.manual_seed(0)


def make_splits(n_train=48, n_test=24, size=8, channels=3, classes=3, seed=0) -> DataSplits:
    """Small random uint8 data where the class is readable from the mean brightness."""
    rng = np.random.default_rng(seed)

    def part(n):
        labels = np.arange(n) % classes
        base = (labels * (200 // max(1, classes - 1)))[:, None, None, None]
        images = np.clip(base + rng.integers(0, 56, (n, size, size, channels)), 0, 255).astype(np.uint8)
        return ImageSet(images, labels.astype(np.int64), [f"c{i}" for i in range(classes)])

    return DataSplits(part(n_train), part(n_test), "synthetic")


@pytest.fixture
def tiny_splits():
    return make_splits()


def run_config(tmp_path, name="run", **kw) -> TrainConfig:
    """A quick training config writing into tmp_path/name."""
    base = dict(out=str(tmp_path / name), epochs=2, batch_size=16, lr=0.05, progress=False, threads=1)
    return TrainConfig(**{**base, **kw})


def write_image_dataset(tmp_path, splits):
    """`splits` as PNG image folders under tmp_path/data, so the CLI reads them like a user's data."""
    root = tmp_path / "data"
    for split, part in (("train", splits.train), ("test", splits.test)):
        for i, (img, label) in enumerate(zip(part.images, part.labels)):
            d = root / split / part.classes[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(d / f"{i:04d}.png")
    return root


def write_cifar(root, kind, protocol=pickle.DEFAULT_PROTOCOL, bytes_names=False):
    """A tiny official-format CIFAR-10 or CIFAR-100 python folder; returns the batches written.
    `bytes_names` stores the class names as bytes, as Python 2 wrote the official files."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    batches_ = {}

    def dump(name, obj):
        with open(root / name, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)

    def batch(n, key, classes):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        return {"data": data, key: rng.integers(0, classes, n).tolist()}

    def names(prefix, n):
        return [f"{prefix}{i}".encode() if bytes_names else f"{prefix}{i}" for i in range(n)]

    if kind == "cifar10":
        dump("batches.meta", {"label_names": names("n", 10)})
        for i in range(1, 6):
            batches_[f"data_batch_{i}"] = batch(4, "labels", 10)
            dump(f"data_batch_{i}", batches_[f"data_batch_{i}"])
        batches_["test_batch"] = batch(3, "labels", 10)
        dump("test_batch", batches_["test_batch"])
    else:
        dump("meta", {"fine_label_names": names("f", 100), "coarse_label_names": []})
        for name, n in (("train", 5), ("test", 3)):
            batches_[name] = batch(n, "fine_labels", 100)
            batches_[name]["coarse_labels"] = [0] * n
            dump(name, batches_[name])
    return batches_


def trained_like(model, seed=0, size=16):
    """Give batch norm real running statistics, as training would, then switch to eval."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8, generator=g))
    return model.eval()


def write_imagenet_style(root, sizes=((40, 30), (25, 50), (33, 33)), suffix=".JPEG"):
    """train/ and val/ folders of smooth JPEGs in mixed sizes (W, H), as ImageNet's trees hold."""
    for split in ("train", "val"):
        for c, cls in enumerate(["cat", "dog"]):
            (root / split / cls).mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                y, x = np.mgrid[0:h, 0:w]
                a = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 60 + 120 * c)], -1).astype(np.uint8)
                Image.fromarray(a).save(root / split / cls / f"n{i:03d}{suffix}", quality=95)


class ByHand(torch.nn.Module):
    """A small CNN written by hand: max pooling, a biased conv, dropout, global pooling, two linear layers."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU()
        self.gap, self.drop = nn.AdaptiveAvgPool2d(1), nn.Dropout(0.2)
        self.fc1, self.relu3, self.fc2 = nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.drop(torch.flatten(self.gap(x), 1)))))
