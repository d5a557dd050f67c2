"""The integer graph: typed nodes in execution order, their tensors, and what a user needs to
feed the model and read its output. Only numpy: the runtime and the .pxq file need nothing else.

The graph is a list of nodes in execution order; each names its inputs (earlier outputs, or
"image") and its output, which is named after the PyTorch module it replaces, so every layer's
integer codes can be compared with the fake-quant model's (`code = output / step`).
Ops and the tensors they hold (activations are NHWC):
  lut           lut (tables, 256, d) int16            uint8 image -> codes, channel t*d + j
  conv          weight (O, kh, kw, I / g) int codes   codes -> int accumulator; attrs stride, padding,
                                                      groups g (optional, default 1: a dense conv)
  threshold     direction (O,), thresholds (O, L)     accumulator -> codes (see transforms.fold_thresholds)
  add_clip      -                                     codes + codes, clipped to [qmin, qmax]
  subsample_pad -                                     stride-s subsampling, zero channels appended
  max_pool      -                                     codes -> the largest code of each k x k window (stride s)
  sum_pool      -                                     codes -> per-channel sums (N, C)
  linear        weight (O, I) int codes               sums -> int32 logits (quantized last layer)
  linear_float  weight (O, I), bias (O,) float32      sums * step / count -> float logits (float last layer)
Export's plain graph has two more, which its transforms fold into thresholds (transforms.py):
  affine        scale (O,), bias (O,) float64         accumulator -> real values scale * A + bias
  quantize      -                                     real values -> codes clip(round(x / step), qmin, qmax)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ops import Node, infer_shapes
from .packing import code_bits

@dataclass
class IntegerModel:
    """An integer-only graph plus what a user needs to feed it and read its output."""

    nodes: list  # of Node (pixelq.integer.ops), in execution order
    tensors: dict
    meta: dict = field(default_factory=dict)
    # The graph the runtime executes (`pixelq.runtime.fusion.plan` of this one), as a model file
    # stores it so that no runtime plans at load; None for a graph not read from a file.
    plan: "IntegerModel | None" = None

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def graph_table(model: IntegerModel, image_shape: tuple) -> list[dict]:
    """One row per node on one (H, W, C) image: name, op, inputs, output shape, the bits of its
    output codes (None for accumulators and logits) and its MACs (convs and linear layers); shapes
    and MACs from each node's op class (`ops`), which checks the graph on the way."""
    shapes = infer_shapes(model.nodes, model.tensors, tuple(image_shape))
    bits = {"image": 8}
    rows = []
    for node in model.nodes:
        inp = node.inputs[0]
        if getattr(node, "qmin", None) is not None:
            bits[node.name] = code_bits(node.qmin, node.qmax)
        elif node.op in ("subsample_pad", "sum_pool", "max_pool"):
            bits[node.name] = bits[inp]  # the same codes, moved or summed
        rows.append({"layer": node.name, "op": node.op, "inputs": list(node.inputs),
                     "shape": list(shapes[node.name]), "bits": bits.get(node.name), "input_bits": bits.get(inp),
                     "macs": node.macs(shapes[inp], shapes[node.name], model.tensors)})
    return rows


def graph_costs(model: IntegerModel, image_shape: tuple) -> list[dict]:
    """`pixelq.models.layer_costs` read off an integer graph: per conv / linear node on one (H, W, C)
    image, MACs, weight bits, input code bits, BOPs and stored weight bits. The last layer's input
    (pooled sums) counts at the bits of the codes pooled, as in `layer_costs`."""
    nodes = {n.name: n for n in model.nodes}
    rows = []
    for r in graph_table(model, image_shape):
        if r["op"] in ("conv", "linear", "linear_float"):
            node = nodes[r["layer"]]
            w_bits = getattr(node, "weight_bits", 32)
            in_bits = code_bits(*node.input_range) if r["op"] == "conv" else r["input_bits"]
            weights = int(np.prod(model.tensors[f"{r['layer']}.weight"].shape))
            rows.append({"layer": r["layer"], "kind": r["op"], "macs": r["macs"], "weight_bits": w_bits,
                         "input_bits": in_bits, "bops": r["macs"] * w_bits * in_bits, "param_bits": weights * w_bits})
    return rows
