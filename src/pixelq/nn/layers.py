"""Quantized layers that mirror torch.nn: same constructor, plus the quantizers."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..quant import make_quantizer


class _QuantizedOperands:
    """What a quantized conv and linear layer share: a weight and an input quantizer (None means float).

    Mixed in before the torch layer, so `__init__` builds the torch layer first and then adds the two
    quantizers as submodules; the layer's `forward` calls `quantized_operands(x)`.
    """

    def __init__(self, *args, weight_quantizer=None, input_quantizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quantizer = make_quantizer(weight_quantizer, role="weight")
        self.input_quantizer = make_quantizer(input_quantizer, role="activation")

    def quantized_weight(self) -> Tensor:
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def quantized_operands(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The input and the weight as the layer multiplies them."""
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return x, self.quantized_weight()


class QuantConv2d(_QuantizedOperands, nn.Conv2d):
    """`nn.Conv2d` whose input and weight pass through quantizers (None means float).

    `weight_quantizer` and `input_quantizer` take a quantizer module or a spec string such as
    "binary" or "mid_tread:2" (see `pixelq.quant.make_quantizer`).
    """

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(*self.quantized_operands(x), self.bias)


class QuantLinear(_QuantizedOperands, nn.Linear):
    """`nn.Linear` whose input and weight pass through quantizers (None means float)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(*self.quantized_operands(x), self.bias)


class ChannelOffset(nn.Module):
    """A learned offset per channel, added before an activation quantizer (ReActNet's RSign shift):
    each channel moves its own thresholds. It pays only where no batch norm comes before the
    quantizer (a batch norm's bias is the same offset), as on a ResNet block's input, read off the
    residual stream. Export folds it into that quantizer's integer thresholds: no cost at run time."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))  # a bias: no weight decay (training.loop)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias.view(1, -1, *([1] * (x.dim() - 2))).to(x.dtype)
