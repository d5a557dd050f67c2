"""airbench94's network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024),
written from its paper's description: the float reference pixelq measures its data against.

    normalise -> whitening conv 2x2 (frozen weights, trained bias) -> GELU
              -> 3 x [conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU]  (widths 64, 256, 256)
              -> global max-pool -> linear (no bias) -> x 1/9

The whitening conv's weights are the eigenvectors of the covariance of the training images' 2x2
patches, scaled by 1/sqrt(eigenvalue + eps), each used with both signs (`init_whitening`). Every 3x3
conv starts as the identity on its first in_channels outputs (dirac init). Batch norm keeps its scale
at 1 (not trained) and its running statistics with momentum 0.4 (airbench's 0.6 "decay").

It is float only: a calibration network and a teacher, not a network pixelq quantizes. Per-channel
input mean and std are buffers set from the data by `init_whitening`, so no data set's statistics
are written here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from ..nn import images_to_nchw
from .registry import register_model
from .common import FLOAT_BITS, config_from_kwargs


FLOAT_ONLY = ("airbench94",)  # registered models that take no quantization settings


@dataclass
class AirbenchConfig:
    widths: tuple = (64, 256, 256)
    in_channels: int = 3
    num_classes: int = 10
    whiten_kernel: int = 2
    batchnorm_momentum: float = 0.4  # torch's convention: running = (1 - m) * running + m * batch
    logit_scale: float = 1 / 9
    # the settings pixelq's training passes every model; only float values are accepted
    first_layer: str = "float"
    wbits: int = FLOAT_BITS
    abits: int = FLOAT_BITS
    last_layer: str = "float"

    def validate(self) -> None:
        quantized = {k: v for k, v in (("first_layer", self.first_layer), ("wbits", self.wbits),
                                       ("abits", self.abits), ("last_layer", self.last_layer))
                     if v not in ("float", FLOAT_BITS)}
        if quantized:
            raise ConfigError(f"airbench94 is a float reference network; it takes no quantization settings, got "
                              f"{quantized}")
        if len(self.widths) != 3 or self.in_channels < 1 or self.num_classes < 2 or self.whiten_kernel < 1:
            raise ConfigError(f"airbench94 needs three widths, in_channels >= 1, num_classes >= 2 and a whitening "
                              f"kernel >= 1, got {self.widths}, {self.in_channels}, {self.num_classes}, "
                              f"{self.whiten_kernel}")


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(c_in, c_out)])
    return conv


def _batchnorm(channels: int, momentum: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, momentum: float):
        super().__init__()
        self.conv1, self.pool, self.norm1 = _conv(c_in, c_out), nn.MaxPool2d(2), _batchnorm(c_out, momentum)
        self.conv2, self.norm2, self.act = _conv(c_out, c_out), _batchnorm(c_out, momentum), nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class Airbench(nn.Module):
    """airbench94's network on uint8 images (N, H, W, C) or (N, C, H, W) of at least 16x16 pixels."""

    def __init__(self, cfg: AirbenchConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        c, k = cfg.in_channels, cfg.whiten_kernel
        self.register_buffer("mean", torch.full((1, c, 1, 1), 127.5))
        self.register_buffer("std", torch.full((1, c, 1, 1), 64.0))
        self.whiten = nn.Conv2d(c, 2 * c * k * k, k, bias=True)
        self.whiten.weight.requires_grad_(False)
        widths = (self.whiten.out_channels, *cfg.widths)
        self.groups = nn.Sequential(*(ConvGroup(a, b, cfg.batchnorm_momentum) for a, b in zip(widths, widths[1:])))
        self.act = nn.GELU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[-1], cfg.num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = (images_to_nchw(x, self.config.in_channels, min_size=16).float() - self.mean) / self.std
        x = self.groups(self.act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.config.logit_scale

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the input mean/std from `images` (uint8, N H W C) and the whitening conv's weights from
        the eigen-decomposition of their k x k patches' covariance: row i is eigenvector i divided by
        sqrt(eigenvalue_i + eps), largest first, then the same rows negated."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != self.config.in_channels:
            raise InputError(f"init_whitening takes uint8 images (N, H, W, {self.config.in_channels}), got "
                             f"{images.dtype} {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).float()
        self.mean.copy_(x.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))
        x = (x - self.mean) / self.std
        c, k = self.config.in_channels, self.config.whiten_kernel
        patches = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        order = torch.argsort(eigenvalues, descending=True)
        rows = (eigenvectors[:, order].T / torch.sqrt(eigenvalues[order].clamp_min(0) + eps)[:, None]).float()
        self.whiten.weight.copy_(torch.cat([rows, -rows]).reshape(2 * c * k * k, c, k, k))
        self.whiten.bias.zero_()


@register_model("airbench94")
def airbench94(**kwargs) -> Airbench:
    """airbench94's float network (whitening conv, three conv groups of 64, 256, 256): the data-calibration
    reference and a strong teacher. Call `init_whitening(train_images)` before training."""
    extra = {k: kwargs.pop(k) for k in ("first_layer_kwargs", "overrides") if k in kwargs}
    if any(extra.values()):
        raise ConfigError(f"airbench94 is a float reference network; it takes no {sorted(k for k in extra if extra[k])}")
    return Airbench(config_from_kwargs(AirbenchConfig, {}, kwargs))
