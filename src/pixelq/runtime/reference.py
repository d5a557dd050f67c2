"""The slow, obvious integer executor: each node run by its op's reference computation
(`pixelq.integer.ops`, numpy, int64), one at a time. The fast runtime and the PyTorch fake-quant model
are both checked against it."""
from __future__ import annotations

import numpy as np

from ..errors import ModelFileError
from ..integer.ops import OPS


def node_tensors(model) -> list:
    """Each node's tensors by their short name, in node order."""
    return [{k: model.tensors[f"{node['name']}.{k}"] for k in node["tensors"]} for node in model.nodes]


def run_graph(model, images: np.ndarray, ops: "dict | None" = None, tensors: "list | None" = None) -> dict:
    """Every node's output for uint8 NHWC `images`, keyed by node name ("image" holds the input).
    `ops` ({op name: f(node, inputs, tensors, values)}) replaces some ops' reference computations (the
    fast executor passes its C kernels); `tensors`, when given, is node_tensors(model), gathered once
    by a caller that runs the graph many times."""
    values = {"image": images}
    for node, t in zip(model.nodes, tensors or node_tensors(model)):
        if node["op"] not in OPS:
            raise ModelFileError(f"unknown op {node['op']!r} in the model file; it needs a newer pixelq")
        run = (ops or {}).get(node["op"]) or OPS[node["op"]].reference
        values[node["name"]] = run(node, [values[i] for i in node["inputs"]], t, values)
    return values


def run_reference(model, images: np.ndarray) -> dict:
    """run_graph with the numpy reference for every op."""
    return run_graph(model, images)
