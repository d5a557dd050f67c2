import numpy as np
import pytest
import torch

from pixelq.data import DataSplits, ImageSet


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
