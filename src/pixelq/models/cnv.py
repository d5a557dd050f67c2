"""FINN's and Brevitas's CNV (the bnn_pynq example network), with pixelq's first layers.

    encoder -> conv 64 -> conv 64 -> max-pool -> conv 128 -> conv 128 -> max-pool
            -> conv 256 -> conv 256 -> flatten -> linear 512 -> linear 512 -> linear classes

Every conv is 3x3 and unpadded, so a 32x32 image ends as a 1x1 map of 256 channels (larger images
end as larger maps, averaged to one position: for 32x32 the average is the map itself); each conv and
hidden linear layer is followed by batch norm and the activation (a quantizer, or ReLU in float),
the last linear layer by nothing. As in Brevitas's version, the first conv reads the input
encoder's codes (there an 8-bit input quantizer; here any pixelq first layer) and the last layer is
quantized, without bias.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..errors import ConfigError
from ..nn import QuantConv2d, QuantLinear, images_to_nchw, make_encoder
from .common import (FLOAT_BITS, activation, apply_overrides, check_common_settings, config_from_kwargs,
                     default_act_quantizer, default_weight_quantizer)
from .registry import register_model

POOL_AFTER = (1, 3)  # max-pool after the second and the fourth conv


@dataclass
class CNVConfig:
    widths: tuple = (64, 64, 128, 128, 256, 256)
    hidden: tuple = (512, 512)
    in_channels: int = 3
    num_classes: int = 10
    first_layer: str = "float"
    first_layer_kwargs: dict = field(default_factory=dict)
    wbits: int = FLOAT_BITS
    abits: int = FLOAT_BITS
    last_layer: str = "quantized"
    overrides: dict = field(default_factory=dict)

    def validate(self) -> None:
        if len(self.widths) != 6 or not self.hidden:
            raise ConfigError(f"CNV has six convs and at least one hidden linear layer, got widths {self.widths}, "
                              f"hidden {self.hidden}")
        check_common_settings(self)


class CNV(nn.Module):
    """CNV on uint8 images (N, H, W, C) or (N, C, H, W) of at least 32x32 pixels, returning float logits."""

    def __init__(self, cfg: CNVConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        wq, aq = default_weight_quantizer(cfg.wbits), default_act_quantizer(cfg.abits)
        self.encoder = make_encoder(cfg.first_layer, cfg.in_channels, **cfg.first_layer_kwargs)
        layers, channels = [], self.encoder.out_channels
        for i, width in enumerate(cfg.widths):
            first_wq = wq if i > 0 or self.encoder.quantized else None  # float weights only after a float encoder
            layers += [QuantConv2d(channels, width, 3, bias=False, weight_quantizer=first_wq), nn.BatchNorm2d(width),
                       activation(aq, after_add=True)]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        layers = []
        for width in cfg.hidden:
            layers += [QuantLinear(channels, width, bias=False, weight_quantizer=wq), nn.BatchNorm1d(width),
                       activation(aq, after_add=True)]
            channels = width
        quantized_last = cfg.last_layer == "quantized" and wq is not None
        layers.append(QuantLinear(channels, cfg.num_classes, bias=not quantized_last,
                                  weight_quantizer=default_weight_quantizer(cfg.wbits, per_channel=False)
                                  if quantized_last else None))
        self.classifier = nn.Sequential(*layers)
        apply_overrides(self, cfg.overrides)

    def to_nchw(self, x: Tensor) -> Tensor:
        """Check dtype, shape and size (at least 32x32: its convs are unpadded); NHWC input becomes an NCHW view."""
        return images_to_nchw(x, self.config.in_channels, min_size=32)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(self.encoder(self.to_nchw(x)))).flatten(1))


@register_model("cnv")
def cnv(**kwargs) -> CNV:
    """FINN's / Brevitas's CNV for 32x32 images (or larger): six unpadded 3x3 convs (64-64-pool-128-128-pool-256-256),
    two hidden linear layers of 512, batch norm everywhere but the last layer."""
    return CNV(config_from_kwargs(CNVConfig, {}, kwargs))
