"""The integer ops, one class each: what a node of it carries (attributes, tensors, inputs), the
rules it must keep, the shape of its output, its MACs, its reference computation (numpy, int64:
`reference`, which `pixelq.runtime.reference` runs node by node), its integer ONNX and QONNX form
(`onnx`, which `pixelq.exporting.onnx.to_onnx` calls node by node) and its QDQ form (`qdq`, which
`pixelq.exporting.qdq.to_qdq` calls on the plain graph). `check_graph` applies them to a whole
model, so a model file whose manifest was edited - even with its checksum recomputed - is refused
before anything is allocated or run, and `infer_shapes` gives `pixelq inspect` and `bitops` the
same shapes the checks computed.

Shapes are per image: (H, W, C) for maps, (C,) for pooled sums and logits. Nodes are dicts
(`op`, `name`, `inputs`, `tensors` and the op's attributes); their tensors live in the model's
`tensors` dict as "<node name>.<tensor>".
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ExportError
from .packing import code_bits
from .reference import conv2d_reference, lut_reference, threshold_reference

MAX_SIDE = 1 << 15  # pixels on an image side
MAX_ELEMENTS = 1 << 28  # values of one node's output for one image: far above any CNN here, far below a crash
MAX_BITS = 32


def _fail(node: dict, message: str):
    raise ValueError(f"node {node.get('name')!r} ({node.get('op')}): {message}")


# attribute rules: each a test of the value and the words for what it must be
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


MAX_CODE = 1 << 15  # codes, weight codes and their offsets: far beyond any bit width here
MAX_COUNT = 1 << 16  # channels, kernel sides, strides


def _is_code(v) -> bool:
    return _is_int(v) and -MAX_CODE <= v <= MAX_CODE


RULES = {
    "int": (_is_code, f"an integer in [-{MAX_CODE}, {MAX_CODE}]"),
    "count": (lambda v: _is_int(v) and 1 <= v <= MAX_COUNT, f"an integer in [1, {MAX_COUNT}]"),
    "size": (lambda v: _is_int(v) and 0 <= v <= MAX_SIDE, f"an integer in [0, {MAX_SIDE}]"),
    "bits": (lambda v: _is_int(v) and 1 <= v <= MAX_BITS, f"an integer in [1, {MAX_BITS}]"),
    "positive": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                 "a finite number > 0"),
    "range": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_code, v)) and v[0] <= v[1],
              f"[lowest, highest] integers in [-{MAX_CODE}, {MAX_CODE}]"),
    "name": (lambda v: isinstance(v, str) and 0 < len(v) <= 256, "a non-empty name"),
    "true": (lambda v: v is True, "true (a mark: absent when not)"),
}


class Op:
    """One integer op. Subclasses set the class attributes and `output_shape` (and `macs`)."""

    name = ""
    attrs: dict = {}  # attribute -> rule name (RULES); every one required
    optional: dict = {}  # attribute -> rule name; may be absent
    tensors: tuple = ()  # the tensors a node of this op holds, by short name
    stored: dict = {}  # tensor -> the dtype it is stored in raw (packed codes: see `encoding`)
    inputs = 1
    spatial_input = True  # reads an (H, W, C) map (else a (C,) vector)

    def check_node(self, node: dict) -> None:
        """ValueError unless the node has its attributes, each keeping its rule, and exactly the
        tensors and the count of inputs they call for (`node_tensors`, `node_inputs`)."""
        if not isinstance(node.get("name"), str) or not node["name"] or node["name"] == "image":
            _fail(node, "a node needs a name (other than 'image')")
        missing = sorted(set(self.attrs) - set(node))
        if missing:
            _fail(node, f"missing {', '.join(missing)}")
        for key, rule in {**self.attrs, **{k: r for k, r in self.optional.items() if k in node}}.items():
            test, words = RULES[rule]
            if not test(node[key]):
                _fail(node, f"{key} must be {words}, got {node[key]!r}")
        if "qmin" in node and "qmax" in node and node["qmin"] > node["qmax"]:
            _fail(node, f"qmin {node['qmin']} > qmax {node['qmax']}")
        inputs = self.node_inputs(node)
        if not isinstance(node.get("inputs"), list) or len(node["inputs"]) != inputs \
                or not all(isinstance(i, str) for i in node["inputs"]):
            _fail(node, f"takes {inputs} input name(s), got {node.get('inputs')!r}")
        tensors = self.node_tensors(node)
        if not isinstance(node.get("tensors"), list) or sorted(node["tensors"]) != sorted(tensors):
            _fail(node, f"holds tensors {list(tensors)}, got {node.get('tensors')!r}")

    def node_tensors(self, node: dict) -> tuple:
        """The tensors a node of this op holds (its attributes checked already)."""
        return self.tensors

    def node_inputs(self, node: dict) -> int:
        return self.inputs

    def check_sources(self, node: dict, sources: list) -> None:
        """ValueError unless the nodes it reads (None: the image) give it what it takes."""

    def output_shape(self, node: dict, shapes: list, tensors: dict) -> tuple:
        """The output's per-image shape from the inputs' shapes and the node's tensors' shapes;
        ValueError where they disagree."""
        raise NotImplementedError

    def macs(self, node: dict, in_shape: tuple, out_shape: tuple, tensors: dict) -> int:
        return 0

    def reference(self, node: dict, inputs: list, tensors: dict, values: dict):
        """The op's output for its `inputs` (arrays, batch first), the node's `tensors` by short name;
        `values` holds every output so far (a node may leave a note there for a later one)."""
        raise NotImplementedError(self.name)

    def onnx(self, form, node: dict, inputs: list, tensors: dict) -> str:
        """Write the node into `form` (`pixelq.exporting.onnx.OnnxForm`: its graph, QONNX or not),
        reading the ONNX tensors named `inputs`; the name of the tensor that holds its output."""
        raise ExportError(f"{node['name']}: op {self.name!r} has no ONNX form")

    def qdq(self, form, node: dict, tensors: dict) -> None:
        """Write the node of a plain graph into `form` (`pixelq.exporting.qdq.QdqForm`), recording its
        output in form.codes."""
        raise ExportError(f"{node['name']}: op {self.name!r} has no QDQ form")

    def encoding(self, node: dict, key: str) -> dict:
        """How the model file stores tensor `key` of `node`: integer codes packed at their bit width
        (code = lowest + stride * u, u in `bits` bits), or raw in a dtype."""
        return {"packed": False, "dtype": self.stored[key]}


def _packed_weight(node: dict) -> dict:
    return {"packed": True, "lowest": node["weight_lowest"], "stride": node["weight_stride"], "bits": node["weight_bits"]}


OPS: dict = {}


def register(cls):
    """Class decorator: one instance of each op, by its name."""
    if cls.name in OPS:
        raise ValueError(f"op {cls.name!r} is registered twice")
    OPS[cls.name] = cls()
    return cls


def _shape_of(node: dict, tensors: dict, key: str) -> tuple:
    return tuple(np.shape(tensors[f"{node['name']}.{key}"]))


def _expect(node: dict, what: str, got: tuple, want: tuple) -> None:
    if tuple(got) != tuple(want):
        _fail(node, f"{what} has shape {tuple(got)}, the graph needs {tuple(want)}")


def _on_grid(node: dict, tensors: dict) -> None:
    """ValueError unless every weight code is weight_lowest + weight_stride * u, 0 <= u < 2^weight_bits:
    the grid the kernels lay the weights out by (codes off it would run as other weights)."""
    u = np.asarray(tensors[f"{node['name']}.weight"], np.int64) - node["weight_lowest"]
    if u.size and ((u % node["weight_stride"]).any() or u.min() < 0
                   or u.max() // node["weight_stride"] >= 1 << node["weight_bits"]):
        _fail(node, "weight codes lie off its grid weight_lowest + weight_stride * u, 0 <= u < 2^weight_bits")


@register
class Lookup(Op):
    """uint8 image -> codes: each pixel value of channel t indexes table t (or the one shared table)."""

    name = "lut"
    attrs = {"d": "count", "in_channels": "count", "qmin": "int", "qmax": "int", "step": "positive"}
    tensors = ("lut",)

    def encoding(self, node, key):
        return {"packed": True, "lowest": node["qmin"], "stride": 1, "bits": code_bits(node["qmin"], node["qmax"])}

    def output_shape(self, node, shapes, tensors):
        h, w, c = shapes[0]
        if c != node["in_channels"]:
            _fail(node, f"looks up {node['in_channels']} channels, got {c}")
        tables = _shape_of(node, tensors, "lut")
        if len(tables) != 3 or tables[0] not in (1, c) or tables[1:] != (256, node["d"]):
            _fail(node, f"lut has shape {tables}, the graph needs (1 or {c}, 256, {node['d']})")
        return h, w, c * node["d"]

    def check_sources(self, node, sources):
        source = sources[0]  # the image's bytes, or codes of a byte (a plan's requantizing lookup)
        if source is not None and not (0 <= source.get("qmin", -1) <= source.get("qmax", 256) <= 255):
            _fail(node, f"looks up byte values; its input {source['name']!r} gives codes outside 0..255")

    def reference(self, node, inputs, tensors, values):
        return lut_reference(inputs[0], tensors["lut"])

    def onnx(self, form, node, inputs, tensors):
        return form.graph.lookup(node["name"], np.asarray(tensors["lut"], np.float32), node["in_channels"])

    def qdq(self, form, node, tensors):
        """Gather of the code table as uint8 (signed codes shifted by their zero point), NHWC -> NCHW."""
        zero = form.zero_point(node["name"], node["qmin"], node["qmax"])
        table = (np.asarray(tensors["lut"], np.int64) + zero).astype(np.uint8)  # (T, 256, d)
        form.codes[node["name"]] = (form.graph.lookup(node["name"], table, node["in_channels"]), node["step"], zero)


def _window(node: dict, side: "int | None", kernel: int, stride: int, padding: int = 0) -> "int | None":
    """Output length of a window sliding over `side` (None: not known here)."""
    if side is None:
        return None
    if side + 2 * padding < kernel:
        _fail(node, f"a {kernel}-wide window does not fit {side} pixels (padding {padding})")
    return (side + 2 * padding - kernel) // stride + 1


@register
class Conv(Op):
    """codes -> int accumulators: a k x k integer conv, zero padding, optional groups."""

    name = "conv"
    attrs = {"in_channels": "count", "out_channels": "count", "input_range": "range", "kernel": "count",
             "stride": "count", "padding": "size", "weight_bits": "bits", "weight_lowest": "int",
             "weight_stride": "count"}
    optional = {"groups": "count"}
    tensors = ("weight",)

    def encoding(self, node, key):
        return _packed_weight(node)

    def output_shape(self, node, shapes, tensors):
        h, w, c = shapes[0]
        k, g = node["kernel"], node.get("groups", 1)
        if c != node["in_channels"] or c % g or node["out_channels"] % g:
            _fail(node, f"reads {node['in_channels']} channels in {g} group(s), got {c}")
        if node["padding"] >= k:
            _fail(node, f"padding {node['padding']} must be smaller than the kernel ({k})")
        _expect(node, "weight", _shape_of(node, tensors, "weight"), (node["out_channels"], k, k, c // g))
        _on_grid(node, tensors)
        return (_window(node, h, k, node["stride"], node["padding"]), _window(node, w, k, node["stride"], node["padding"]),
                node["out_channels"])

    def macs(self, node, in_shape, out_shape, tensors):
        h, w, c = out_shape
        return h * w * c * node["in_channels"] * node["kernel"] ** 2 // node.get("groups", 1)

    def reference(self, node, inputs, tensors, values):
        return conv2d_reference(inputs[0], tensors["weight"], node["stride"], node["padding"], node.get("groups", 1))

    def onnx(self, form, node, inputs, tensors):
        weight = np.ascontiguousarray(np.asarray(tensors["weight"]).transpose(0, 3, 1, 2))
        k, s, p = node["kernel"], node["stride"], node["padding"]
        return form.graph.op("Conv", [inputs[0], form.weights(node["name"], node, weight)], node["name"],
                             kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], group=node.get("groups", 1))

    def qdq(self, form, node, tensors):
        """Nothing: a conv is written with the affine that reads it (Affine.qdq)."""


@register
class FusedConv(Conv):
    """A conv and what the runtime's plan fused into it (`pixelq.runtime.fusion`; the reference runs
    it step by step, `FusedConv.reference`): the lookup of the image before it (`lut`, codes in
    `lut_range`), its thresholds (`direction`, `thresholds`; qmin, qmax, step), a residual add of
    input 1 after them (residual_stride, residual_qmax, residual_shift), input codes shifted by
    `input_shift` with the shift's share `offset` taken off accumulators it writes. `conv_name`
    names the conv it was. `table_sums` marks a first conv over a lookup that runs as sums of
    per-(tap, colour, pixel value) tables (the plan decides: `fusion.mark_table_sums`): one with
    thresholds, at most 16 channels, no residual add or shifted input."""

    name = "fused_conv"
    attrs = {**Conv.attrs, "conv_name": "name"}
    optional = {"groups": "count", "lut_range": "range", "qmin": "int", "qmax": "int", "step": "positive",
                "residual_stride": "count", "residual_qmax": "int", "residual_shift": "int", "input_shift": "int",
                "table_sums": "true"}
    tensors = ("weight", "lut", "direction", "thresholds", "offset")  # those a node may hold: node_tensors
    stored = {"direction": "int8", "thresholds": "int32", "offset": "int32"}
    THRESHOLDS = ("qmin", "qmax", "step")
    RESIDUAL = ("residual_stride", "residual_qmax")

    def node_tensors(self, node):
        parts = {k for k in self.THRESHOLDS if k in node}
        if parts and parts != set(self.THRESHOLDS):
            _fail(node, "qmin, qmax and step come together (its thresholds)")
        if any(k in node for k in self.RESIDUAL) and not (parts and all(k in node for k in self.RESIDUAL)):
            _fail(node, "a residual add needs residual_stride, residual_qmax and thresholds")
        if "offset" in node.get("tensors", ()) and (parts or not node.get("input_shift")):
            _fail(node, "an offset belongs to the accumulators of a shifted input (no thresholds)")
        if "table_sums" in node and not ("lut_range" in node and parts and "residual_stride" not in node
                                         and not node.get("input_shift") and node.get("out_channels", 17) <= 16):
            _fail(node, "table sums need a lookup, thresholds, at most 16 output channels and no residual add or "
                        "shifted input")
        return ("weight", *(("lut",) if "lut_range" in node else ()), *(("direction", "thresholds") if parts else ()),
                *(("offset",) if "offset" in node.get("tensors", ()) else ()))

    def node_inputs(self, node):
        return 2 if "residual_stride" in node else 1

    def encoding(self, node, key):
        if key == "weight":
            return _packed_weight(node)
        if key == "lut":
            lo, hi = node["lut_range"]
            return {"packed": True, "lowest": lo, "stride": 1, "bits": code_bits(lo, hi)}
        return Op.encoding(self, node, key)  # the rest raw, as `stored` says

    def output_shape(self, node, shapes, tensors):
        h, w, c = shapes[0]
        if "lut_range" in node:
            tables = _shape_of(node, tensors, "lut")
            if node["inputs"][0] != "image" or len(tables) != 3 or tables[0] not in (1, c) or tables[1] != 256 \
                    or c * tables[2] != node["in_channels"]:
                _fail(node, f"looks up the image's {c} channels into {node['in_channels']} codes, got input "
                            f"{node['inputs'][0]!r} and lut of shape {tables}")
            c = node["in_channels"]
        out = super().output_shape(node, [(h, w, c)], tensors)
        o = node["out_channels"]
        if "thresholds" in node["tensors"]:
            _expect(node, "direction", _shape_of(node, tensors, "direction"), (o,))
            _expect(node, "thresholds", _shape_of(node, tensors, "thresholds"), (o, node["qmax"] - node["qmin"]))
        if "offset" in node["tensors"]:
            _expect(node, "offset", _shape_of(node, tensors, "offset"), (o,))
        if "residual_stride" in node:
            if not 0 <= node["residual_qmax"] or not 0 <= node.get("residual_shift", 0):
                _fail(node, "a residual add clips to [0, residual_qmax] after taking residual_shift >= 0 off")
            rh, rw, rc = shapes[1]
            s = node["residual_stride"]
            if rc > o or any(n is not None and r is not None and (n - 1) * s >= r for n, r in zip(out[:2], (rh, rw))):
                _fail(node, f"its shortcut {shapes[1]} read at stride {s} does not fit its output {out}")
        return out

    def reference(self, node, inputs, tensors, values):
        """The conv and what was fused into it, one step after the other: the lookup of the pixels, the
        conv over codes shifted by `input_shift` (padded with the shift, then `offset` taken off), the
        thresholds, the residual add of input 1 (subsampled by `residual_stride`, zero channels
        appended, `residual_shift` taken off, clipped to [0, residual_qmax])."""
        codes = lut_reference(inputs[0], tensors["lut"]) if "lut" in tensors else inputs[0]
        shift, p = node.get("input_shift", 0), node["padding"]
        if shift:
            codes = np.pad(np.asarray(codes, np.int64) + shift, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=shift)
            p = 0
        out = conv2d_reference(codes, tensors["weight"], node["stride"], p, node.get("groups", 1))
        if "offset" in tensors:
            out = out - tensors["offset"]
        if "thresholds" in tensors:
            out = threshold_reference(out, tensors["direction"], tensors["thresholds"], node["qmin"])
        if node.get("residual_stride"):
            s = node["residual_stride"]
            shortcut = inputs[1][:, ::s, ::s]
            shortcut = np.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, out.shape[-1] - shortcut.shape[-1])))
            out = np.clip(out + shortcut - node.get("residual_shift", 0), 0, node["residual_qmax"])
        return out

    onnx = Op.onnx  # the runtime's plan only; files export their graph

    qdq = Op.qdq  # the runtime's plan only


@register
class Threshold(Op):
    """accumulators -> codes: qmin + the number of thresholds a channel's value reaches."""

    name = "threshold"
    attrs = {"qmin": "int", "qmax": "int", "step": "positive"}
    tensors = ("direction", "thresholds")
    stored = {"direction": "int8", "thresholds": "int32"}
    spatial_input = None  # maps and vectors alike

    def output_shape(self, node, shapes, tensors):
        c = shapes[0][-1]
        _expect(node, "direction", _shape_of(node, tensors, "direction"), (c,))
        _expect(node, "thresholds", _shape_of(node, tensors, "thresholds"), (c, node["qmax"] - node["qmin"]))
        return shapes[0]

    def reference(self, node, inputs, tensors, values):
        return threshold_reference(inputs[0], tensors["direction"], tensors["thresholds"], node["qmin"])

    def onnx(self, form, node, inputs, tensors):
        """qmin + ReduceSum(direction * acc >= thresholds) over the levels; QONNX: a MultiThreshold."""
        g, name = form.graph, node["name"]
        channels, levels = tensors["thresholds"].shape
        direction = g.const(f"{name}/direction", np.asarray(tensors["direction"], np.float32).reshape(1, -1, 1, 1))
        signed = g.op("Mul", [inputs[0], direction], f"{name}/signed")
        if form.qonnx:  # codes = qmin + #{l: signed >= thresholds[:, l]}
            form.declare(name)
            bits = max(int(node["qmax"] - min(node["qmin"], 0)).bit_length(), 1)
            thresholds = g.const(f"{name}/thresholds", np.asarray(tensors["thresholds"], np.float32))
            return g.op("MultiThreshold", [signed, thresholds], name, domain=form.QONNX_DOMAIN,
                        out_dtype=f"{'INT' if node['qmin'] < 0 else 'UINT'}{bits}", out_scale=1.0,
                        out_bias=float(node["qmin"]), data_layout="NCHW")
        signed = g.op("Unsqueeze", [signed, g.const(f"{name}/axis", np.array([4], np.int64))], f"{name}/levels_axis")
        thresholds = g.const(f"{name}/thresholds", np.asarray(tensors["thresholds"], np.float32)
                             .reshape(1, channels, 1, 1, levels))
        passed = g.op("Cast", [g.op("GreaterOrEqual", [signed, thresholds], f"{name}/passed")], f"{name}/passed_f",
                      to=form.FLOAT)
        summed = g.op("ReduceSum", [passed, g.const(f"{name}/sum_axis", np.array([4], np.int64))], f"{name}/count",
                      keepdims=0)
        return g.op("Add", [summed, g.const(f"{name}/qmin", np.float32(node["qmin"]))], name)


@register
class AddClip(Op):
    """codes + codes (less an optional shift), clipped to [qmin, qmax]: a residual add."""

    name = "add_clip"
    attrs = {"qmin": "int", "qmax": "int", "step": "positive"}
    optional = {"shift": "int"}
    inputs = 2
    spatial_input = None

    def output_shape(self, node, shapes, tensors):
        if shapes[0] != shapes[1]:
            _fail(node, f"adds maps of different shapes {shapes[0]} and {shapes[1]}")
        return shapes[0]

    def reference(self, node, inputs, tensors, values):
        return np.clip(inputs[0].astype(np.int64) + inputs[1] - node.get("shift", 0), node["qmin"], node["qmax"])

    def onnx(self, form, node, inputs, tensors):
        g, name = form.graph, node["name"]
        added = g.op("Add", inputs, f"{name}/sum")
        if node.get("shift", 0):
            added = g.op("Sub", [added, g.const(f"{name}/shift", np.float32(node["shift"]))], f"{name}/shifted")
        return g.op("Clip", [added, g.const(f"{name}/min", np.float32(node["qmin"])),
                             g.const(f"{name}/max", np.float32(node["qmax"]))], name)

    def qdq(self, form, node, tensors):
        """DequantizeLinear x 2, Add, QuantizeLinear, Clip."""
        if node.get("shift", 0):
            raise ExportError(f"{node['name']}: a shifted add (the runtime's plan) has no QDQ form")
        added = form.graph.op("Add", [form.dequantize(i) for i in node["inputs"]], f"{node['name']}/sum")
        form.quantize(node["name"], added, node["step"], node["qmin"], node["qmax"])


@register
class SubsamplePad(Op):
    """A ResNet's option-A shortcut: every stride-th pixel, zero channels appended."""

    name = "subsample_pad"
    attrs = {"stride": "count", "extra_channels": "size"}

    def output_shape(self, node, shapes, tensors):
        h, w, c = shapes[0]
        s = node["stride"]
        return (None if h is None else -(-h // s)), (None if w is None else -(-w // s)), c + node["extra_channels"]

    def reference(self, node, inputs, tensors, values):
        s = node["stride"]
        return np.pad(inputs[0][:, ::s, ::s, :], ((0, 0), (0, 0), (0, 0), (0, node["extra_channels"])))

    def onnx(self, form, node, inputs, tensors):
        return form.graph.subsample_pad(node["name"], inputs[0], node["stride"], node["extra_channels"])

    def qdq(self, form, node, tensors):
        """Slice with steps and Pad of channels, on the codes (the appended channels hold code 0)."""
        tensor, step, zero = form.codes[node["inputs"][0]]
        fill = form.graph.const(f"{node['name']}/code_zero", np.array(zero, np.uint8))
        form.codes[node["name"]] = (form.graph.subsample_pad(node["name"], tensor, node["stride"], node["extra_channels"],
                                                             fill), step, zero)


@register
class MaxPool(Op):
    """codes -> the largest code of each k x k window, stride s."""

    name = "max_pool"
    attrs = {"kernel": "count", "stride": "count"}

    def output_shape(self, node, shapes, tensors):
        h, w, c = shapes[0]
        return _window(node, h, node["kernel"], node["stride"]), _window(node, w, node["kernel"], node["stride"]), c

    def reference(self, node, inputs, tensors, values):
        k, s = node["kernel"], node["stride"]
        return np.lib.stride_tricks.sliding_window_view(inputs[0], (k, k), axis=(1, 2))[:, ::s, ::s].max((-2, -1))

    def onnx(self, form, node, inputs, tensors):
        k, s = node["kernel"], node["stride"]
        return form.graph.op("MaxPool", inputs, node["name"], kernel_shape=[k, k], strides=[s, s])

    def qdq(self, form, node, tensors):
        tensor, step, zero = form.codes[node["inputs"][0]]
        k, s = node["kernel"], node["stride"]
        form.codes[node["name"]] = (form.graph.op("MaxPool", [tensor], node["name"], kernel_shape=[k, k], strides=[s, s]),
                                    step, zero)


@register
class SumPool(Op):
    """codes -> per-channel sums over the map (the global average pool, its count applied later)."""

    name = "sum_pool"
    attrs = {"step": "positive"}

    def output_shape(self, node, shapes, tensors):
        return (shapes[0][2],)

    def reference(self, node, inputs, tensors, values):
        values["pool.count"] = inputs[0].shape[1] * inputs[0].shape[2]  # for a float last layer's scale
        return inputs[0].sum((1, 2), dtype=np.int64)

    def onnx(self, form, node, inputs, tensors):
        """ReduceSum over the map; the count of positions kept in `form` for the logits' scale."""
        g, name = form.graph, node["name"]
        shape = g.op("Shape", [inputs[0]], f"{name}/shape")
        hw = g.op("Slice", [shape, g.const(f"{name}/hw0", np.array([2], np.int64)),
                            g.const(f"{name}/hw1", np.array([4], np.int64))], f"{name}/hw")
        form.count = g.op("Cast", [g.op("ReduceProd", [hw], f"{name}/area", keepdims=0)], f"{name}/count",
                          to=form.FLOAT)
        return g.op("ReduceSum", [inputs[0], g.const(f"{name}/axes", np.array([2, 3], np.int64))], name, keepdims=0)

    def qdq(self, form, node, tensors):
        """The mean of the real codes (sums x step / count), for the last layer; axes an attribute until
        opset 18."""
        form.mean = form.graph.op("ReduceMean", [form.dequantize(node["inputs"][0])], node["name"], axes=[2, 3],
                                  keepdims=0)


@register
class Linear(Op):
    """pooled sums -> int32 logits: a quantized last layer."""

    name = "linear"
    attrs = {"in_channels": "count", "out_channels": "count", "weight_bits": "bits", "weight_lowest": "int",
             "weight_stride": "count"}
    tensors = ("weight",)
    spatial_input = False

    def encoding(self, node, key):
        return _packed_weight(node)

    def output_shape(self, node, shapes, tensors):
        if shapes[0] != (node["in_channels"],):
            _fail(node, f"reads {node['in_channels']} sums, got shape {shapes[0]}")
        _expect(node, "weight", _shape_of(node, tensors, "weight"), (node["out_channels"], node["in_channels"]))
        _on_grid(node, tensors)
        return (node["out_channels"],)

    def macs(self, node, in_shape, out_shape, tensors):
        return node["in_channels"] * node["out_channels"]

    def reference(self, node, inputs, tensors, values):
        return inputs[0] @ np.asarray(tensors["weight"], np.int64).T

    def onnx(self, form, node, inputs, tensors):
        """MatMul, times the per-class scale / count: float logits."""
        g, name = form.graph, node["name"]
        weight = g.op("Transpose", [form.weights(name, node, np.asarray(tensors["weight"]))], f"{name}/weight_t",
                      perm=[1, 0])
        integer = g.op("MatMul", [inputs[0], weight], f"{name}/integer")
        scale = g.const(f"{name}/scale", np.asarray(form.meta["logit_scale"], np.float32))
        return g.op("Div", [g.op("Mul", [integer, scale], f"{name}/scaled"), form.count], name)

    def qdq(self, form, node, tensors):
        """logits = mean x weight codes x per-class scale / step (the weights dequantized per class)."""
        g, name = form.graph, node["name"]
        scale = np.asarray(form.meta["logit_scale"], np.float64) / form.by_name[node["inputs"][0]]["step"]
        w = g.op("DequantizeLinear", [g.const(f"{name}/w_codes", np.asarray(tensors["weight"]).T.astype(np.int8)),
                                      g.const(f"{name}/w_scale", scale.astype(np.float32)),
                                      g.const(f"{name}/w_zero", np.zeros(len(scale), np.int8))], f"{name}/w", axis=1)
        form.codes[name] = (g.op("MatMul", [form.mean, w], name), None, None)


@register
class LinearFloat(Op):
    """pooled sums * step / count -> float logits: a float last layer."""

    name = "linear_float"
    attrs = {"step": "positive"}
    tensors = ("weight", "bias")
    stored = {"weight": "float32", "bias": "float32"}
    spatial_input = False

    def output_shape(self, node, shapes, tensors):
        weight = _shape_of(node, tensors, "weight")
        if len(weight) != 2 or weight[1] != shapes[0][0]:
            _fail(node, f"weight has shape {weight}, the graph needs (classes, {shapes[0][0]})")
        _expect(node, "bias", _shape_of(node, tensors, "bias"), weight[:1])
        return weight[:1]

    def macs(self, node, in_shape, out_shape, tensors):
        return in_shape[0] * out_shape[0]

    def reference(self, node, inputs, tensors, values):
        scale = np.float32(node["step"] / values["pool.count"])
        return (inputs[0].astype(np.float32) * scale) @ tensors["weight"].T + tensors["bias"]

    def onnx(self, form, node, inputs, tensors):
        """The pooled mean (sums * step / count) times the weights, plus the bias."""
        g, name = form.graph, node["name"]
        steps = g.op("Mul", [inputs[0], g.const(f"{name}/step", np.float32(node["step"]))], f"{name}/steps")
        mean = g.op("Div", [steps, form.count], f"{name}/mean")
        product = g.op("MatMul", [mean, g.const(f"{name}/weight", np.asarray(tensors["weight"], np.float32).T)],
                       f"{name}/product")
        return g.op("Add", [product, g.const(f"{name}/bias", np.asarray(tensors["bias"], np.float32))], name)

    def qdq(self, form, node, tensors):
        g, name = form.graph, node["name"]
        product = g.op("MatMul", [form.mean, g.const(f"{name}/weight", np.asarray(tensors["weight"], np.float32).T)],
                       f"{name}/product")
        form.codes[name] = (g.op("Add", [product, g.const(f"{name}/bias", np.asarray(tensors["bias"], np.float32))], name),
                            None, None)


@register
class Affine(Op):
    """accumulators -> real values scale * A + bias per channel (export's plain graph only)."""

    name = "affine"
    tensors = ("scale", "bias")
    stored = {"scale": "float64", "bias": "float64"}
    spatial_input = None

    def output_shape(self, node, shapes, tensors):
        c = shapes[0][-1]
        _expect(node, "scale", _shape_of(node, tensors, "scale"), (c,))
        _expect(node, "bias", _shape_of(node, tensors, "bias"), (c,))
        return shapes[0]

    def reference(self, node, inputs, tensors, values):
        return inputs[0] * tensors["scale"] + tensors["bias"]

    def qdq(self, form, node, tensors):
        """Of codes: their DequantizeLinear (the quantize reading it requantizes them). Of a conv: the
        Conv of the dequantized codes and weights, its batch norm folded in: the weight codes times the
        largest spread int8 holds (127 for binary), signs flipped where the scale a is negative, scale
        |a| / spread per channel, the bias int32 on that grid, placed where every integer accumulator
        gets the code the thresholds give it (QdqForm.bias_codes; where no grid point does, rounded)."""
        g, name, source = form.graph, node["name"], node["inputs"][0]
        if source in form.codes and form.codes[source][1] is not None:  # codes requantized
            if not (np.allclose(tensors["scale"], form.codes[source][1], rtol=1e-6, atol=0) and not np.any(tensors["bias"])):
                raise ExportError(f"{name}: an affine of codes must be their real values (scale = step, no bias)")
            form.codes[name] = (form.dequantize(source), None, None)
            return
        conv = form.by_name.get(source)
        if conv is None or conv["op"] != "conv":
            raise ExportError(f"{name}: an affine node must read a conv or codes in the QDQ form")
        weight = np.asarray(form.model.tensors[f"{conv['name']}.weight"], np.int64).transpose(0, 3, 1, 2)  # OIHW
        if weight.min(initial=0) < -127 or weight.max(initial=0) > 127:
            raise ExportError(f"{conv['name']}: weight codes beyond int8 have no QDQ form")
        step_in = form.codes[conv["inputs"][0]][1]
        a, b = np.asarray(tensors["scale"], np.float64), np.asarray(tensors["bias"], np.float64)
        # int8 weights: the codes times `spread`, sign-flipped where a < 0, each channel's scale |a| / spread
        # (so dequantized weight x step_in = a x codes): the int32 bias then has a grid 1 / spread of an
        # accumulator unit, as fine as int8 allows
        spread = 127 // max(int(np.abs(weight).max(initial=0)), 1)
        sign = np.where(a < 0, -1, 1)
        w_scale = np.where(a == 0, 1.0, np.abs(a)) / (step_in * spread)
        w_codes = np.where((a == 0)[:, None, None, None], 0, weight * (sign * spread)[:, None, None, None])
        bias_scale = w_scale * step_in
        q = form.readers[name]
        bias = form.bias_codes(np.abs(a), b, bias_scale, q["step"], q["qmin"], q["qmax"])
        w = g.op("DequantizeLinear", [g.const(f"{name}/w_codes", w_codes.astype(np.int8)),
                                      g.const(f"{name}/w_scale", w_scale.astype(np.float32)),
                                      g.const(f"{name}/w_zero", np.zeros(len(a), np.int8))], f"{name}/w", axis=0)
        bias = g.op("DequantizeLinear", [g.const(f"{name}/b_int", bias),
                                         g.const(f"{name}/b_scale", bias_scale.astype(np.float32)),
                                         g.const(f"{name}/b_zero", np.zeros(len(a), np.int32))], f"{name}/b", axis=0)
        k, s, p = conv["kernel"], conv["stride"], conv["padding"]
        real = g.op("Conv", [form.dequantize(conv["inputs"][0]), w, bias], f"{name}/conv", kernel_shape=[k, k],
                    strides=[s, s], pads=[p, p, p, p], group=conv.get("groups", 1))
        form.codes[name] = (real, None, None)  # a real value, for the quantize that reads it


@register
class Quantize(Op):
    """real values -> codes clip(round(x / step), qmin, qmax) (export's plain graph only)."""

    name = "quantize"
    attrs = {"qmin": "int", "qmax": "int", "step": "positive"}
    spatial_input = None

    def output_shape(self, node, shapes, tensors):
        return shapes[0]

    def reference(self, node, inputs, tensors, values):
        """Round half up, as the thresholds (transforms.fold_batchnorm_into_thresholds) count."""
        return np.clip(np.floor(inputs[0] / node["step"] + 0.5), node["qmin"], node["qmax"]).astype(np.int64)

    def qdq(self, form, node, tensors):
        """QuantizeLinear (step), then Clip to [qmin, qmax] on the integers."""
        form.quantize(node["name"], form.codes[node["inputs"][0]][0], node["step"], node["qmin"], node["qmax"])


def op_of(node: dict) -> Op:
    """The op class instance of `node`; ValueError for an op this pixelq does not know."""
    op = OPS.get(node.get("op")) if isinstance(node, dict) else None
    if op is None:
        raise ValueError(f"node {node.get('name') if isinstance(node, dict) else node!r}: unknown op "
                         f"{node.get('op') if isinstance(node, dict) else None!r}; known: {', '.join(OPS)}")
    return op


def infer_shapes(nodes: list, tensors: dict, image_shape: tuple) -> dict:
    """{"image": image_shape, node name: its output's per-image shape} in node order, every node
    checked (`Op.check_node`, inputs defined before use, shapes consistent along the graph, sizes
    bounded); ValueError naming the first node that breaks a rule. H and W may be None (unknown)."""
    shapes, by_name = {"image": tuple(image_shape)}, {}
    for node in nodes:
        op = op_of(node)
        op.check_node(node)
        if node["name"] in shapes:
            raise ValueError(f"node {node['name']!r} ({node['op']}): a second node of that name")
        missing = [f"{node['name']}.{k}" for k in node["tensors"] if f"{node['name']}.{k}" not in tensors]
        if missing:
            raise ValueError(f"node {node['name']!r} ({node['op']}): its tensors {missing} are not in the model")
        inputs = []
        for name in node["inputs"]:
            if name not in shapes:
                raise ValueError(f"node {node['name']!r} ({node['op']}): input {name!r} is no earlier node")
            inputs.append(shapes[name])
        op.check_sources(node, [by_name.get(name) for name in node["inputs"]])
        if op.spatial_input is not None and any((len(s) == 3) != op.spatial_input for s in inputs):
            _fail(node, f"reads {'an (H, W, C) map' if op.spatial_input else 'a (C,) vector'}, got {inputs}")
        out = tuple(op.output_shape(node, inputs, tensors))
        if math.prod(v or 1 for v in out) > MAX_ELEMENTS or any(v is not None and v < 1 for v in out):
            _fail(node, f"output shape {out} is empty or larger than {MAX_ELEMENTS} values per image")
        shapes[node["name"]] = out
        by_name[node["name"]] = node
    return shapes


def check_graph(nodes: list, tensors: dict, meta: dict) -> dict:
    """Every rule of a model file's graph: its metadata, each node by its op (`infer_shapes`, on the
    stored image shape, or on unknown H and W for files that do not record it), and the output
    giving one logit per class. Returns the shapes; ValueError naming the first broken rule."""
    if not isinstance(meta, dict) or not isinstance(nodes, list) or not nodes:
        raise ValueError("the model needs a list of nodes and a metadata object")
    c, classes = meta.get("in_channels"), meta.get("num_classes")
    if not (_is_int(c) and 1 <= c <= 4096 and _is_int(classes) and 1 <= classes <= 1 << 20):
        raise ValueError(f"in_channels and num_classes must be positive integers, got {c!r} and {classes!r}")
    stored = meta.get("image_shape")
    if stored is not None and not (isinstance(stored, list) and len(stored) == 3 and all(map(_is_int, stored))
                                   and 1 <= stored[0] <= MAX_SIDE and 1 <= stored[1] <= MAX_SIDE and stored[2] == c):
        raise ValueError(f"image_shape must be [H, W, {c}] with sides in [1, {MAX_SIDE}], got {stored!r}")
    names = meta.get("classes")
    if names is not None and not (isinstance(names, list) and len(names) == classes
                                  and all(isinstance(n, str) for n in names)):
        raise ValueError(f"classes must be {classes} names, got {names!r}")
    if not isinstance(meta.get("integer_only"), bool):
        raise ValueError(f"integer_only must be true or false, got {meta.get('integer_only')!r}")
    scale = meta.get("logit_scale")
    if meta["integer_only"] and not (isinstance(scale, list) and len(scale) == classes and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scale)):
        raise ValueError(f"an integer model needs one finite logit scale per class, got {scale!r}")
    shapes = infer_shapes(nodes, tensors, tuple(stored) if stored else (None, None, c))
    if meta.get("output") not in shapes or shapes[meta["output"]] != (classes,):
        raise ValueError(f"output {meta.get('output')!r} must name the node of the {classes} logits")
    last = next(n["op"] for n in nodes if n["name"] == meta["output"])
    if meta["integer_only"] != (last == "linear"):
        raise ValueError(f"integer_only is {meta['integer_only']} but the output node is a {last!r}")
    return shapes
