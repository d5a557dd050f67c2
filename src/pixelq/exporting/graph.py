"""Lower a trained quantized network to an integer graph (`pixelq.integer.graph` lists its ops).

The model is traced with torch.fx (pixelq's layers, quantizers, encoders, batch norm and pooling
as leaves), then its nodes are read in order, each value tracked as what it is at deployment:
  image     uint8 pixels
  codes     integer activation codes on a grid (step, qmin, qmax), NHWC
  real      a conv's integer accumulator A as the real value a * A + b per channel that PyTorch
            computes (an `affine` node: the conv's scales, a batch norm after it another)
  sum       per-channel sums of codes over the whole map (global average pooling, times the count)
and lowered as it goes to a plain quantized graph: encoder -> lut; conv -> conv (the integer
accumulator) + affine (its real value: the conv's scales); batch norm -> affine; a channel offset ->
affine; activation quantizer on a real value -> quantize (codes); an activation quantizer on codes ->
affine (their real values) + quantize; codes + codes, then an activation quantizer ->
add_clip; stride-s subsampling + zero channels on codes -> subsample_pad; max pooling on codes ->
max_pool; global average pooling -> sum_pool; flatten, then a hidden linear layer -> a conv whose
kernel covers the map; the last linear layer -> linear (integer) or linear_float.
`lower` then applies `pixelq.integer.transforms.EXPORT_TRANSFORMS` (batch norm folded into the conv's
affine, affine + quantize folded into integer thresholds): the integer-only graph a .pxq file holds.
Each node is named after the PyTorch module it replaces, so every layer's codes can be compared with
the fake-quant model's (`exporting.verify`). Anything else raises ExportError naming the op and module.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from ..errors import ExportError
from ..integer import OPS, IntegerModel
from ..integer.transforms import EXPORT_TRANSFORMS, apply
from ..models.tracing import PASSTHROUGH, POOLS, ModelTracer
from ..nn import ChannelOffset, QuantConv2d, QuantLinear
from ..quant import Quantizer
from .integers import (
    activation_grid,
    batchnorm_affine,
    check_accumulator_range,
    freeze_input_table,
    weight_code_grid,
    weight_integers,
)



@dataclass
class _Codes:
    name: str
    grid: tuple  # (step, qmin, qmax)
    channels: int
    flat: bool = False  # flattened (N, C * H * W) in PyTorch's order; a map of `channels` channels here


@dataclass
class _Real:
    name: str  # the affine node: a conv's accumulator as the real value PyTorch computes
    channels: int
    source: str  # the module whose output this is (the conv, or the batch norm after it)
    flat: bool = False  # a linear layer's: (N, channels) in PyTorch, a 1 x 1 map here


@dataclass
class _Sum:
    """Global average pooling of `codes`, lowered where it is read: a sum_pool before the last layer,
    or, before a hidden linear layer, a conv whose kernel covers the map (`side`, known when the
    export is given the image shape)."""
    codes: _Codes
    side: "int | None"


@dataclass
class _Add:
    inputs: list
    grids: list
    channels: int
    where: str


class _Lowering:
    def __init__(self, model: nn.Module, image_shape: "tuple | None" = None):
        self.model, self.image_shape = model, image_shape
        self.modules = dict(model.named_modules())
        self.nodes, self.tensors, self.values = [], {}, {}
        self.meta = {"bn_of": {}}
        self.in_channels = self.logit_scale = self.output = self.num_classes = None

    def add(self, op: str, name: str, inputs: list, tensors: "dict | None" = None, **attrs) -> str:
        if any(n.name == name for n in self.nodes):
            raise ExportError(f"two integer layers would both be named {name!r}")
        for key, array in (tensors or {}).items():
            self.tensors[f"{name}.{key}"] = array
        self.nodes.append(OPS[op](name=name, inputs=tuple(inputs), tensors=tuple(sorted(tensors or {})),
                                  **{k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}))
        return name

    # ---- the walk ----

    def run(self) -> IntegerModel:
        graph = ModelTracer().trace(self.model)
        if self.image_shape is not None:  # every value's shape, for pooling before a hidden linear layer
            example = torch.zeros((1, *self.image_shape), dtype=torch.uint8)
            try:
                ShapeProp(fx.GraphModule(self.model, graph)).propagate(example)
            except Exception as e:  # the model's own error, on the image shape it was given
                raise ExportError(f"the model does not run on uint8 images of shape {self.image_shape} (H, W, C): "
                                  f"{e.__cause__ or e}") from e
        for node in graph.nodes:
            if node.op == "placeholder":
                self.values[node] = "image"
            elif node.op == "output":
                self.finish(node)
            else:
                self.values[node] = self.lower(node)
        meta = {"in_channels": self.in_channels, "num_classes": self.num_classes, "output": self.output,
                "logit_scale": self.logit_scale, "integer_only": self.logit_scale is not None, **self.meta}
        return IntegerModel(self.nodes, self.tensors, meta)

    def where(self, node: fx.Node) -> str:
        """The module a node belongs to, for names and messages."""
        if node.op == "call_module":
            return node.target
        stack = node.meta.get("nn_module_stack") or {}
        return next(reversed(stack.values()))[0] if stack else ""

    def unsupported(self, node: fx.Node, why: str = "") -> ExportError:
        what = node.target if node.op != "call_function" else getattr(node.target, "__name__", str(node.target))
        kind = type(self.modules[node.target]).__name__ if node.op == "call_module" else f"{node.op} {what}"
        place = self.where(node) or "the model's forward"
        return ExportError(f"{kind} in {place} has no integer form{': ' + why if why else ''}; the integer export "
                           "supports quantized convs and linear layers, batch norm, activation quantizers, residual adds, "
                           "max pooling, global average pooling, flatten and stride-2 zero-pad shortcuts")

    def lower(self, node: fx.Node):
        args = [self.values[a] if isinstance(a, fx.Node) else a for a in node.args]
        if node.op == "call_function" and node.target in PASSTHROUGH:
            return args[0]
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, QuantConv2d):
                return self.conv(node, module, args[0])
            if isinstance(module, QuantLinear):
                return self.linear(node, module, args[0])
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                return self.batchnorm(node, module, args[0])
            if isinstance(module, ChannelOffset):
                return self.offset(node, module, args[0])
            if isinstance(module, Quantizer) or isinstance(module, (nn.ReLU, nn.Identity, nn.Dropout)):
                return self.activation(node, module, args[0])
            if hasattr(module, "quantized"):  # an input encoder
                return self.encoder(node, module, args[0])
            if isinstance(module, nn.MaxPool2d):
                return self.max_pool(node, module, args[0])
            if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
                return self.avg_pool(node, module, args[0])
            if isinstance(module, nn.Flatten):
                return self.flatten(node, args[0], module.start_dim)
        if node.op == "call_function" and node.target in (operator.add, torch.add):
            return self.residual_add(node, *args[:2])
        if node.op == "call_function" and node.target is operator.getitem:
            return self.subsample(node, *args)
        if node.op == "call_function" and node.target is F.pad:
            return self.zero_channels(node, args[0], node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
        if node.op == "call_method" and node.target == "mean":
            return self.mean(node, args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
        if node.op == "call_method" and node.target in ("view", "reshape"):
            if len(node.args) != 3 or node.args[2] != -1:  # x.view(n, -1), x.reshape(x.size(0), -1)
                raise self.unsupported(node, "only x.view(batch, -1) / x.reshape(batch, -1), a flatten")
            return self.flatten(node, args[0], 1)
        if node.op == "call_method" and node.target == "flatten" or \
                node.op == "call_function" and node.target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            return self.flatten(node, args[0], start)
        raise self.unsupported(node)

    # ---- layers ----

    def encoder(self, node, encoder, x):
        if x != "image":
            raise self.unsupported(node, "an input encoder must read the image")
        lut, step, qmin, qmax = freeze_input_table(encoder, encoder.in_channels)
        self.in_channels = encoder.in_channels
        name = self.add("lut", node.target, ["image"], {"lut": lut}, step=step, qmin=qmin, qmax=qmax,
                        in_channels=encoder.in_channels, d=lut.shape[2])
        return _Codes(name, (step, qmin, qmax), encoder.in_channels * lut.shape[2])

    def _integer_conv(self, node, name: str, weight: torch.Tensor, quantizer, x: _Codes, kernel: int, stride: int,
                      padding: int, bias, flat: bool = False, repeat: int = 1, groups: int = 1) -> _Real:
        """A conv node over codes x, and the affine node of its real output; weight (O, I / groups, k, k)
        float, quantizer its weight quantizer. With `repeat`, 1 x 1 weights cover a repeat x repeat map
        (a linear layer after global average pooling: the sum over the map, then the weights), the
        accumulator then divided by the count."""
        if quantizer is None:
            raise ExportError(f"{name} has float weights; integer export needs quantized weights in every conv and "
                              "hidden linear layer (a float first layer cannot be exported)")
        codes, wscale = weight_integers(quantizer, weight)
        if repeat > 1:
            codes, kernel, wscale = np.tile(codes, (1, 1, repeat, repeat)), repeat, wscale / repeat**2
        lowest, wstride, bits = weight_code_grid(quantizer)
        step, qmin, qmax = x.grid
        check_accumulator_range(name, codes[0].size, max(abs(qmin), abs(qmax)), lowest, lowest + wstride * (2**bits - 1))
        self.add("conv", name, [x.name], {"weight": np.ascontiguousarray(codes.transpose(0, 2, 3, 1))},
                 stride=stride, padding=padding, kernel=kernel, in_channels=codes.shape[1] * groups,
                 out_channels=codes.shape[0], weight_lowest=lowest, weight_stride=wstride, weight_bits=bits,
                 input_range=[qmin, qmax], **({"groups": groups} if groups > 1 else {}))
        b = bias.detach().double().numpy() if bias is not None else np.zeros(codes.shape[0])
        real = self.add("affine", f"{name}.scale", [name], {"scale": wscale * step, "bias": b})
        return _Real(real, codes.shape[0], name, flat)

    def conv(self, node, conv: QuantConv2d, x):
        if not isinstance(x, _Codes) or x.flat:
            raise self.unsupported(node, "a conv must read integer codes (the image through an input encoder, or "
                                         "an activation quantizer's output)")
        if conv.input_quantizer is not None:
            raise self.unsupported(node, "an input quantizer inside the conv; quantize its input with an activation")
        square = len(set(conv.kernel_size)) == len(set(conv.stride)) == len(set(conv.padding)) == 1
        if conv.dilation != (1, 1) or not square or conv.padding_mode != "zeros":
            raise self.unsupported(node, "dilated, non-square or non-zero-padded convs are not supported by the "
                                         "integer runtime")
        return self._integer_conv(node, node.target, conv.weight, conv.weight_quantizer, x, conv.kernel_size[0],
                                  conv.stride[0], conv.padding[0], conv.bias, groups=conv.groups)

    def linear(self, node, linear: QuantLinear, x):
        if linear.input_quantizer is not None:
            raise self.unsupported(node, "an input quantizer inside the layer; quantize its input with an activation")
        users = list(node.users)
        last = len(users) == 1 and users[0].op == "output"
        if isinstance(x, _Sum) and not last:  # global average pooling, then a hidden layer
            if x.side is None:
                raise ExportError(f"{node.target}: a hidden linear layer after global average pooling needs the image "
                                  "size; export with image_shape=(H, W, C) (`pixelq export` takes it from the checkpoint)")
            weight = linear.weight.reshape(linear.out_features, linear.in_features, 1, 1)
            return self._integer_conv(node, node.target, weight, linear.weight_quantizer, x.codes, 1, 1, 0, linear.bias,
                                      flat=True, repeat=x.side)
        if isinstance(x, _Codes) and x.flat and not last:  # a hidden layer: a conv whose kernel covers the map
            side = math.isqrt(linear.in_features // x.channels)
            if side * side * x.channels != linear.in_features:
                raise self.unsupported(node, f"its {linear.in_features} inputs are not a square map of "
                                             f"{x.channels} channels")
            weight = linear.weight.reshape(linear.out_features, x.channels, side, side)
            return self._integer_conv(node, node.target, weight, linear.weight_quantizer, x, side, 1, 0, linear.bias,
                                      flat=True)
        if not last:
            raise self.unsupported(node, "a linear layer inside the network must follow flatten")
        if isinstance(x, _Codes) and x.flat:  # the last layer on a flattened 1x1 map: one position's codes
            if linear.in_features != x.channels:
                raise self.unsupported(node, "the last linear layer must read one position's channels (pool first)")
            x = _Sum(x, 1)
        if not isinstance(x, _Sum):
            raise self.unsupported(node, "the last linear layer must read pooled codes")
        pooled = "pool" if not any(n.name == "pool" for n in self.nodes) else f"{node.target}.pool"
        step = x.codes.grid[0]
        self.add("sum_pool", pooled, [x.codes.name], step=step)
        self.num_classes = linear.out_features
        if linear.weight_quantizer is None:
            self.add("linear_float", node.target, [pooled], {"weight": linear.weight.detach().float().numpy(),
                                                             "bias": linear.bias.detach().float().numpy()
                                                             if linear.bias is not None else
                                                             np.zeros(linear.out_features, np.float32)}, step=step)
            return node.target
        if linear.bias is not None:
            raise ExportError(f"{node.target}: a quantized last layer must have no bias (logits = integer accumulator "
                              "* scale)")
        codes, wscale = weight_integers(linear.weight_quantizer, linear.weight)
        lowest, stride, bits = weight_code_grid(linear.weight_quantizer)
        self.add("linear", node.target, [pooled], {"weight": codes}, weight_lowest=lowest, weight_stride=stride,
                 weight_bits=bits, in_channels=linear.in_features, out_channels=linear.out_features)
        self.logit_scale = (wscale * step).tolist()  # per class; divided by the pooled count at run time
        return node.target

    def batchnorm(self, node, bn, x):
        if not isinstance(x, _Real):
            raise self.unsupported(node, "batch norm folds only into the conv or linear layer before it")
        scale, shift = batchnorm_affine(bn)
        self.add("affine", node.target, [x.name], {"scale": scale, "bias": shift})
        return _Real(node.target, x.channels, node.target, x.flat)

    def offset(self, node, offset: ChannelOffset, x):
        """A learned offset per channel: an affine of codes (their real values plus the offset) or of a
        real value, which the activation quantizer reading it folds into its thresholds."""
        bias = offset.bias.detach().double().numpy()
        if isinstance(x, _Codes) and not x.flat and x.channels == len(bias):
            scale = np.full(x.channels, x.grid[0])
        elif isinstance(x, _Real) and x.channels == len(bias):
            scale = np.ones(x.channels)
        else:
            raise self.unsupported(node, "an offset per channel must read codes or a conv's real output, one value "
                                         "per channel")
        name = self.add("affine", node.target, [x.name], {"scale": scale, "bias": bias})
        return _Real(name, x.channels, node.target, getattr(x, "flat", False))

    def activation(self, node, module, x):
        if isinstance(module, (nn.Identity, nn.Dropout)):  # dropout is the identity in eval mode
            return x
        if isinstance(module, nn.ReLU):
            if isinstance(x, _Codes) and x.grid[1] >= 0:
                return x  # codes are already >= 0
            raise ExportError(f"{node.target} is a float activation (ReLU); integer export needs quantized "
                              "activations everywhere (abits 1..8)")
        step, qmin, qmax = grid = activation_grid(module)
        if isinstance(x, _Real):
            name = self.add("quantize", node.target, [x.name], qmin=qmin, qmax=qmax, step=step)
            self.meta["bn_of"][name] = x.source
            return _Codes(name, grid, x.channels, x.flat)
        if isinstance(x, _Codes) and not x.flat:
            return self.requantize(node, grid, x)
        if isinstance(x, _Add):
            if any(abs(g[0] - step) > 1e-6 * abs(step) for g in x.grids):  # float32 steps (LSQ) agree to this
                raise ExportError(f"{x.where}: the residual add needs both addends and the output on one activation "
                                  f"grid (one step), got (step, qmin, qmax) {x.grids[0]}, {x.grids[1]} -> {grid}")
            if qmin != 0:
                raise ExportError(f"{x.where}: the residual add's output must be unsigned codes (qmin 0), got {grid}")
            return _Codes(self.add("add_clip", node.target, x.inputs, qmin=qmin, qmax=qmax, step=step), grid, x.channels)
        raise self.unsupported(node, "an activation quantizer must follow a conv (and batch norm) or a residual add")

    def requantize(self, node, grid: tuple, x: _Codes) -> _Codes:
        """An activation quantizer on codes (a residual stream's codes, requantized for the convs that
        read fewer bits): their real values, an affine of the integer codes, then quantized; folded
        into one threshold node on the codes like any other."""
        step, qmin, qmax = grid
        real = self.add("affine", f"{node.target}.codes", [x.name],
                        {"scale": np.full(x.channels, x.grid[0]), "bias": np.zeros(x.channels)})
        name = self.add("quantize", node.target, [real], qmin=qmin, qmax=qmax, step=step)
        if x.name in self.modules:  # the layer whose output the thresholds read, for exporting.verify
            self.meta["bn_of"][name] = x.name
        return _Codes(name, grid, x.channels)

    def residual_add(self, node, a, b):
        if not (isinstance(a, _Codes) and isinstance(b, _Codes)) or a.flat or b.flat or a.channels != b.channels:
            raise self.unsupported(node, "a residual add must add two maps of activation codes")
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or not isinstance(self.modules[users[0].target], Quantizer):
            raise self.unsupported(node, "a residual add must be followed by an activation quantizer")
        return _Add([a.name, b.name], [a.grid, b.grid], a.channels, self.where(node) or node.name)

    def subsample(self, node, x, index):
        """x[:, :, ::s, ::s] on codes: pending, for the zero-channel pad that makes the shortcut."""
        if not isinstance(x, _Codes) or not (isinstance(index, tuple) and len(index) == 4):
            raise self.unsupported(node)
        full = slice(None)
        s = index[2].step or 1
        if index[:2] != (full, full) or index[2] != index[3] or index[2].start or index[2].stop:
            raise self.unsupported(node, "only stride-s subsampling x[:, :, ::s, ::s] is supported")
        return ("subsample", x, s, node)

    def zero_channels(self, node, x, pad):
        """F.pad(x, (0, 0, 0, 0, 0, extra)): zero channels appended, after a subsampling or not."""
        if isinstance(x, tuple) and x[0] == "subsample":
            _, codes, stride, _ = x
        elif isinstance(x, _Codes):
            codes, stride = x, 1
        else:
            raise self.unsupported(node)
        pad = tuple(pad)
        if len(pad) != 6 or pad[:5] != (0, 0, 0, 0, 0) or codes.grid[1] > 0 or codes.flat:
            raise self.unsupported(node, "only zero channels appended (F.pad(x, (0, 0, 0, 0, 0, n))) are supported")
        name = f"{self.where(node)}.shortcut" if self.where(node) else node.name
        self.add("subsample_pad", name, [codes.name], stride=stride, extra_channels=pad[5])
        return _Codes(name, codes.grid, codes.channels + pad[5])

    def max_pool(self, node, pool: nn.MaxPool2d, x):
        k, s, p = (pool.kernel_size, pool.stride, pool.padding)
        k, s = (k, k) if isinstance(k, int) else k, (s, s) if isinstance(s, int) else s
        if not isinstance(x, _Codes) or x.flat or len(set(k)) != 1 or len(set(s)) != 1 or p not in (0, (0, 0)) \
                or pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
            raise self.unsupported(node, "max pooling of codes, square, no padding, dilation or ceil mode")
        return _Codes(self.add("max_pool", node.target, [x.name], kernel=k[0], stride=s[0]), x.grid, x.channels)

    def avg_pool(self, node, pool, x):
        global_pool = isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))
        if not global_pool or not isinstance(x, _Codes) or x.flat:
            raise self.unsupported(node, "only global average pooling of codes (AdaptiveAvgPool2d(1))")
        return self._sum(node, x)

    def mean(self, node, x, dims):
        if not isinstance(x, _Codes) or x.flat or sorted(d % 4 for d in (dims or ())) != [2, 3]:
            raise self.unsupported(node, "only the mean over the map, x.mean((2, 3)), of codes")
        return self._sum(node, x)

    def _sum(self, node, x: _Codes) -> _Sum:
        meta = node.args[0].meta.get("tensor_meta")  # (N, C, H, W), when the image shape was given
        side = None
        if meta is not None:
            h, w = meta.shape[2:]
            if h != w:
                raise self.unsupported(node, f"pooling a {h}x{w} map before a linear layer; the maps must be square")
            side = h
        return _Sum(x, side)

    def flatten(self, node, x, start_dim):
        if start_dim != 1:
            raise self.unsupported(node, "flatten from dimension 1 (keeping the batch)")
        if isinstance(x, _Sum):
            return x  # (N, C, 1, 1) sums -> (N, C)
        if isinstance(x, _Codes):
            return _Codes(x.name, x.grid, x.channels, flat=True)
        raise self.unsupported(node)

    def finish(self, node):
        out = node.args[0]
        value = self.values.get(out)
        if not isinstance(value, str) or value != self.nodes[-1].name or self.nodes[-1].op not in (
                "linear", "linear_float"):
            raise ExportError("the model's output must be its last linear layer (logits)")
        self.output = value


def lower_plain(model: nn.Module, image_shape: "tuple | None" = None) -> IntegerModel:
    """The plain quantized graph of an eval-mode quantized network, before any transform: integer
    convs, their real outputs (affine), batch norms (affine) and activation quantizers (quantize)."""
    return _Lowering(model, tuple(image_shape) if image_shape is not None else None).run()


def lower(model: nn.Module, image_shape: "tuple | None" = None) -> IntegerModel:
    """The integer graph of an eval-mode quantized pixelq network (quantized first layer, weights and
    activations): a pixelq ResNet or CNV, or a model made with `quantize_model`. `image_shape`
    (H, W, C) is needed only where global average pooling feeds a hidden linear layer. It is
    `lower_plain`, then `fold`."""
    return fold(lower_plain(model, image_shape))


def fold(plain: IntegerModel) -> IntegerModel:
    """A plain graph (`lower_plain`) through EXPORT_TRANSFORMS: the integer graph; ExportError where
    a real value is left that no threshold holds."""
    graph = apply(plain, EXPORT_TRANSFORMS)
    left = [n.name for n in graph.nodes if n.op in ("affine", "quantize")]
    if left:  # a real value no activation quantizer reads, or a quantizer on something else
        raise ExportError(f"{', '.join(left)}: no integer form (a conv or batch norm whose output is not quantized "
                          "by an activation quantizer)")
    return graph
