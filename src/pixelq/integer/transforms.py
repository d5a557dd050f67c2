"""Graph-to-graph transforms: each takes an IntegerModel and returns a new one that computes the same
outputs (checked by running the reference executor before and after it, tests/test_transforms.py).

Export lowers a PyTorch model to a plain quantized graph (integer convs, their real-valued
`affine` outputs, `quantize` nodes) and applies EXPORT_TRANSFORMS, which leave the integer-only
graph a .pxq file holds:
  fold_batchnorm   affine -> affine (a conv's scales, then batch norm): one affine
  fold_thresholds  affine -> quantize on an integer accumulator: one threshold node
The fast runtime applies its own (pixelq.runtime.fusion) at load. Only numpy.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from .graph import IntegerModel
from .ops import Node, Threshold, retyped

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def fold_batchnorm_into_thresholds(a: np.ndarray, b: np.ndarray, step: float, qmin: int, qmax: int) -> tuple:
    """Thresholds for code = clip(round((a * A + b) / step), qmin, qmax) on an integer accumulator A.

    Returns (direction (C,) int8 of +1/-1, thresholds (C, qmax - qmin) int32) such that
        code = qmin + #{k : direction * A >= thresholds[:, k]}.
    Code >= k  <=>  a A + b >= (k - 1/2) step: for a > 0, A >= ceil(((k - 1/2) step - b) / a);
    a negative a flips the comparison (direction -1); a = 0 gives a constant code.
    Exact except where a A + b lands on a rounding boundary (a float tie).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    levels = (np.arange(qmin + 1, qmax + 1) - 0.5) * step  # real value at which code reaches qmin+1 .. qmax
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (levels[None, :] - b[:, None]) / a[:, None]
    direction = np.where(a < 0, -1, 1).astype(np.int8)
    up = np.ceil(bound)
    down = -np.floor(bound)  # A <= floor(bound)  <=>  -A >= -floor(bound)
    thresholds = np.where(a[:, None] > 0, up, down)
    constant = a == 0
    passed = b[:, None] >= levels[None, :]
    thresholds[constant] = np.where(passed[constant], INT32_MIN, INT32_MAX)
    return direction, np.clip(thresholds, INT32_MIN, INT32_MAX).astype(np.int32)


class Rewrite:
    """A copy of a graph being rewritten: nodes by name, who reads what, and helpers that keep the
    tensors (keyed "node.tensor") with their nodes. Nodes are frozen: each helper puts a new node
    (`dataclasses.replace`, `ops.retyped`) in the old one's place and returns it, and every helper
    takes the node as it is now (by name), so a loop over `nodes` may hold one it has since changed.
    `result()` gives the new IntegerModel, nodes in their original order, dropped ones left out."""

    def __init__(self, model: IntegerModel):
        self.nodes = list(model.nodes)
        self.tensors, self.meta = dict(model.tensors), dict(model.meta)
        self.by_name = {node.name: node for node in self.nodes}
        self.place = {node.name: i for i, node in enumerate(self.nodes)}
        self.readers = Counter(name for node in self.nodes for name in node.inputs)
        self.dropped: set = set()

    def source(self, node: Node, i: int = 0) -> "Node | None":
        """The node whose output is node's i-th input (None for the image)."""
        return self.by_name.get(self.by_name[node.name].inputs[i])

    def only_reader(self, node: "Node | None") -> bool:
        return node is not None and self.readers[node.name] == 1 and node.name != self.meta.get("output")

    def tensor(self, node: Node, key: str) -> np.ndarray:
        return self.tensors[node.tensor_name(key)]

    def put(self, node: Node, new: Node) -> Node:
        """`new` in the place of `node` (and of its name)."""
        i = self.place.pop(node.name)
        del self.by_name[node.name]
        self.nodes[i], self.place[new.name], self.by_name[new.name] = new, i, new
        return new

    def update(self, node: Node, **changes) -> Node:
        """The node with fields changed."""
        node = self.by_name[node.name]
        return self.put(node, dataclasses.replace(node, **changes))

    def retype(self, node: Node, cls: type, **changes) -> Node:
        """The node as a node of op `cls` (the fields both have kept), fields changed."""
        node = self.by_name[node.name]
        return self.put(node, retyped(node, cls, **changes))

    def set_tensor(self, node: Node, key: str, array: np.ndarray) -> Node:
        node = self.by_name[node.name]
        self.tensors[node.tensor_name(key)] = array
        return node if key in node.tensors else self.update(node, tensors=tuple(sorted((*node.tensors, key))))

    def drop(self, node: Node) -> None:
        """Remove `node` (its readers must have been rewired) and its tensors."""
        node = self.by_name[node.name]
        self.dropped.add(node.name)
        for key in node.tensors:
            del self.tensors[node.tensor_name(key)]

    def rename(self, node: Node, name: str) -> Node:
        """`node` under a new name (its output is no longer what the old name meant): its tensors
        and its readers' inputs follow."""
        node = self.by_name[node.name]
        old = node.name
        for key in node.tensors:
            self.tensors[f"{name}.{key}"] = self.tensors.pop(node.tensor_name(key))
        renamed = self.put(node, dataclasses.replace(node, name=name))
        for reader in list(self.nodes):
            if old in reader.inputs:
                self.put(reader, dataclasses.replace(reader, inputs=tuple(name if i == old else i for i in reader.inputs)))
        self.readers[name] = self.readers.pop(old)
        return renamed

    def replace(self, node: Node, cls: type, tensors: dict, **attrs) -> Node:
        """`node` in place as a node of another op computing the same output: same name and inputs,
        `tensors` instead of its own, `attrs` set."""
        node = self.by_name[node.name]
        for key in node.tensors:
            del self.tensors[node.tensor_name(key)]
        node = self.retype(node, cls, tensors=(), **attrs)
        for key, array in tensors.items():
            node = self.set_tensor(node, key, array)
        return node

    def absorb(self, later: Node, earlier: Node, cls: "type | None" = None, **changes) -> Node:
        """`earlier`, which only `later` reads, merged into `later`'s place: the merged node keeps
        `later`'s name (its readers need no change), takes `earlier`'s tensors and `changes`, and
        becomes a node of op `cls` if given."""
        earlier = self.by_name[earlier.name]
        for key in earlier.tensors:
            later = self.set_tensor(later, key, self.tensor(earlier, key))
        self.drop(earlier)
        return self.retype(later, cls, **changes) if cls else self.update(later, **changes)

    def result(self) -> IntegerModel:
        return IntegerModel([n for n in self.nodes if n.name not in self.dropped], self.tensors, self.meta)


def fold_batchnorm(model: IntegerModel) -> IntegerModel:
    """affine -> affine, the first read only by the second (a conv's scales, then its batch norm):
    one affine, y = s2 (s1 x + b1) + b2, named after the second."""
    g = Rewrite(model)
    for node in g.nodes:
        first = g.source(node) if node.op == "affine" else None
        if first is None or first.op != "affine" or not g.only_reader(first):
            continue
        s1, b1, s2, b2 = g.tensor(first, "scale"), g.tensor(first, "bias"), g.tensor(node, "scale"), g.tensor(node, "bias")
        g.drop(first)
        g.update(node, inputs=first.inputs)
        g.set_tensor(node, "scale", s2 * s1)
        g.set_tensor(node, "bias", s2 * b1 + b2)
    return g.result()


def fold_thresholds(model: IntegerModel) -> IntegerModel:
    """quantize of an affine of an integer accumulator (the affine read by nothing else) -> one
    threshold node on the accumulator, named after the quantize node
    (`fold_batchnorm_into_thresholds`)."""
    g = Rewrite(model)
    for node in g.nodes:
        affine = g.source(node) if node.op == "quantize" else None
        if affine is None or affine.op != "affine" or not g.only_reader(affine):
            continue
        direction, thresholds = fold_batchnorm_into_thresholds(g.tensor(affine, "scale"), g.tensor(affine, "bias"),
                                                               node.step, node.qmin, node.qmax)
        g.drop(affine)
        g.replace(node, Threshold, {"direction": direction, "thresholds": thresholds}, inputs=affine.inputs)
    return g.result()


EXPORT_TRANSFORMS = (fold_batchnorm, fold_thresholds)


def apply(model: IntegerModel, transforms) -> IntegerModel:
    """`model` through each transform in turn."""
    for transform in transforms:
        model = transform(model)
    return model
