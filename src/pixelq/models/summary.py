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


def first_layer_cost(model: nn.Module, height: int, width: int) -> dict:
    """Cost of a ResNet's first layer (encoder + first conv) on one height x width image:
    MACs of the first conv, bit-ops = MACs * input bits * weight bits (32 for float), and the
    parameter bits it stores (conv weights at their bits, a pixel-embedding table at its code bits,
    any other encoder parameter at 32)."""
    stem = model.stem
    conv, encoder = stem.conv, stem.encoder
    out_h = (height + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    out_w = (width + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
    macs = out_h * out_w * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    weight_bits = conv.weight_quantizer.bits if conv.weight_quantizer is not None else FLOAT_BITS
    rows = [r for r in layer_bits(model) if r["name"].startswith("stem.conv.weight") or r["name"].startswith("stem.encoder.")]
    return {"macs": macs, "input_bits": encoder.bits, "weight_bits": weight_bits,
            "bitops": macs * encoder.bits * weight_bits, "param_bits": sum(r["params"] * r["bits"] for r in rows)}
