"""The plain quantized graph as QDQ ONNX (`pixelq export --format onnx`): the form ONNX Runtime runs
with its int8 kernels (QLinearConv, QLinearAdd, ...), and other QDQ-reading tools read. Each op
writes its own QDQ nodes (its `qdq` method in `pixelq.integer.ops`, with a `QdqForm`).

Activation codes travel as uint8 tensors with the step as their scale and zero point 0 (signed codes
shifted: zero point -qmin, e.g. 128 for an int8 first layer's pixel - 128); every conv reads DequantizeLinear(codes) and DequantizeLinear(weight codes, per output
channel) and its output goes straight to QuantizeLinear, the pattern ONNX Runtime fuses:
  lut                    Gather of the code table (uint8 / int8), NHWC -> NCHW
  conv + affine          Conv of the dequantized codes and weights, its batch norm folded in: the weight
                         codes times the largest spread int8 holds (127 for binary), signs flipped where
                         the scale a is negative, scale |a| / spread per channel, the bias int32 on
                         that grid, placed where every integer accumulator gets the code the thresholds
                         give it (`_bias_codes`; where no grid point does, rounded)
  quantize               QuantizeLinear (step), then Clip to [qmin, qmax] on the integers
  affine of codes        DequantizeLinear (codes requantized to another grid: the quantize that reads it
                         follows)
  add_clip               DequantizeLinear x 2, Add, QuantizeLinear, Clip
  subsample_pad          Slice with steps, Pad of channels, on the codes
  max_pool               MaxPool on the codes
  sum_pool + linear      DequantizeLinear, ReduceMean over the map, MatMul with the dequantized weight
                         codes (per-class scale), or with the float weights and bias (linear_float)
It reads the graph of `lower_plain` after `fold_batchnorm`: the .pxq graph's thresholds have no
QDQ form. The input is the uint8 image batch (N, H, W, C), "image"; the output float "logits".
"""
from __future__ import annotations

import numpy as np

from ..errors import ExportError
from ..integer import IntegerModel
from ..integer.transforms import INT32_MAX, INT32_MIN, apply, fold_batchnorm
from .onnx import OnnxGraph


def _zero_point(name: str, qmin: int, qmax: int) -> int:
    """The uint8 zero point of codes in [qmin, qmax]: 0, or -qmin for signed ones."""
    zero = max(0, -qmin)
    if qmax + zero > 255:
        raise ExportError(f"{name}: codes {qmin}..{qmax} span more than a byte; the QDQ form holds uint8 codes")
    return zero


def _bias_codes(a: np.ndarray, b: np.ndarray, grid: np.ndarray, step: float, qmin: int, qmax: int) -> np.ndarray:
    """The int32 bias (in units of `grid`, per channel) of a conv whose real output a A + b (a >= 0,
    A an integer) is quantized to [qmin, qmax] with `step`: any bias b' keeps every code where, for
    each level L_k = (k - 1/2) step, the same integers A reach it: with T_k = ceil((L_k - b) / a),
    b' in [L_k - a T_k, L_k - a (T_k - 1)). The grid point nearest the middle of all those intervals
    (the most room on both sides, for ONNX Runtime's float32 requantization); plain rounding of b
    where no grid point lies strictly inside, or a = 0."""
    levels = (np.arange(qmin + 1, qmax + 1) - 0.5) * step
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.ceil((levels[None, :] - b[:, None]) / a[:, None])
        lo = (levels[None, :] - a[:, None] * t).max(1)
        hi = (levels[None, :] - a[:, None] * (t - 1)).min(1)
    first, last = np.floor(lo / grid) + 1, np.ceil(hi / grid) - 1
    middle = np.clip(np.round((lo + hi) / 2 / grid), first, last)
    inside = (a > 0) & np.isfinite(middle) & (first <= last)
    codes = np.where(inside, middle, np.round(b / grid))
    return np.clip(codes, INT32_MIN, INT32_MAX).astype(np.int32)


class QdqForm:
    """What an op's `qdq` method writes into (`pixelq.integer.ops`): the graph; each node's output as
    (tensor, step, zero point): uint8 codes on their step, or (real values, None, None); the plain
    graph's nodes by name and each affine's reading quantize; the pooled mean for the last layer."""

    bias_codes = staticmethod(_bias_codes)

    def __init__(self, graph: OnnxGraph, plain: IntegerModel):
        self.graph, self.model, self.meta = graph, plain, plain.meta
        self.by_name = {node.name: node for node in plain.nodes}
        self.readers = {node.inputs[0]: node for node in plain.nodes if node.op == "quantize"}
        self.codes, self._dequantized = {}, {}
        self.mean = None  # the pooled real codes

    def dequantize(self, name: str) -> str:
        """The real values of node `name`'s codes (one DequantizeLinear however many read them)."""
        if name not in self._dequantized:
            tensor, step, zero_point = self.codes[name]
            zero = self.graph.const(f"{name}/zero", np.array(zero_point, np.uint8))
            self._dequantized[name] = self.graph.op("DequantizeLinear", [tensor, self.graph.const(
                f"{name}/step", np.float32(step)), zero], f"{name}/real")
        return self._dequantized[name]

    def quantize(self, name: str, real: str, step: float, qmin: int, qmax: int) -> None:
        """Node `name`'s codes: QuantizeLinear of `real` on `step`, clipped to [qmin, qmax]."""
        const, op = self.graph.const, self.graph.op
        zero = _zero_point(name, qmin, qmax)
        q = op("QuantizeLinear", [real, const(f"{name}/q_step", np.float32(step)),
                                  const(f"{name}/q_zero", np.array(zero, np.uint8))], f"{name}/q")
        lo, hi = (const(f"{name}/{k}", np.array(v + zero, np.uint8)) for k, v in (("qmin", qmin), ("qmax", qmax)))
        self.codes[name] = (op("Clip", [q, lo, hi], name), step, zero)

    def zero_point(self, name: str, qmin: int, qmax: int) -> int:
        return _zero_point(name, qmin, qmax)


def to_qdq(plain: IntegerModel):
    """The QDQ ONNX ModelProto of a plain graph (`lower_plain`; batch norms are folded here), each
    node written by its op's `qdq` method (`pixelq.integer.ops`)."""
    graph = apply(plain, (fold_batchnorm,))
    form = QdqForm(OnnxGraph(), graph)
    for node in graph.nodes:
        node.qdq(form, {k: graph.tensors[node.tensor_name(k)] for k in node.tensors})
    return form.graph.model(graph.meta, form.codes[graph.meta["output"]][0], "pixelq-qdq")
