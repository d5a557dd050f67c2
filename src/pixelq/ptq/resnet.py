"""Post-training quantization of a float pixelq ResNet: its integer-deployable twin, no gradient step.

The twin has an int8 first layer (the float first conv's weights rescaled from the float encoder's
normalisation to int8 codes, the offset moved into batch norm), 8-bit activations with steps
calibrated on training images (min-max: the largest activation each quantizer sees on the
calibration images maps to its top code), a float last layer, and its convs' weights on a grid:
  int8  per-channel symmetric int8 (radius max|w| per output channel);
  rtn   2^bits levels rad * linspace(-1, 1, 2^bits), rad = C * median|W| per layer, rounded;
  gpfq  the same alphabet, weights chosen by GPFQ layer by layer against the float network's inputs.
For rtn and gpfq, C is tuned per layer on the calibration images (the one giving the smallest error of
the layer's output). The first conv stays at 8 bits per channel, as its input is 8-bit anyway.
Mixed precision: `overrides` ({layer-name pattern: "grid:k[:tensor]"}, the format training takes)
sets single convs' weight grids; rtn and gpfq then quantize each conv to its own bits.
Residual branches keep their sign (signed 8-bit codes on the output's step), as a float ResNet adds them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from ..errors import ConfigError
from ..models import create_model
from ..models.resnet import ResNet
from .gpfq import alphabet, gpfq_quantize, rtn_quantize

METHODS = ("int8", "rtn", "gpfq")
RADIUS_FACTORS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
FLOAT_SCALE, FLOAT_SHIFT = 63.75, 127.5  # FloatInput: (p - 127.5) / 63.75; Int8Input: (p - 128) / 128


def _twin(model: ResNet, name: str, method: str, bits: int, overrides: dict) -> ResNet:
    if not isinstance(model, ResNet):
        raise ConfigError(f"post-training quantization takes pixelq's ResNets (resnet20, resnet18); a {name!r} "
                          "network is not supported yet: train it quantized instead (`pixelq train --wbits ... "
                          "--init CHECKPOINT`)")
    cfg = model.config
    if cfg.first_layer != "float" or cfg.wbits != 32 or cfg.abits != 32:
        raise ConfigError("post-training quantization starts from a float network (first layer, weights and "
                          "activations float); this checkpoint is already quantized")
    weights = "grid:8:zero" if method == "int8" else f"grid:{bits}:tensor"
    for pattern, spec in overrides.items():
        if not isinstance(spec, str) or not spec.startswith("grid:"):
            raise ConfigError(f"override {pattern!r}: post-training quantization sets weight grids "
                              f"('grid:k[:tensor]'), got {spec!r}")
    overrides = {"*conv*": weights, "stem.conv": "grid:8:zero", "stem.act": "lsq:8", "*.act1": "lsq:8",
                 "*.act_out": "lsq:8", "*.res_act": "lsq:8:signed", **overrides}
    return create_model(name, in_channels=cfg.in_channels, num_classes=cfg.num_classes, first_layer="int8", wbits=8,
                        abits=8, last_layer="float", widths=cfg.widths, blocks=cfg.blocks, shortcut=cfg.shortcut,
                        overrides=overrides)


def _copy_float_weights(twin: ResNet, model: ResNet) -> None:
    twin.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():  # float input = (128 x_int8 + 0.5) / 63.75: scale the weights, move the offset
        w = model.stem.conv.weight
        twin.stem.conv.weight.copy_(w * (128.0 / FLOAT_SCALE))
        offset = (128.0 - FLOAT_SHIFT) / FLOAT_SCALE * w.sum((1, 2, 3))
        twin.stem.bn.running_mean.copy_(model.stem.bn.running_mean - offset)


@torch.no_grad()
def _calibrate_activations(twin: ResNet, model: ResNet, images: Tensor) -> None:
    """Min-max steps: each act1 its own; the stem, every residual add's output and every residual
    branch one shared step (their codes add as integers)."""
    peaks: dict = {}

    def record(name):
        def hook(_module, inputs, _output):  # a residual branch is signed; the rest pass a ReLU
            x = inputs[0].abs() if name.endswith("res_act") else inputs[0].clamp_min(0)
            peaks[name] = max(peaks.get(name, 0.0), float(x.max()))
        return hook

    slots = {n: m for n, m in model.named_modules() if n.endswith(("act1", "act_out", "res_act")) or n == "stem.act"}
    hooks = [m.register_forward_hook(record(n)) for n, m in slots.items()]
    model.eval()(images)
    for h in hooks:
        h.remove()
    shared = max([peaks[n] / 255 for n in peaks if not n.endswith(("act1", "res_act"))]
                 + [peaks[n] / 127 for n in peaks if n.endswith("res_act")])
    for name, module in twin.named_modules():
        if name in slots:
            module.step.fill_(peaks[name] / 255 if name.endswith("act1") else shared)
            module.initialized.fill_(True)


def _conv_inputs(model: nn.Module, names: list, images: Tensor, rows: int) -> dict:
    """{conv name: im2col rows (m, C*kh*kw) of what it reads on `images`, `rows` of them drawn evenly},
    for every conv in `names`, from one forward pass."""
    modules = dict(model.named_modules())
    seen = {}
    hooks = [modules[n].register_forward_pre_hook(lambda _m, inputs, n=n: seen.__setitem__(n, inputs[0].detach()))
             for n in names]
    with torch.no_grad():
        model.eval()(images)
    for h in hooks:
        h.remove()
    out = {}
    for n in names:
        conv = modules[n]
        cols = F.unfold(seen[n].float(), conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (B, N, L)
        cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        out[n] = cols[torch.linspace(0, len(cols) - 1, min(rows, len(cols))).long()].double()
    return out


@torch.no_grad()
def quantize_resnet(model: ResNet, images: Tensor, method: str = "int8", bits: int = 8, rows: int = 4096,
                    name: str = "resnet20", overrides: "dict | None" = None, progress: bool = False) -> ResNet:
    """The twin of float `model` (the registered model `name`; module doc), calibrated on uint8
    `images` (N, H, W, C); `overrides` gives single convs other weight grids; `progress` shows a bar
    over the layers rtn and gpfq quantize (GPFQ takes minutes)."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    if method != "int8" and not 1 <= bits <= 8:
        raise ConfigError(f"bits must lie in [1, 8], got {bits}")
    twin = _twin(model, name, method, bits, overrides or {})
    _copy_float_weights(twin, model)
    _calibrate_activations(twin, model, images)
    if method != "int8":
        convs = [n for n, m in twin.named_modules() if isinstance(m, nn.Conv2d) and n != "stem.conv"]
        float_inputs = _conv_inputs(model, convs, images, rows)  # the float network does not change
        float_layers, layers = dict(model.named_modules()), dict(twin.named_modules())
        for name in tqdm(convs, desc=f"{method} {bits}-bit", unit="layer", disable=not progress, leave=False):
            # in execution order: each layer sees the layers before it quantized
            layer, w = layers[name], float_layers[name].weight.double().flatten(1)
            x, xq = float_inputs[name], _conv_inputs(twin, [name], images, rows)[name]
            best, layer_bits = None, layer.weight_quantizer.bits  # `bits`, or the layer's own override
            for c in RADIUS_FACTORS:
                levels = alphabet(w, layer_bits, c)
                q = gpfq_quantize(w, x, xq, levels) if method == "gpfq" else rtn_quantize(w, levels)
                error = float((x @ w.T - xq @ q.T).norm())
                if best is None or error < best[0]:
                    best = (error, q, levels[-1])
            _, q, radius = best
            layer.weight.copy_(q.view_as(layer.weight).float())
            layer.weight_quantizer.set_radius(radius.float())
    return twin.eval()
