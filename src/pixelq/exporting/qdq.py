"""The plain quantized graph as QDQ ONNX (`pixelq export --format onnx`): the form ONNX Runtime runs
with its int8 kernels (QLinearConv, QLinearAdd, ...), and other QDQ-reading tools read.

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


def to_qdq(plain: IntegerModel):
    """The QDQ ONNX ModelProto of a plain graph (`lower_plain`; batch norms are folded here)."""
    g = OnnxGraph()
    const, op = g.const, g.op
    graph = apply(plain, (fold_batchnorm,))
    by_name = {node["name"]: node for node in graph.nodes}
    readers = {node["inputs"][0]: node for node in graph.nodes if node["op"] == "quantize"}
    codes = {}  # node name -> (uint8 tensor, step, zero point)
    dequantized = {}

    def dequantize(name: str) -> str:
        """The real values of node `name`'s codes (one DequantizeLinear however many read them)."""
        if name in dequantized:
            return dequantized[name]
        tensor, step, zero_point = codes[name]
        zero = const(f"{name}/zero", np.array(zero_point, np.uint8))
        dequantized[name] = op("DequantizeLinear", [tensor, const(f"{name}/step", np.float32(step)), zero],
                               f"{name}/real")
        return dequantized[name]

    def quantize(name: str, real: str, step: float, qmin: int, qmax: int) -> None:
        zero = _zero_point(name, qmin, qmax)
        q = op("QuantizeLinear", [real, const(f"{name}/q_step", np.float32(step)),
                                  const(f"{name}/q_zero", np.array(zero, np.uint8))], f"{name}/q")
        lo, hi = (const(f"{name}/{k}", np.array(v + zero, np.uint8)) for k, v in (("qmin", qmin), ("qmax", qmax)))
        codes[name] = (op("Clip", [q, lo, hi], name), step, zero)

    mean = None  # the pooled real codes
    for node in graph.nodes:
        name, kind = node["name"], node["op"]
        t = {k: graph.tensors[f"{name}.{k}"] for k in node["tensors"]}
        if kind == "lut":
            zero = _zero_point(name, node["qmin"], node["qmax"])
            table = (np.asarray(t["lut"], np.int64) + zero).astype(np.uint8)  # (T, 256, d)
            codes[name] = (g.lookup(name, table, node["in_channels"]), node["step"], zero)
        elif kind == "conv":
            continue  # written with the affine that reads it
        elif kind == "affine":
            conv = by_name.get(node["inputs"][0])
            if node["inputs"][0] in codes and codes[node["inputs"][0]][1] is not None:  # codes requantized
                _, step_in, _ = codes[node["inputs"][0]]
                if not (np.allclose(t["scale"], step_in, rtol=1e-6, atol=0) and not np.any(t["bias"])):
                    raise ExportError(f"{name}: an affine of codes must be their real values (scale = step, no bias)")
                codes[name] = (dequantize(node["inputs"][0]), None, None)
                continue
            if conv is None or conv["op"] != "conv":
                raise ExportError(f"{name}: an affine node must read a conv or codes in the QDQ form")
            weight = np.asarray(graph.tensors[f"{conv['name']}.weight"], np.int64).transpose(0, 3, 1, 2)  # OIHW
            if weight.min(initial=0) < -127 or weight.max(initial=0) > 127:
                raise ExportError(f"{conv['name']}: weight codes beyond int8 have no QDQ form")
            _, step_in, _ = codes[conv["inputs"][0]]
            a, b = np.asarray(t["scale"], np.float64), np.asarray(t["bias"], np.float64)
            # int8 weights: the codes times `spread`, sign-flipped where a < 0, each channel's scale |a| / spread
            # (so dequantized weight x step_in = a x codes): the int32 bias then has a grid 1 / spread of
            # an accumulator unit, as fine as int8 allows
            spread = 127 // max(int(np.abs(weight).max(initial=0)), 1)
            sign = np.where(a < 0, -1, 1)
            w_scale = np.where(a == 0, 1.0, np.abs(a)) / (step_in * spread)
            w_codes = np.where((a == 0)[:, None, None, None], 0, weight * (sign * spread)[:, None, None, None])
            bias_scale = w_scale * step_in
            q = readers[name]
            bias = _bias_codes(np.abs(a), b, bias_scale, q["step"], q["qmin"], q["qmax"])
            w = op("DequantizeLinear", [const(f"{name}/w_codes", w_codes.astype(np.int8)),
                                        const(f"{name}/w_scale", w_scale.astype(np.float32)),
                                        const(f"{name}/w_zero", np.zeros(len(a), np.int8))], f"{name}/w", axis=0)
            bias = op("DequantizeLinear", [const(f"{name}/b_int", bias),
                                           const(f"{name}/b_scale", bias_scale.astype(np.float32)),
                                           const(f"{name}/b_zero", np.zeros(len(a), np.int32))], f"{name}/b", axis=0)
            k, s, p = conv["kernel"], conv["stride"], conv["padding"]
            real = op("Conv", [dequantize(conv["inputs"][0]), w, bias], f"{name}/conv", kernel_shape=[k, k],
                      strides=[s, s], pads=[p, p, p, p], group=conv.get("groups", 1))
            codes[name] = (real, None, None)  # a real value, for the quantize that reads it
        elif kind == "quantize":
            quantize(name, codes[node["inputs"][0]][0], node["step"], node["qmin"], node["qmax"])
        elif kind == "add_clip":
            added = op("Add", [dequantize(i) for i in node["inputs"]], f"{name}/sum")
            quantize(name, added, node["step"], node["qmin"], node["qmax"])
        elif kind == "subsample_pad":
            tensor, step, zero = codes[node["inputs"][0]]
            fill = const(f"{name}/code_zero", np.array(zero, np.uint8))  # the appended channels' code 0
            codes[name] = (g.subsample_pad(name, tensor, node["stride"], node["extra_channels"], fill), step, zero)
        elif kind == "max_pool":
            tensor, step, zero = codes[node["inputs"][0]]
            k, s = node["kernel"], node["stride"]
            codes[name] = (op("MaxPool", [tensor], name, kernel_shape=[k, k], strides=[s, s]), step, zero)
        elif kind == "sum_pool":
            mean = op("ReduceMean", [dequantize(node["inputs"][0])], name, axes=[2, 3],
                      keepdims=0)  # the mean of the real codes: sums x step / count (axes an attribute until opset 18)
        elif kind == "linear":  # logits = mean x codes x per-class scale / step
            scale = np.asarray(graph.meta["logit_scale"], np.float64) / by_name[node["inputs"][0]]["step"]
            w = op("DequantizeLinear", [const(f"{name}/w_codes", np.asarray(t["weight"]).T.astype(np.int8)),
                                        const(f"{name}/w_scale", scale.astype(np.float32)),
                                        const(f"{name}/w_zero", np.zeros(len(scale), np.int8))], f"{name}/w", axis=1)
            codes[name] = (op("MatMul", [mean, w], name), None, None)
        elif kind == "linear_float":
            product = op("MatMul", [mean, const(f"{name}/weight", np.asarray(t["weight"], np.float32).T)],
                         f"{name}/product")
            codes[name] = (op("Add", [product, const(f"{name}/bias", np.asarray(t["bias"], np.float32))], name),
                           None, None)
        else:
            raise ExportError(f"{name}: op {kind!r} has no QDQ form")
    return g.model(graph.meta, codes[graph.meta["output"]][0], "pixelq-qdq")
