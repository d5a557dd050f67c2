"""Batched augmentation on uint8 tensors: no float image exists outside the model."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError


def crop_flip_draws(n: int, pad: int = 4, flip: bool = True, generator: "torch.Generator | None" = None) -> tuple:
    """The random draws of `random_crop_flip` for n images: (row offsets, column offsets, flips)."""
    oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    flips = torch.rand(n, 1, generator=generator) < 0.5 if flip else torch.zeros(n, 1, dtype=torch.bool)
    return oy, ox, flips


def apply_crop_flip(images: Tensor, draws: tuple, pad: int = 4) -> Tensor:
    """Pad-`pad` crop at the drawn offsets, flipped where drawn, as a single gather: row index
    oy + i and column index ox + j (or ox + W-1-j when flipped) into the zero-padded batch."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise InputError(f"random_crop_flip takes uint8 (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
    oy, ox, flips = draws
    n, h, w, _ = images.shape
    padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad)) if pad else images
    cols = torch.where(flips, w - 1 - torch.arange(w), torch.arange(w).expand(n, w))
    rows = (oy + torch.arange(h)).view(n, h, 1)
    cols = (ox + cols).view(n, 1, w)
    return padded[torch.arange(n).view(n, 1, 1), rows, cols]


def random_crop_flip(images: Tensor, pad: int = 4, flip: bool = True, generator: "torch.Generator | None" = None) -> Tensor:
    """Pad-`pad` random crop plus random horizontal flip of a uint8 (N, H, W, C) batch: zero
    padding, one crop offset and one coin per image."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise InputError(f"random_crop_flip takes uint8 (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
    return apply_crop_flip(images, crop_flip_draws(len(images), pad, flip, generator), pad)


def alternating_flips(n: int, epoch: int, seed: int) -> Tensor:
    """Which of n images to flip in `epoch` under airbench's alternating flip: a coin per image
    drawn once from `seed`, then every image flipped the other way each epoch, so each image is
    seen both ways in any two epochs in a row."""
    first = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    return first ^ bool(epoch % 2)


def batch_source(part) -> tuple:
    """The (images, labels) `batches` takes for an ImageSet, or (stream, None) for a StreamedImages."""
    from .streaming import StreamedImages

    return (part, None) if isinstance(part, StreamedImages) else (part.images, part.labels)


def _in_memory(images, labels, index_batches):
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    for idx in index_batches:
        yield images[idx], labels[idx]


def batches(images, labels=None, batch_size: int = 128, shuffle: bool = False, augment: bool = False,
            generator: "torch.Generator | None" = None, drop_last: bool = False, shard: tuple = (0, 1),
            workers: int = 0, flips: "Tensor | None" = None):
    """Yield (uint8 NHWC tensor, int64 labels) batches.

    `images` is a numpy array or tensor (with `labels`), or a `StreamedImages` (labels inside),
    which is decoded by `workers` processes as the batches are needed. With `shuffle`, the order is
    one permutation drawn from `generator`; with `augment`, each batch is cropped and flipped with
    draws from it (`random_crop_flip`); `flips`, one bool per image, replaces the coins (an
    alternating flip: `alternating_flips`). `shard=(rank, world)` yields process `rank`'s share
    `[rank::world]` of each batch, cropped as it would be in the whole batch, so the processes of a
    data-parallel run together see exactly the batches one process would; and a stream yields
    exactly what the same images held in memory would.
    """
    from .streaming import StreamedImages

    rank, world = shard
    n = len(images)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    whole = [order[start:start + batch_size] for start in range(0, stop, batch_size)]
    mine = [idx[rank::world] for idx in whole]
    if isinstance(images, StreamedImages):
        loaded = images.loader(mine, workers)
    else:
        loaded = _in_memory(images, labels, mine)
    for (x, y), idx in zip(loaded, whole):
        if augment:
            oy, ox, coins = crop_flip_draws(len(idx), generator=generator)
            if flips is not None:
                coins = flips[idx].view(-1, 1)
            x = apply_crop_flip(x, (oy[rank::world], ox[rank::world], coins[rank::world]))
        yield x, y
