"""Batched augmentation on uint8 tensors: no float image exists outside the model."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError


def random_crop_flip(images: Tensor, pad: int = 4, flip: bool = True, generator: "torch.Generator | None" = None) -> Tensor:
    """Pad-`pad` random crop plus random horizontal flip of a uint8 (N, H, W, C) batch.

    Zero padding, one crop offset and one coin per image. Done as a single gather: row index
    oy + i and column index ox + j (or ox + W-1-j when flipped) into the padded batch.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise InputError(f"random_crop_flip takes uint8 (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
    n, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad)) if pad else images
    oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    cols = torch.arange(w).expand(n, w)
    if flip:
        flipped = torch.rand(n, 1, generator=generator) < 0.5
        cols = torch.where(flipped, w - 1 - cols, cols)
    rows = (oy + torch.arange(h)).view(n, h, 1)
    cols = (ox + cols).view(n, 1, w)
    return padded[torch.arange(n).view(n, 1, 1), rows, cols]


def batches(images, labels, batch_size: int, shuffle: bool = False, augment: bool = False,
            generator: "torch.Generator | None" = None, drop_last: bool = False):
    """Yield (uint8 NHWC tensor, int64 labels) batches from numpy arrays or tensors."""
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    n = len(images)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        x = images[idx]
        if augment:
            x = random_crop_flip(x, generator=generator)
        yield x, labels[idx]
