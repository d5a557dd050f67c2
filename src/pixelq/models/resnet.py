"""CIFAR-style ResNets, float or quantized, with any first layer and a float or quantized last layer.

Block (the quantized form; with abits=32 the quantizers become ReLU / identity and it is the
usual He et al. basic block):

    q   = act_in(x)                     # only with residual_bits > abits: x's codes, requantized
    h   = act1(bn1(conv1(q)))
    y   = res_act(bn2(conv2(h)))        # quantized before the add, on the same grid as x
    out = act_out(y + shortcut(x))      # codes add as integers; act_out clips to the code range

Both addends carry codes of one activation quantizer, so the residual add is an integer add and
`act_out` is a clip, which keeps the whole block integer at deployment. Shortcuts:
"zero-pad" (He et al. option A: stride-2 subsampling and zero channels, no parameters, exact on
codes) or "conv" (a quantized 1x1 conv + BN, then `res_act` so its output is codes too).
The quantized last layer takes the global average of codes (an integer sum over a known count)
and has per-tensor-scaled weights and no bias, so logits are an integer accumulator times one scale.

`residual_bits` (default: abits) sets the bits of the residual stream: the stem's output, each
block's `res_act` and `act_out` (and a conv shortcut's `shortcut_act`). Above abits, every conv
still reads abits codes (`act_in` requantizes the block input, an integer threshold at
deployment), while the sum the blocks carry forward keeps more levels, as a float network's
residual stream does.

`signed_residual` quantizes each block's branch (`res_act`) on the signed form of the stream's
grid (codes -n .. n, n = 2^residual_bits - 1), so a block can lower the stream as well as raise
it, as a float block's bn2 output can; with the default unsigned branch the stream only grows
through a stage and saturates at its top code. The add is still an integer add clipped to the
stream's codes. A conv shortcut's codes stay unsigned.

`input_offsets` adds a learned offset per channel (`ChannelOffset`) to each block's input before
the quantizer that makes the convs' codes (`act_in`, present then even when residual_bits equals
abits): the one activation quantizer of the block with no batch norm before it to move its
thresholds. Export folds each offset into that quantizer's integer thresholds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..nn import ChannelOffset, QuantConv2d, QuantLinear, images_to_nchw, make_encoder
from ..quant import residual_fusion, ste
from .common import (FLOAT_BITS, activation, apply_overrides, check_common_settings, config_from_kwargs,
                     default_act_quantizer, default_weight_quantizer)
from .registry import register_model

SHORTCUTS = ("zero-pad", "conv")


@dataclass
class ResNetConfig:
    widths: tuple = (16, 32, 64)
    blocks: tuple = (3, 3, 3)
    shortcut: str = "zero-pad"
    in_channels: int = 3
    num_classes: int = 10
    first_layer: str = "float"
    first_layer_kwargs: dict = field(default_factory=dict)
    wbits: int = FLOAT_BITS
    abits: int = FLOAT_BITS
    last_layer: str = "float"
    residual_bits: "int | None" = None
    signed_residual: bool = False
    input_offsets: bool = False
    overrides: dict = field(default_factory=dict)

    @property
    def stream_bits(self) -> int:
        """The bits of the residual stream's codes (residual_bits, or abits when it is None)."""
        return self.abits if self.residual_bits is None else self.residual_bits

    def validate(self) -> None:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ConfigError(f"widths {self.widths} and blocks {self.blocks} must be non-empty and of equal length")
        if self.shortcut not in SHORTCUTS:
            raise ConfigError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        check_common_settings(self)
        if self.residual_bits is not None:
            if isinstance(self.residual_bits, bool) or self.residual_bits not in (*range(1, 9), FLOAT_BITS):
                raise ConfigError(f"residual_bits must be 1..8 or 32 (float), got {self.residual_bits!r}")
            if self.residual_bits < self.abits or (self.abits == FLOAT_BITS) != (self.residual_bits == FLOAT_BITS):
                raise ConfigError(f"residual_bits must be at least abits ({self.abits}) and float only when abits is, "
                                  f"got {self.residual_bits}")
        if self.signed_residual and self.abits == FLOAT_BITS:
            raise ConfigError("signed_residual quantizes the residual branch on a signed grid; a float network's "
                              "branch is signed already (needs abits 1..8)")
        if self.input_offsets and self.abits == FLOAT_BITS:
            raise ConfigError("input_offsets move the thresholds of the quantizer of each block's input; a float "
                              "network has none (needs abits 1..8)")


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, cfg: ResNetConfig):
        super().__init__()
        wq, aq = default_weight_quantizer(cfg.wbits), default_act_quantizer(cfg.abits)
        rq = default_act_quantizer(cfg.stream_bits)
        # the block input's codes for the convs, when the residual stream has more bits than they read
        # or a learned offset per channel moves their thresholds
        self.offset_in = ChannelOffset(in_planes) if cfg.input_offsets else None
        self.act_in = activation(aq, after_add=False) if rq != aq or cfg.input_offsets else None
        # the branch's codes before the add: signed ones can lower the stream, as a float block's can
        branch = f"{rq}:signed" if cfg.signed_residual else rq
        self.conv1 = QuantConv2d(in_planes, planes, 3, stride, 1, bias=False, weight_quantizer=wq)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = activation(aq, after_add=True)
        self.conv2 = QuantConv2d(planes, planes, 3, 1, 1, bias=False, weight_quantizer=wq)
        self.bn2 = nn.BatchNorm2d(planes)
        self.res_act = activation(branch, after_add=False)
        self.act_out = activation(rq, after_add=True)
        self.shortcut_kind = "identity"
        if stride != 1 or in_planes != planes:
            self.shortcut_kind = cfg.shortcut
            self.stride, self.extra_channels = stride, planes - in_planes
            if cfg.shortcut == "conv":
                self.shortcut_conv = QuantConv2d(in_planes, planes, 1, stride, bias=False, weight_quantizer=wq)
                self.shortcut_bn = nn.BatchNorm2d(planes)
                self.shortcut_act = activation(rq, after_add=False)

    def shortcut(self, x: Tensor, q: Tensor) -> Tensor:
        """The residual: x itself, x subsampled with zero channels appended, or a conv of q (the
        convs' codes of x)."""
        if self.shortcut_kind == "identity":
            return x
        if self.shortcut_kind == "conv":
            return self.shortcut_act(self.shortcut_bn(self.shortcut_conv(q)))
        x = keep_grad_layout(x)[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def forward(self, x: Tensor) -> Tensor:
        q = x if self.offset_in is None else self.offset_in(x)
        q = q if self.act_in is None else self.act_in(q)
        h = self.act1(self.bn1(self.conv1(q)))
        z = self.bn2(self.conv2(h))
        fused = residual_fusion(self.res_act, self.act_out, z)
        if fused is not None:  # the same values, one pass each way (pixelq.train_kernels)
            return ste.mid_tread_add(z, self.shortcut(x, q), *fused)
        return self.act_out(self.res_act(z) + self.shortcut(x, q))


def keep_grad_layout(x: Tensor) -> Tensor:
    """x, with its gradient made channels-last when x is.

    NHWC input keeps every activation channels-last, but the backward of a mean or a strided slice
    hands back an NCHW gradient, and a batch norm whose input and gradient differ in layout takes
    PyTorch's serial backward, which cost a third of the train step."""
    if x.requires_grad and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        x.register_hook(_channels_last)
    return x


def _channels_last(grad: Tensor) -> Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


def same_layout(h: Tensor, x: Tensor) -> Tensor:
    """h, channels-last when x is: one layout through the net (see keep_grad_layout)."""
    if x.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous(memory_format=torch.channels_last):
        return h.contiguous(memory_format=torch.channels_last)
    return h


class Stem(nn.Module):
    """First layer: input encoder, then the first conv (float weights only for the float encoder)."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.encoder = make_encoder(cfg.first_layer, cfg.in_channels, **cfg.first_layer_kwargs)
        wq = default_weight_quantizer(cfg.wbits) if self.encoder.quantized else None
        self.conv = QuantConv2d(self.encoder.out_channels, cfg.widths[0], 3, 1, 1, bias=False, weight_quantizer=wq)
        self.bn = nn.BatchNorm2d(cfg.widths[0])
        self.act = activation(default_act_quantizer(cfg.stream_bits), after_add=True)

    def forward(self, x: Tensor) -> Tensor:
        # Training runs a pixel embedding and its conv as one table-sum kernel (PixelEmbedding.conv_forward);
        # evaluation keeps the two modules, whose outputs export's layer-by-layer check hooks.
        if self.training and getattr(self.encoder, "runs_as_table", lambda *_: False)(self.conv, x):
            h = self.encoder.conv_forward(x, self.conv)
        else:
            h = self.conv(same_layout(self.encoder(x), x))
        return self.act(self.bn(h))


class ResNet(nn.Module):
    """A CIFAR ResNet taking uint8 images, NCHW or NHWC, and returning float logits."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.stem = Stem(cfg)
        stages, in_planes = [], cfg.widths[0]
        for i, (planes, n) in enumerate(zip(cfg.widths, cfg.blocks)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, cfg))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        quantized_last = cfg.last_layer == "quantized"
        self.fc = QuantLinear(
            in_planes,
            cfg.num_classes,
            bias=not quantized_last,
            weight_quantizer=default_weight_quantizer(cfg.wbits, per_channel=False) if quantized_last else None,
        )
        self._init_weights()
        apply_overrides(self, cfg.overrides)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def to_nchw(self, x: Tensor) -> Tensor:
        """Check dtype and shape; NHWC input becomes an NCHW view (`images_to_nchw`)."""
        return images_to_nchw(x, self.config.in_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = keep_grad_layout(self.stages(self.stem(self.to_nchw(x))))
        return self.fc(h.mean((2, 3)))


def _resnet(defaults: dict, kwargs: dict) -> ResNet:
    return ResNet(config_from_kwargs(ResNetConfig, defaults, kwargs))


@register_model("resnet20")
def resnet20(**kwargs) -> ResNet:
    """He et al.'s CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels, option-A shortcuts."""
    return _resnet({"widths": (16, 32, 64), "blocks": (3, 3, 3), "shortcut": "zero-pad"}, kwargs)


@register_model("resnet18")
def resnet18(**kwargs) -> ResNet:
    """The wide CIFAR ResNet-18: 4 stages of 2 blocks, 64..512 channels, 1x1 conv shortcuts."""
    return _resnet({"widths": (64, 128, 256, 512), "blocks": (2, 2, 2, 2), "shortcut": "conv"}, kwargs)
