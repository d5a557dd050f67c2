"""The C kernels training runs with (csrc/train_kernels.c), and a switch to train without them.

Two kernels: the first conv over a pixel embedding as sums of table rows (`PixelEmbedding.conv_forward`),
and the mid-tread activation quantizer in one pass each way, alone or around a residual add
(`quant.ste`). They are optional: without a C compiler at install, inside `pytorch_ops()`, or while
torch.compile traces, training takes plain PyTorch ops instead, with the same values (the
quantizer's to the bit, the conv's to float rounding) and the same gradients, at more time per step.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

try:
    from . import _train_kernels as _built
except ImportError:  # pragma: no cover - built with pixelq
    _built = None

_enabled = True


def built() -> bool:
    """Whether the kernels were compiled at install."""
    return _built is not None


def get():
    """The kernel module, or None where training takes PyTorch's ops (see the module doc)."""
    if _built is None or not _enabled or torch.compiler.is_compiling():
        return None
    return _built


@contextmanager
def pytorch_ops():
    """Inside, training runs PyTorch's ops, not the kernels: a reference to check them against, or
    a baseline to time them against (`pixelq bench-train` does both)."""
    global _enabled
    saved, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = saved
