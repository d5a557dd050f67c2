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

from .packing import code_bits

# What each op's node carries besides op, name, inputs: its attributes and its tensors.
NODE_SCHEMA = {
    "lut": ({"d", "in_channels", "qmin", "qmax", "step"}, {"lut"}),
    "conv": ({"in_channels", "out_channels", "input_range", "kernel", "stride", "padding", "weight_bits",
              "weight_lowest", "weight_stride"}, {"weight"}),
    "threshold": ({"qmin", "qmax", "step"}, {"direction", "thresholds"}),
    "add_clip": ({"qmin", "qmax", "step"}, set()),
    "subsample_pad": ({"stride", "extra_channels"}, set()),
    "max_pool": ({"kernel", "stride"}, set()),
    "sum_pool": ({"step"}, set()),
    "linear": ({"in_channels", "out_channels", "weight_bits", "weight_lowest", "weight_stride"}, {"weight"}),
    "linear_float": ({"step"}, {"weight", "bias"}),
    "affine": (set(), {"scale", "bias"}),
    "quantize": ({"qmin", "qmax", "step"}, set()),
}


def check_node(node: dict) -> None:
    """ValueError unless `node` is a known op with exactly the attributes and tensors NODE_SCHEMA names."""
    if node.get("op") not in NODE_SCHEMA:
        raise ValueError(f"node {node.get('name')!r}: unknown op {node.get('op')!r}")
    attrs, tensors = NODE_SCHEMA[node["op"]]
    missing = sorted(attrs - set(node)) + sorted(tensors - set(node["tensors"]))
    if missing or not isinstance(node["name"], str) or not isinstance(node["inputs"], list):
        raise ValueError(f"node {node['name']!r} ({node['op']}): missing {', '.join(missing) or 'name or inputs'}")
    bad = [k for k in attrs if not isinstance(node[k], (int, float, list)) or isinstance(node[k], bool)]
    if bad:
        raise ValueError(f"node {node['name']!r} ({node['op']}): {', '.join(sorted(bad))} must be numbers")


@dataclass
class IntegerModel:
    """An integer-only graph plus what a user needs to feed it and read its output."""

    nodes: list
    tensors: dict
    meta: dict = field(default_factory=dict)

    def node(self, name: str) -> dict:
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise KeyError(name)


def graph_table(model: IntegerModel, image_shape: tuple) -> list[dict]:
    """One row per node on one (H, W, C) image: name, op, inputs, output shape, the bits of its
    output codes (None for accumulators and logits) and its MACs (convs and linear layers)."""
    shape = {"image": tuple(image_shape)}
    bits = {"image": 8}
    rows = []
    for node in model.nodes:
        op, inp = node["op"], node["inputs"][0]
        h, w, c = shape[inp] if len(shape[inp]) == 3 else (1, 1, shape[inp][0])
        macs = 0
        if op == "lut":
            c = node["in_channels"] * node["d"]
        elif op == "conv":
            k, s, p = node["kernel"], node["stride"], node["padding"]
            h, w, c = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, node["out_channels"]
            macs = h * w * c * node["in_channels"] * k * k // node.get("groups", 1)
        elif op == "subsample_pad":
            h, w, c = -(-h // node["stride"]), -(-w // node["stride"]), c + node["extra_channels"]
        elif op == "max_pool":
            h, w = (h - node["kernel"]) // node["stride"] + 1, (w - node["kernel"]) // node["stride"] + 1
        shape[node["name"]] = (c,) if op == "sum_pool" else (h, w, c)
        if op in ("linear", "linear_float"):
            out_c, in_c = model.tensors[f"{node['name']}.weight"].shape
            shape[node["name"]], macs = (out_c,), out_c * in_c
        if "qmin" in node:
            bits[node["name"]] = code_bits(node["qmin"], node["qmax"])
        elif op in ("subsample_pad", "sum_pool", "max_pool"):
            bits[node["name"]] = bits[inp]  # the same codes, moved or summed
        rows.append({"layer": node["name"], "op": op, "inputs": node["inputs"], "shape": list(shape[node["name"]]),
                     "bits": bits.get(node["name"]), "input_bits": bits.get(inp), "macs": macs})
    return rows


def graph_costs(model: IntegerModel, image_shape: tuple) -> list[dict]:
    """`pixelq.models.layer_costs` read off an integer graph: per conv / linear node on one (H, W, C)
    image, MACs, weight bits, input code bits, BOPs and stored weight bits. The last layer's input
    (pooled sums) counts at the bits of the codes pooled, as in `layer_costs`."""
    nodes = {n["name"]: n for n in model.nodes}
    rows = []
    for r in graph_table(model, image_shape):
        if r["op"] in ("conv", "linear", "linear_float"):
            node = nodes[r["layer"]]
            w_bits = node.get("weight_bits", 32)
            in_bits = code_bits(*node["input_range"]) if r["op"] == "conv" else r["input_bits"]
            weights = int(np.prod(model.tensors[f"{r['layer']}.weight"].shape))
            rows.append({"layer": r["layer"], "kind": r["op"], "macs": r["macs"], "weight_bits": w_bits,
                         "input_bits": in_bits, "bops": r["macs"] * w_bits * in_bits, "param_bits": weights * w_bits})
    return rows
