"""The slow, obvious integer executor: each node run by its op's reference computation
(`pixelq.integer.ops`, numpy, int64), one at a time. The fast runtime and the PyTorch fake-quant model
are both checked against it."""
from __future__ import annotations

import numpy as np


def node_tensors(model) -> list:
    """Each node's tensors by their short name, in node order."""
    return [{k: model.tensors[node.tensor_name(k)] for k in node.tensors} for node in model.nodes]


def run_reference(model, images: np.ndarray) -> dict:
    """Every node's output for uint8 NHWC `images`, keyed by node name ("image" holds the input)."""
    values = {"image": images}
    for node, t in zip(model.nodes, node_tensors(model)):
        values[node.name] = node.reference([values[i] for i in node.inputs], t, values)
    return values
