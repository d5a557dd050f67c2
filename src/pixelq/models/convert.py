"""`quantize_model`: the fully quantized twin of a user's own float network.

The twin takes uint8 images (NHWC or NCHW). Its first conv reads them through an input encoder
(pixel embedding by default), every conv and linear layer becomes a `QuantConv2d` / `QuantLinear`
with the float layer's weights, and every ReLU an activation quantizer. Batch norm, pooling and the
rest stay as they are. So a model written by hand is trained quantized with one call, in pixelq's
loop or the user's own.
"""
from __future__ import annotations

import copy

from torch import Tensor, nn

from ..errors import ConfigError
from ..nn import QuantConv2d, QuantLinear, images_to_nchw, make_encoder
from ..quant import make_quantizer
from .common import FLOAT_BITS, apply_overrides, default_act_quantizer, default_weight_quantizer


class InputConv(nn.Module):
    """The first layer: the input encoder, then the first conv on its codes."""

    def __init__(self, encoder: nn.Module, conv: nn.Conv2d):
        super().__init__()
        self.encoder, self.conv = encoder, conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.encoder(x))


class QuantizedModel(nn.Module):
    """uint8 images (N, H, W, C) or (N, C, H, W) -> the converted network's output."""

    def __init__(self, body: nn.Module, in_channels: int):
        super().__init__()
        self.body, self.in_channels = body, in_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.body(images_to_nchw(x, self.in_channels))


def _quant_conv(conv: nn.Conv2d, in_channels: int, weight_quantizer, copy_weights: bool) -> QuantConv2d:
    q = QuantConv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode, weight_quantizer=weight_quantizer)
    if copy_weights:
        q.load_state_dict(conv.state_dict(), strict=False)
    return q


def quantize_model(model: nn.Module, first_layer: str = "pixel-embedding", wbits: int = 1, abits: int = 2,
                   last_layer: str = "quantized", in_channels: int = 3, first_layer_kwargs: "dict | None" = None,
                   overrides: "dict | None" = None) -> QuantizedModel:
    """The quantized twin of `model` (which is left untouched), as the module doc describes.

    The first `nn.Conv2d` in module order must be what the images enter; it keeps its weights when
    its input has as many channels as before (float, int8, naive encoders), else (pixel embedding,
    thermometer: d codes per colour) starts fresh. The last `nn.Linear` is quantized (and loses its
    bias, as pixelq's own models' last layers have none) when `last_layer == "quantized"`, else kept
    float. `overrides` sets single layers' precision by
    module-name pattern (e.g. `{"body.features.0.conv": "dorefa:4"}`), as for pixelq's models.
    """
    if last_layer not in ("float", "quantized"):
        raise ConfigError(f"last_layer must be float or quantized, got {last_layer!r}")
    body = copy.deepcopy(model)
    modules = dict(body.named_modules())
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not convs or "" in convs + linears:
        raise ConfigError("quantize_model needs a network whose images enter an nn.Conv2d inside it")
    if modules[convs[0]].in_channels != in_channels:
        raise ConfigError(f"the first conv {convs[0]!r} takes {modules[convs[0]].in_channels} channels, "
                          f"not in_channels={in_channels}")
    encoder = make_encoder(first_layer, in_channels, **(first_layer_kwargs or {}))
    wq, aq = default_weight_quantizer(wbits), default_act_quantizer(abits)
    replaced = {}
    for name, module in modules.items():
        if name == convs[0]:
            conv = _quant_conv(module, encoder.out_channels, wq if encoder.quantized else None,
                               copy_weights=encoder.out_channels == in_channels)
            replaced[name] = InputConv(encoder, conv)
        elif isinstance(module, nn.Conv2d):
            replaced[name] = _quant_conv(module, module.in_channels, wq, copy_weights=True)
        elif isinstance(module, nn.Linear):
            last = name == linears[-1]
            spec = default_weight_quantizer(wbits, per_channel=not last) if not last or last_layer == "quantized" else None
            # a quantized last layer has no bias: its logits are an integer accumulator times one scale
            bias = module.bias is not None and not (last and spec is not None)
            q = QuantLinear(module.in_features, module.out_features, bias, weight_quantizer=spec)
            q.load_state_dict(module.state_dict(), strict=False)
            replaced[name] = q
        elif isinstance(module, (nn.ReLU, nn.ReLU6)) and abits != FLOAT_BITS:
            replaced[name] = make_quantizer(aq, role="activation")
    for name, new in replaced.items():
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent] if parent else body, attr, new)
    twin = QuantizedModel(body, in_channels)
    apply_overrides(twin, overrides or {})
    return twin

