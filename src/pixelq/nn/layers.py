"""Quantized layers that mirror torch.nn: same constructor, plus the quantizers."""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ..quant import make_quantizer


class QuantConv2d(nn.Conv2d):
    """`nn.Conv2d` whose input and weight pass through quantizers (None means float).

    `weight_quantizer` and `input_quantizer` take a quantizer module or a spec string such as
    "binary" or "mid_tread:2" (see `pixelq.quant.make_quantizer`).
    """

    def __init__(self, *args, weight_quantizer=None, input_quantizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quantizer = make_quantizer(weight_quantizer, role="weight")
        self.input_quantizer = make_quantizer(input_quantizer, role="activation")

    def quantized_weight(self) -> Tensor:
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(nn.Linear):
    """`nn.Linear` whose input and weight pass through quantizers (None means float)."""

    def __init__(self, *args, weight_quantizer=None, input_quantizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quantizer = make_quantizer(weight_quantizer, role="weight")
        self.input_quantizer = make_quantizer(input_quantizer, role="activation")

    def quantized_weight(self) -> Tensor:
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return F.linear(x, self.quantized_weight(), self.bias)
