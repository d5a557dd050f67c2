"""The integer view of each quantized piece: the small pure functions export is made of.

A weight quantizer's output is `codes * scale` with integer codes; an activation quantizer's output
is `code * step` with integer codes in [qmin, qmax]. Batch norm + activation quantizer after an
integer accumulator become per-channel integer thresholds on that accumulator
(`pixelq.integer.transforms.fold_thresholds`).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ExportError
from ..integer.transforms import INT32_MAX


def _per_channel(scale: Tensor, out_channels: int) -> np.ndarray:
    """A per-tensor or per-channel scale as one float64 value per output channel."""
    return np.broadcast_to(scale.detach().double().reshape(-1).numpy(), (out_channels,)).copy()


def _view(piece: nn.Module, method: str, what: str):
    """`piece`'s integer view `method`, or an ExportError naming what has none."""
    view = getattr(piece, method, None)
    if view is None:
        raise ExportError(f"{what} {type(piece).__name__} has no integer form; integer export needs binary, ternary, "
                          "dorefa or signed lsq weights, mid_tread, pact or lsq activations, and a pixel-embedding, "
                          "naive, thermometer or int8 first layer")
    return view


def weight_integers(quantizer: nn.Module, w: Tensor) -> tuple:
    """(codes, scale): integer codes (int32, w's shape) and one scale per output channel (float64),
    with quantizer(w) == codes * scale[:, None, ...] up to float rounding."""
    codes, scale = _view(quantizer, "integer_weights", "weight quantizer")(w.detach().float())
    return codes.to(torch.int32).numpy(), _per_channel(torch.as_tensor(scale), w.shape[0])


def weight_code_grid(quantizer: nn.Module) -> tuple:
    """(lowest, stride, bits): the quantizer's integer weight codes are lowest + stride * u with
    u in [0, 2^bits), which is how they are packed. Binary {-1, +1} is 1 bit (stride 2)."""
    return _view(quantizer, "weight_code_grid", "weight quantizer")()


def activation_grid(quantizer: nn.Module) -> tuple:
    """(step, qmin, qmax): the quantizer (or first-layer encoder) emits code * step, code in [qmin, qmax]."""
    return _view(quantizer, "activation_grid", "activation")()


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple:
    """(scale, shift) per channel, float64, of eval-mode batch norm: y = scale * x + shift."""
    inv = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(inv)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(inv)
    scale = gamma * inv
    return scale.numpy(), (beta - bn.running_mean.double() * scale).numpy()


@torch.no_grad()
def freeze_input_table(encoder: nn.Module, in_channels: int) -> tuple:
    """(lut, step, qmin, qmax): any per-pixel encoder as a lookup table of integer codes,
    lut[t, p, j] = code of output channel t*d + j for pixel value p (tables, 256, d), int16.
    One table when every colour's is the same (a shared pixel embedding), else one per colour."""
    step, qmin, qmax = activation_grid(encoder)
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256).expand(1, in_channels, 1, 256).contiguous()
    values = encoder(pixels).double().reshape(in_channels, -1, 256).transpose(1, 2)  # (C, 256, d)
    codes = torch.round(values / step).clamp(qmin, qmax).to(torch.int16).numpy()
    if all(np.array_equal(codes[0], c) for c in codes[1:]):
        codes = codes[:1]
    return np.ascontiguousarray(codes), step, qmin, qmax


def accumulator_bound(kernel_elements: int, in_qmax: int, w_lowest: int, w_highest: int) -> int:
    """Largest |accumulator| a layer can reach: taps * inputs * max |code| * max |weight code|."""
    return kernel_elements * in_qmax * max(abs(w_lowest), abs(w_highest))


def check_accumulator_range(name: str, kernel_elements: int, in_qmax: int, w_lowest: int, w_highest: int) -> None:
    """ExportError if the layer's int32 accumulators could overflow."""
    bound = accumulator_bound(kernel_elements, in_qmax, w_lowest, w_highest)
    if bound > INT32_MAX:
        raise ExportError(f"{name}: accumulators could reach {bound}, beyond int32; use fewer input channels "
                          "or fewer weight/activation bits")
