"""GPFQ, greedy path-following quantization (Lybrand & Saab; Zhang, Zhou & Saab), and
round-to-nearest, the baseline it must beat. One layer at a time, on the layer's inputs.

For a neuron w ∈ R^N with inputs X ∈ R^{m×N} from the float network and X̃ from the network
quantized so far (columns X_t, X̃_t), GPFQ walks t = 1..N:

    q_t = Q_A(⟨X̃_t, u_{t−1} + w_t X_t⟩ / ‖X̃_t‖²),    u_t = u_{t−1} + w_t X_t − q_t X̃_t,

with u_0 = 0 and Q_A rounding to the nearest element of the alphabet A; u_t is the error so far of
the quantized neuron's output against the float one's, and each step picks the weight that best
cancels it. A = rad · linspace(−1, 1, 2^b), rad = C · median|W|.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError


def alphabet(weights: Tensor, bits: int, radius_factor: float) -> Tensor:
    """The 2^bits levels rad · linspace(−1, 1, 2^bits), rad = radius_factor · median|weights|."""
    if not 1 <= bits <= 8:
        raise ConfigError(f"GPFQ/RTN bits must lie in [1, 8], got {bits}")
    radius = radius_factor * weights.abs().median()
    return radius * torch.linspace(-1.0, 1.0, 2**bits, dtype=weights.dtype)


def _nearest(values: Tensor, levels: Tensor) -> Tensor:
    """Each value rounded to the nearest level (levels sorted ascending; ties to the lower)."""
    idx = torch.searchsorted(levels, values.contiguous()).clamp(1, len(levels) - 1)
    below, above = levels[idx - 1], levels[idx]
    return torch.where(values - below <= above - values, below, above)


def rtn_quantize(weight: Tensor, levels: Tensor) -> Tensor:
    """Round-to-nearest: every weight to its nearest level."""
    return _nearest(weight, levels)


@torch.no_grad()
def gpfq_quantize(weight: Tensor, inputs: Tensor, quantized_inputs: Tensor, levels: Tensor) -> Tensor:
    """GPFQ (module doc) for all neurons of a layer at once.

    weight (O, N): one row per neuron (a conv's weight flattened to O x C·kh·kw); inputs and
    quantized_inputs (m, N): the float and the quantized network's inputs to the layer (a conv's
    im2col patches). Returns the quantized weight (O, N), each entry a level.
    """
    if inputs.shape != quantized_inputs.shape or inputs.shape[1] != weight.shape[1]:
        raise ConfigError(f"GPFQ needs inputs (m, {weight.shape[1]}) from both networks, got "
                          f"{tuple(inputs.shape)} and {tuple(quantized_inputs.shape)}")
    x, xq = inputs.double(), quantized_inputs.double()
    w, levels64 = weight.double(), levels.double()
    u = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64)  # (m, O): each neuron's running error
    q = torch.empty_like(w)
    norms = (xq * xq).sum(0)
    for t in range(w.shape[1]):
        target = u + x[:, t:t + 1] * w[:, t]  # u_{t-1} + w_t X_t, every neuron
        if norms[t] > 0:
            q[:, t] = _nearest(xq[:, t] @ target / norms[t], levels64)
        else:  # the quantized network never feeds this input: nothing to correct, round the weight
            q[:, t] = _nearest(w[:, t], levels64)
        u = target - xq[:, t:t + 1] * q[:, t]
    return q.to(weight.dtype)
