"""Lower a trained quantized ResNet to an integer graph (`pixelq.integer.graph` lists its ops): a
LUT or integer first layer, integer convs with batch norm + activation folded into thresholds,
integer residual adds, sum pooling and the last layer. Each node is named after the PyTorch module
it replaces, so every layer's integer codes can be compared with the fake-quant model's."""
from __future__ import annotations

import numpy as np
from torch import nn

from ..errors import ExportError
from ..integer import IntegerModel
from ..models.resnet import ResNet
from ..quant import Quantizer
from .integers import (
    activation_grid,
    batchnorm_affine,
    check_accumulator_range,
    fold_batchnorm_into_thresholds,
    freeze_input_table,
    weight_code_grid,
    weight_integers,
)


class _Builder:
    def __init__(self):
        self.nodes, self.tensors = [], {}

    def add(self, op: str, name: str, inputs: list, tensors: "dict | None" = None, **attrs) -> str:
        for key, array in (tensors or {}).items():
            self.tensors[f"{name}.{key}"] = array
        self.nodes.append({"op": op, "name": name, "inputs": inputs, "tensors": sorted(tensors or {}), **attrs})
        return name


def _activation_quantizer(module: nn.Module, name: str) -> Quantizer:
    if not isinstance(module, Quantizer):
        raise ExportError(f"{name} is a float activation ({type(module).__name__}); integer export needs "
                          "quantized activations everywhere (abits 1..8)")
    return module


def _conv_threshold(b: _Builder, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.Module, conv_name: str,
                    act_name: str, inp: str, in_grid: tuple) -> tuple:
    """conv -> batch norm -> activation quantizer, as an integer conv and a threshold node."""
    quantizer = getattr(conv, "weight_quantizer", None)
    if quantizer is None:
        raise ExportError(f"{conv_name} has float weights; integer export needs quantized weights in every conv "
                          "(a float first layer cannot be exported)")
    if conv.groups != 1 or conv.dilation != (1, 1):
        raise ExportError(f"{conv_name}: grouped or dilated convs are not supported by the integer runtime")
    codes, wscale = weight_integers(quantizer, conv.weight)
    lowest, stride, bits = weight_code_grid(quantizer)
    check_accumulator_range(conv_name, codes[0].size, max(abs(in_grid[1]), abs(in_grid[2])), lowest,
                            lowest + stride * (2**bits - 1))
    in_step = in_grid[0]
    bn_scale, bn_shift = batchnorm_affine(bn)
    bias = conv.bias.detach().double().numpy() if conv.bias is not None else 0.0
    a = bn_scale * wscale * in_step
    shift = bn_shift + bn_scale * bias
    step, qmin, qmax = activation_grid(_activation_quantizer(act, act_name))
    direction, thresholds = fold_batchnorm_into_thresholds(a, shift, step, qmin, qmax)
    b.add("conv", conv_name, [inp], {"weight": np.ascontiguousarray(codes.transpose(0, 2, 3, 1))},
          stride=conv.stride[0], padding=conv.padding[0], kernel=conv.kernel_size[0],
          in_channels=conv.in_channels, out_channels=conv.out_channels,
          weight_lowest=lowest, weight_stride=stride, weight_bits=bits, input_range=list(in_grid[1:]))
    b.add("threshold", act_name, [conv_name], {"direction": direction, "thresholds": thresholds},
          qmin=qmin, qmax=qmax, step=step)
    return act_name, (step, qmin, qmax)


def _add_grid(branch: tuple, shortcut: tuple, out: tuple, where: str) -> tuple:
    """The residual add's output grid. Codes add as integers when both addends and the output share
    one step; the addends' ranges may differ (a signed residual branch, as a float ResNet's is, adds
    to unsigned shortcut codes), and the sum is clipped to the output's range."""
    if any(abs(g[0] - out[0]) > 1e-6 * abs(out[0]) for g in (branch, shortcut)):  # float32 steps (LSQ) agree to this
        raise ExportError(f"{where}: the residual add needs both addends and the output on one activation grid "
                          f"(one step), got (step, qmin, qmax) {branch}, {shortcut} -> {out}")
    if out[1] != 0:
        raise ExportError(f"{where}: the residual add's output must be unsigned codes (qmin 0), got {out}")
    return out


def lower_resnet(model: ResNet) -> IntegerModel:
    """The integer graph of an eval-mode pixelq ResNet (quantized first layer, weights and activations)."""
    if not isinstance(model, ResNet):
        raise ExportError(f"integer export supports pixelq ResNets, got {type(model).__name__}")
    cfg = model.config
    b = _Builder()
    lut, step, qmin, qmax = freeze_input_table(model.stem.encoder, cfg.in_channels)
    b.add("lut", "stem.encoder", ["image"], {"lut": lut}, step=step, qmin=qmin, qmax=qmax,
          in_channels=cfg.in_channels, d=lut.shape[2])
    h, grid = _conv_threshold(b, model.stem.conv, model.stem.bn, model.stem.act, "stem.conv", "stem.act",
                              "stem.encoder", (step, qmin, qmax))
    for si, stage in enumerate(model.stages):
        for bi, block in enumerate(stage):
            p = f"stages.{si}.{bi}"
            h1, g1 = _conv_threshold(b, block.conv1, block.bn1, block.act1, f"{p}.conv1", f"{p}.act1", h, grid)
            r, gr = _conv_threshold(b, block.conv2, block.bn2, block.res_act, f"{p}.conv2", f"{p}.res_act", h1, g1)
            if block.shortcut_kind == "identity":
                s, gs = h, grid
            elif block.shortcut_kind == "zero-pad":
                s = b.add("subsample_pad", f"{p}.shortcut", [h], stride=block.stride, extra_channels=block.extra_channels)
                gs = grid
            else:
                s, gs = _conv_threshold(b, block.shortcut_conv, block.shortcut_bn, block.shortcut_act,
                                        f"{p}.shortcut_conv", f"{p}.shortcut_act", h, grid)
            out_grid = activation_grid(_activation_quantizer(block.act_out, f"{p}.act_out"))
            grid = _add_grid(gr, gs, out_grid, p)
            h = b.add("add_clip", f"{p}.act_out", [r, s], qmin=grid[1], qmax=grid[2], step=grid[0])
    pooled = b.add("sum_pool", "pool", [h], step=grid[0])
    fc = model.fc
    if fc.weight_quantizer is None:
        b.add("linear_float", "fc", [pooled], {"weight": fc.weight.detach().float().numpy(),
                                                "bias": fc.bias.detach().float().numpy()}, step=grid[0])
        logit_scale = None
    else:
        if fc.bias is not None:
            raise ExportError("fc: a quantized last layer must have no bias (logits = integer accumulator * scale)")
        codes, wscale = weight_integers(fc.weight_quantizer, fc.weight)
        lowest, stride, bits = weight_code_grid(fc.weight_quantizer)
        b.add("linear", "fc", [pooled], {"weight": codes}, weight_lowest=lowest, weight_stride=stride,
              weight_bits=bits, in_channels=fc.in_features, out_channels=fc.out_features)
        logit_scale = (wscale * grid[0]).tolist()  # per class; divided by the pooled count at run time
    meta = {"in_channels": cfg.in_channels, "num_classes": cfg.num_classes, "output": "fc",
            "logit_scale": logit_scale, "integer_only": logit_scale is not None}
    return IntegerModel(b.nodes, b.tensors, meta)

