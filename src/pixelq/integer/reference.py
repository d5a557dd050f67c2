"""The slow, obvious integer arithmetic the ops' reference computations are made of (numpy, int64):
a per-pixel lookup, an integer conv, integer thresholds. `pixelq.integer.ops` runs each op with them
(`Node.reference`); the fast runtime and the PyTorch fake-quant model are both checked against it."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def lut_reference(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """image (N, H, W, C) uint8, lut (T, 256, d) with T = 1 (shared) or C -> codes (N, H, W, C*d)."""
    n, h, w, c = image.shape
    tables = np.broadcast_to(lut, (c,) + lut.shape[1:]) if lut.shape[0] == 1 else lut
    out = np.stack([tables[ch][image[..., ch]] for ch in range(c)], axis=3)  # (N, H, W, C, d)
    return out.reshape(n, h, w, c * lut.shape[2]).astype(np.int64)


def conv2d_reference(x: np.ndarray, weight: np.ndarray, stride: int, padding: int, groups: int = 1) -> np.ndarray:
    """Integer conv, NHWC codes x OHWI codes -> int64 (N, Ho, Wo, O), zero padding, via im2col.
    With `groups`, weight is (O, kh, kw, I / groups): group g's O / groups outputs read its inputs."""
    n, h, w, c = x.shape
    o, kh, kw, ci = weight.shape
    if ci * groups != c or o % groups:
        raise InputError(f"conv expects {ci * groups} input channels{f' in {groups} groups' if groups > 1 else ''}, "
                         f"got {c}")
    xp = np.pad(np.asarray(x, np.int64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    ho, wo = windows.shape[1:3]
    if groups > 1:  # each group's outputs over its own input channels, all groups in one product
        w = np.asarray(weight, np.int64).reshape(groups, o // groups, kh, kw, ci)
        out = np.einsum("nhwgcyx,goyxc->nhwgo", windows.reshape(n, ho, wo, groups, ci, kh, kw), w, optimize=True)
        return out.reshape(n, ho, wo, o)
    cols = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, kh * kw * c)
    return (cols @ np.asarray(weight, np.int64).reshape(o, -1).T).reshape(n, ho, wo, o)


def threshold_reference(acc: np.ndarray, direction: np.ndarray, thresholds: np.ndarray, qmin: int) -> np.ndarray:
    """code = qmin + #{k : direction * acc >= thresholds[:, k]}, channel last."""
    signed = np.asarray(acc, np.int64) * direction.astype(np.int64)
    return qmin + (signed[..., None] >= thresholds.astype(np.int64)).sum(-1)
