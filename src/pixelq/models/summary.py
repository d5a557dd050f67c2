"""Per-layer precision and deployed size, read from the quantizers' `bits`."""
from __future__ import annotations

from torch import nn

from ..nn import PixelEmbedding, QuantConv2d, QuantLinear
from .common import FLOAT_BITS


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
    """Cost of a model's first layer (its input encoder + the first conv) on one height x width image:
    MACs of the first conv, bit-ops = MACs * input bits * weight bits (32 for float), and the
    parameter bits it stores (conv weights at their bits, a pixel-embedding table at its code bits,
    any other encoder parameter at 32)."""
    modules = list(model.named_modules())
    encoder_name, encoder = next((n, m) for n, m in modules if hasattr(m, "quantized") and hasattr(m, "out_channels"))
    conv_name, conv = next((n, m) for n, m in modules if isinstance(m, nn.Conv2d))
    out_h = (height + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    out_w = (width + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
    macs = out_h * out_w * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    weight_bits = conv.weight_quantizer.bits if conv.weight_quantizer is not None else FLOAT_BITS
    rows = [r for r in layer_bits(model) if r["name"] == f"{conv_name}.weight" or r["name"].startswith(f"{encoder_name}.")]
    return {"macs": macs, "input_bits": encoder.bits, "weight_bits": weight_bits,
            "bops": macs * encoder.bits * weight_bits, "param_bits": sum(r["params"] * r["bits"] for r in rows)}


def layer_costs(model: nn.Module, image_shape: tuple) -> list[dict]:
    """Per conv/linear layer on one (H, W, C) image: MACs, weight and input bits, bit-operations
    (BOPs = MACs * weight bits * input bits, as SAQ counts them) and the weight bits stored.

    Found by one forward pass. A layer's input bits are those of the quantizer (or input encoder)
    whose output it reads; an input no quantizer produced directly (the pooled codes before the last
    layer) counts at the bits of the last quantizer that ran before it; float everywhere else (32).
    """
    import torch

    from ..quant import Quantizer

    produced: dict[int, int] = {}
    last = {"bits": FLOAT_BITS}
    rows: list[dict] = []

    def quantized(module, _inputs, output):
        if isinstance(output, torch.Tensor):
            produced[output.data_ptr()] = last["bits"] = module.bits

    def measured(name):
        def hook(module, inputs, output):
            x = inputs[0]
            in_bits = produced.get(x.data_ptr(), last["bits"] if produced else FLOAT_BITS)
            quantizer = getattr(module, "weight_quantizer", None)
            w_bits = quantizer.bits if quantizer is not None else FLOAT_BITS
            if isinstance(module, nn.Conv2d):
                macs = output[0].numel() * module.weight[0].numel()
            else:
                macs = module.in_features * module.out_features
            rows.append({"layer": name, "kind": type(module).__name__, "macs": macs, "weight_bits": w_bits,
                         "input_bits": in_bits, "bops": macs * w_bits * in_bits,
                         "param_bits": module.weight.numel() * w_bits})
        return hook

    weight_quantizers = {id(getattr(m, "weight_quantizer", None)) for m in model.modules()}
    hooks = []
    for name, module in model.named_modules():
        is_encoder = getattr(module, "quantized", False) and hasattr(module, "bits")
        if (isinstance(module, Quantizer) and id(module) not in weight_quantizers) or is_encoder:
            hooks.append(module.register_forward_hook(quantized))
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(measured(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *image_shape), dtype=torch.uint8))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def cost_totals(rows: list[dict]) -> dict:
    """Sums of MACs, BOPs and stored weight bits over `layer_costs` (or `graph_costs`) rows."""
    return {key: sum(r[key] for r in rows) for key in ("macs", "bops", "param_bits")}
