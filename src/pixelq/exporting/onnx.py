"""The integer graph as an ONNX model (`pixelq export --format onnx`), for ONNX Runtime and other tools.

A graph-to-graph transform of `pixelq.integer.IntegerModel`, op for op, in standard ONNX (opset 17):
codes are integers held in float32 tensors (NCHW), exact while accumulators stay below 2^24, so the
model computes what the integer runtime does, labels included:
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
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..integer import IntegerModel

OPSET = 17


def to_onnx(model: IntegerModel):
    """The ONNX ModelProto of an integer graph (needs the `onnx` package: pip install pixelq[bench])."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        raise ExportError("ONNX export needs the onnx package: pip install 'pixelq[bench]'") from e
    nodes, inits = [], []

    def const(name: str, array) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(kind: str, inputs: list, output: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, inputs, [output], **attrs))
        return output

    out = {"image": "image"}
    count = None  # the pooled positions, for the logits' scale
    for node in model.nodes:
        name, kind, src = node["name"], node["op"], [out[i] for i in node["inputs"]]
        t = {k: model.tensors[f"{name}.{k}"] for k in node["tensors"]}
        if kind == "lut":
            lut = np.asarray(t["lut"], np.float32)  # (T, 256, d)
            colours, d = node["in_channels"], lut.shape[2]
            index = op("Cast", [src[0]], f"{name}/index", to=TensorProto.INT64)
            if lut.shape[0] > 1:  # one table per colour: colour c's values index rows 256 c ..
                index = op("Add", [index, const(f"{name}/offsets", 256 * np.arange(colours, dtype=np.int64))],
                           f"{name}/rows")
            codes = op("Gather", [const(f"{name}/table", lut.reshape(-1, d)), index], f"{name}/codes", axis=0)
            nhwc = op("Reshape", [codes, const(f"{name}/shape", np.array([0, 0, 0, -1], np.int64))], f"{name}/nhwc")
            out[name] = op("Transpose", [nhwc], name, perm=[0, 3, 1, 2])
        elif kind == "conv":
            weight = np.ascontiguousarray(np.asarray(t["weight"], np.float32).transpose(0, 3, 1, 2))
            k, s, p = node["kernel"], node["stride"], node["padding"]
            out[name] = op("Conv", [src[0], const(f"{name}/weight", weight)], name, kernel_shape=[k, k],
                           strides=[s, s], pads=[p, p, p, p])
        elif kind == "threshold":
            channels, levels = t["thresholds"].shape
            signed = op("Mul", [src[0], const(f"{name}/direction",
                                               np.asarray(t["direction"], np.float32).reshape(1, -1, 1, 1))],
                        f"{name}/signed")
            signed = op("Unsqueeze", [signed, const(f"{name}/axis", np.array([4], np.int64))], f"{name}/levels_axis")
            passed = op("GreaterOrEqual", [signed, const(f"{name}/thresholds", np.asarray(t["thresholds"], np.float32)
                                                         .reshape(1, channels, 1, 1, levels))], f"{name}/passed")
            passed = op("Cast", [passed], f"{name}/passed_f", to=TensorProto.FLOAT)
            summed = op("ReduceSum", [passed, const(f"{name}/sum_axis", np.array([4], np.int64))], f"{name}/count",
                        keepdims=0)
            out[name] = op("Add", [summed, const(f"{name}/qmin", np.float32(node["qmin"]))], name)
        elif kind == "add_clip":
            added = op("Add", src, f"{name}/sum")
            out[name] = op("Clip", [added, const(f"{name}/min", np.float32(node["qmin"])),
                                    const(f"{name}/max", np.float32(node["qmax"]))], name)
        elif kind == "subsample_pad":
            s, extra = node["stride"], node["extra_channels"]
            big = np.iinfo(np.int64).max
            sub = op("Slice", [src[0], const(f"{name}/starts", np.array([0, 0], np.int64)),
                               const(f"{name}/ends", np.array([big, big], np.int64)),
                               const(f"{name}/axes", np.array([2, 3], np.int64)),
                               const(f"{name}/steps", np.array([s, s], np.int64))], f"{name}/sub")
            out[name] = op("Pad", [sub, const(f"{name}/pads", np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64))], name)
        elif kind == "max_pool":
            k, s = node["kernel"], node["stride"]
            out[name] = op("MaxPool", src, name, kernel_shape=[k, k], strides=[s, s])
        elif kind == "sum_pool":
            out[name] = op("ReduceSum", [src[0], const(f"{name}/axes", np.array([2, 3], np.int64))], name, keepdims=0)
            shape = op("Shape", [src[0]], f"{name}/shape")
            area = op("ReduceProd", [op("Slice", [shape, const(f"{name}/hw0", np.array([2], np.int64)),
                                                  const(f"{name}/hw1", np.array([4], np.int64))], f"{name}/hw")],
                      f"{name}/area", keepdims=0)
            count = op("Cast", [area], f"{name}/count", to=TensorProto.FLOAT)
        elif kind == "linear":
            integer = op("MatMul", [src[0], const(f"{name}/weight", np.asarray(t["weight"], np.float32).T)],
                         f"{name}/integer")
            scaled = op("Mul", [integer, const(f"{name}/scale", np.asarray(model.meta["logit_scale"], np.float32))],
                        f"{name}/scaled")
            out[name] = op("Div", [scaled, count], name)
        elif kind == "linear_float":
            mean = op("Div", [op("Mul", [src[0], const(f"{name}/step", np.float32(node["step"]))], f"{name}/steps"),
                              count], f"{name}/mean")
            out[name] = op("Add", [op("MatMul", [mean, const(f"{name}/weight", np.asarray(t["weight"], np.float32).T)],
                                      f"{name}/product"), const(f"{name}/bias", np.asarray(t["bias"], np.float32))],
                           name)
        else:
            raise ExportError(f"{name}: op {kind!r} has no ONNX form yet")
    nodes.append(helper.make_node("Identity", [out[model.meta["output"]]], ["logits"]))
    graph = helper.make_graph(
        nodes, "pixelq", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", model.meta["in_channels"]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", model.meta["num_classes"]])], inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pixelq")
    onnx.checker.check_model(onnx_model)
    return onnx_model


def save_onnx(model: IntegerModel, path: "str | Path") -> None:
    """Write `to_onnx(model)` to `path`."""
    from ..files import atomic_write

    data = to_onnx(model).SerializeToString()
    atomic_write(path, lambda tmp: tmp.write_bytes(data), ExportError, "ONNX model")
