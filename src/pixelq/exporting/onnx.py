"""The integer graph as an ONNX model (`pixelq export --format onnx-integer`), for checking and other tools
(the QDQ form ONNX Runtime accelerates, `--format onnx`, is qdq.py).

A graph-to-graph transform of `pixelq.integer.IntegerModel`, op for op (each op's `onnx` method in
`pixelq.integer.ops` writes its nodes), in standard ONNX (opset 17): codes are integers held in float32
tensors (NCHW), exact while accumulators stay below 2^24, so the model computes what the integer
runtime does, labels included:
  lut            Gather from the tables (one per colour, or shared), then NHWC -> NCHW
  conv           Conv with the weight codes
  threshold      qmin + ReduceSum(direction * acc >= thresholds) over the levels
  add_clip       Add, Clip
  subsample_pad  Slice with steps, Pad of channels
  max_pool       MaxPool
  sum_pool       ReduceSum over the map (the count kept for the logits' scale)
  linear         MatMul, times the per-class scale / count -> float logits
  linear_float   the pooled mean times the weights, plus the bias
The input is the uint8 image batch (N, H, W, C), named "image"; the output float logits, "logits".

With `qonnx=True` it is the form FINN reads (QONNX): weight codes pass through BipolarQuant (binary)
or Quant (scale 1, the codes' bit width: the codes unchanged) nodes, and each threshold node is a
MultiThreshold (its thresholds, out_bias qmin), from the qonnx.custom_op.general domain; execute it
with the qonnx package.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..integer import IntegerModel, infer_shapes

OPSET = 17


QONNX_DOMAIN = "qonnx.custom_op.general"


def _signed_bits(lo: int, hi: int) -> int:
    """The bit width of a signed integer type holding lo .. hi."""
    return max(int(max(-lo, hi + 1) - 1).bit_length() + 1, 2)


class OnnxGraph:
    """An ONNX graph being written, node by node, and the pieces every pixelq form shares: the lookup,
    the shortcut's subsampling, the model around the nodes (input "image", output "logits")."""

    def __init__(self):
        try:
            import onnx
        except ImportError as e:
            raise ExportError("ONNX export needs the onnx package: pip install 'pixelq[bench]'") from e
        self.onnx, self.nodes, self.inits = onnx, [], []

    def const(self, name: str, array) -> str:
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, kind: str, inputs: list, output: str, **attrs) -> str:
        self.nodes.append(self.onnx.helper.make_node(kind, inputs, [output], **attrs))
        return output

    def lookup(self, name: str, table: np.ndarray, colours: int) -> str:
        """The image's pixels looked up in `table` (T, 256, d), one table per colour or one shared,
        as an NCHW tensor of `table`'s type named `name`: colour c's codes are channels c*d ..."""
        index = self.op("Cast", ["image"], f"{name}/index", to=self.onnx.TensorProto.INT64)
        if table.shape[0] > 1:  # one table per colour: colour c's values index rows 256 c ..
            index = self.op("Add", [index, self.const(f"{name}/offsets", 256 * np.arange(colours, dtype=np.int64))],
                            f"{name}/rows")
        rows = self.const(f"{name}/table", table.reshape(-1, table.shape[2]))
        codes = self.op("Gather", [rows, index], f"{name}/codes", axis=0)
        nhwc = self.op("Reshape", [codes, self.const(f"{name}/shape", np.array([0, 0, 0, -1], np.int64))],
                       f"{name}/nhwc")
        return self.op("Transpose", [nhwc], name, perm=[0, 3, 1, 2])

    def subsample_pad(self, name: str, x: str, stride: int, extra: int, fill: "str | None" = None) -> str:
        """x[:, :, ::stride, ::stride] with `extra` channels appended, holding `fill` (a constant; default 0)."""
        big = np.iinfo(np.int64).max
        sub = self.op("Slice", [x, self.const(f"{name}/starts", np.array([0, 0], np.int64)),
                                self.const(f"{name}/ends", np.array([big, big], np.int64)),
                                self.const(f"{name}/axes", np.array([2, 3], np.int64)),
                                self.const(f"{name}/steps", np.array([stride, stride], np.int64))], f"{name}/sub")
        pads = self.const(f"{name}/pads", np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64))
        return self.op("Pad", [sub, pads] + ([fill] if fill is not None else []), name)

    def model(self, meta: dict, logits: str, title: str, qonnx: bool = False, shapes: "dict | None" = None):
        """The ModelProto: uint8 "image" (N, H, W, C) in, float "logits" out (`logits` the tensor that
        holds them), H and W fixed where the model records its image shape; checked by ONNX's checker
        unless it holds QONNX's custom ops. QONNX (FINN's form) is written for batch 1 with every
        tensor's shape in it - `shapes` gives the custom ops' outputs, ONNX's shape inference the rest
        - and the image's data type annotated UINT8, so that it executes as written."""
        helper, types = self.onnx.helper, self.onnx.TensorProto
        self.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
        h, w = (meta.get("image_shape") or ["H", "W"])[:2]
        batch = 1 if qonnx else "N"
        graph = helper.make_graph(
            self.nodes, title, [helper.make_tensor_value_info("image", types.UINT8, [batch, h, w, meta["in_channels"]])],
            [helper.make_tensor_value_info("logits", types.FLOAT, [batch, meta["num_classes"]])], self.inits,
            value_info=[helper.make_tensor_value_info(name, types.FLOAT, shape) for name, shape in (shapes or {}).items()])
        opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(QONNX_DOMAIN, 1)] if qonnx else [])
        proto = helper.make_model(graph, opset_imports=opsets, producer_name="pixelq")
        if not qonnx:  # the checker does not know QONNX's custom ops
            self.onnx.checker.check_model(proto)
            return proto
        proto = self.onnx.shape_inference.infer_shapes(proto)
        annotation = self.onnx.TensorAnnotation(tensor_name="image")
        annotation.quant_parameter_tensor_names.append(self.onnx.StringStringEntryProto(key="finn_datatype",
                                                                                         value="UINT8"))
        proto.graph.quantization_annotation.append(annotation)
        return proto


class OnnxForm:
    """What an op's `onnx` method writes into (`pixelq.integer.ops`): the graph, whether it is QONNX,
    the model's meta, the pooled positions' count (set by sum_pool, read by the last layer), and for
    QONNX the per-image shapes of the graph and the custom ops' output shapes declared so far."""

    QONNX_DOMAIN = QONNX_DOMAIN

    def __init__(self, graph: OnnxGraph, model: IntegerModel, qonnx: bool):
        self.graph, self.qonnx, self.meta = graph, qonnx, model.meta
        self.FLOAT = graph.onnx.TensorProto.FLOAT
        self.count = None
        self.declared = {}
        image_shape = model.meta.get("image_shape")
        self.shapes = infer_shapes(model.nodes, model.tensors, tuple(image_shape)) if qonnx and image_shape else None

    def weights(self, name: str, node, codes: np.ndarray) -> str:
        """The weight codes as a constant, or in QONNX as a (Bipolar)Quant node's output."""
        const, op = self.graph.const, self.graph.op
        w = const(f"{name}/weight_codes" if self.qonnx else f"{name}/weight", codes.astype(np.float32))
        if not self.qonnx:
            return w
        one = const(f"{name}/weight_scale", np.float32(1.0))
        self.declared[f"{name}/weight"] = list(codes.shape)
        if (node.weight_bits, node.weight_lowest, node.weight_stride) == (1, -1, 2):
            return op("BipolarQuant", [w, one], f"{name}/weight", domain=QONNX_DOMAIN)
        lo, hi = int(codes.min(initial=0)), int(codes.max(initial=0))
        return op("Quant", [w, one, const(f"{name}/weight_zero", np.float32(0.0)),
                            const(f"{name}/weight_bits", np.float32(_signed_bits(lo, hi)))], f"{name}/weight",
                  domain=QONNX_DOMAIN, signed=1, narrow=0, rounding_mode="ROUND")

    def declare(self, name: str) -> None:
        """QONNX: a custom op's output shape, NCHW, from the graph's per-image shapes."""
        if self.shapes is not None:
            shape = self.shapes[name]
            self.declared[name] = [1, shape[2], shape[0], shape[1]] if len(shape) == 3 else [1, *shape]


def to_onnx(model: IntegerModel, qonnx: bool = False):
    """The ONNX (or QONNX) ModelProto of an integer graph, each node written by its op's `onnx`
    method (`pixelq.integer.ops`; needs the `onnx` package: pip install pixelq[bench]; running QONNX
    needs the qonnx package)."""
    form = OnnxForm(OnnxGraph(), model, qonnx)
    out = {"image": "image"}
    for node in model.nodes:
        tensors = {k: model.tensors[node.tensor_name(k)] for k in node.tensors}
        out[node.name] = node.onnx(form, [out[i] for i in node.inputs], tensors)
    return form.graph.model(model.meta, out[model.meta["output"]], "pixelq", qonnx,
                            form.declared if form.shapes is not None else None)


def save_onnx(model: IntegerModel, path: "str | Path", form: str = "onnx-integer") -> None:
    """Write `model` to `path` as ONNX: "onnx" (QDQ, `qdq.to_qdq`: `model` is then the plain graph of
    `lower_plain`), "onnx-integer" (`to_onnx`) or "qonnx" (`to_onnx(model, qonnx=True)`)."""
    from ..files import atomic_write
    from .qdq import to_qdq

    if form not in ("onnx", "onnx-integer", "qonnx"):
        raise ExportError(f"unknown ONNX form {form!r}; pick onnx, onnx-integer or qonnx")
    proto = to_qdq(model) if form == "onnx" else to_onnx(model, qonnx=form == "qonnx")
    data = proto.SerializeToString()
    atomic_write(path, lambda tmp: tmp.write_bytes(data), ExportError, "ONNX model")
