"""Per-layer precision and deployed size, read from the quantizers' `bits`."""
from __future__ import annotations

from torch import nn

from ..nn import PixelEmbedding, QuantConv2d, QuantLinear

FLOAT_BITS = 32


def layer_bits(model: nn.Module) -> list[dict]:
    """One row per parameter tensor: name, count, bits it is stored with once deployed.

    Conv/linear weights count at their weight quantizer's bits, the pixel-embedding table at the
    embedding's code bits; everything else (batch norm, biases, learned scales) at 32 bits.
    """
    bits_of: dict[str, int] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, (QuantConv2d, QuantLinear)) and module.weight_quantizer is not None:
            bits_of[prefix + "weight"] = module.weight_quantizer.bits
        elif isinstance(module, PixelEmbedding):
            bits_of[prefix + "table"] = module.bits
    return [
        {"name": name, "params": p.numel(), "bits": bits_of.get(name, FLOAT_BITS)}
        for name, p in model.named_parameters()
    ]


def model_size_bytes(model: nn.Module) -> float:
    """Deployed size: sum of params * bits / 8 over `layer_bits`."""
    return sum(row["params"] * row["bits"] for row in layer_bits(model)) / 8
