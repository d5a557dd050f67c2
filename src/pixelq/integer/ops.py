"""The integer ops, one class each: what a node of it carries (attributes, tensors, inputs), the
rules it must keep, the shape of its output, its MACs, its reference computation (numpy, int64:
`reference`, which `pixelq.runtime.reference` runs node by node), its integer ONNX and QONNX form
(`onnx`, which `pixelq.exporting.onnx.to_onnx` calls node by node) and its QDQ form (`qdq`, which
`pixelq.exporting.qdq.to_qdq` calls on the plain graph). `check_graph` applies them to a whole
model, so a model file whose manifest was edited - even with its checksum recomputed - is refused
before anything is allocated or run, and `infer_shapes` gives `pixelq inspect` and `bitops` the
same shapes the checks computed.

Shapes are per image: (H, W, C) for maps, (C,) for pooled sums and logits. A node is an instance
of its op's class, a frozen dataclass: `name`, `inputs` and `tensors` (the short names of those it
holds) and the op's attributes as typed fields, each with the rule a model file's value must keep
(`attr`); transforms make new nodes with `dataclasses.replace` (or `retyped` for another op). The
tensors live in the model's `tensors` dict as "<node name>.<tensor>". A model file stores a node as
`to_dict()` gives it; `node_from_dict` reads it back.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field
from typing import ClassVar

import numpy as np

from ..errors import ExportError
from .packing import code_bits
from .reference import conv2d_reference, lut_reference, threshold_reference

MAX_SIDE = 1 << 15  # pixels on an image side
MAX_ELEMENTS = 1 << 28  # values of one node's output for one image: far above any CNN here, far below a crash
MAX_BITS = 32


def _fail(node, message: str):
    name, op = (node.name, node.op) if isinstance(node, Node) else (node.get("name"), node.get("op"))
    raise ValueError(f"node {name!r} ({op}): {message}")


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
    "range": (lambda v: isinstance(v, tuple) and len(v) == 2 and all(map(_is_code, v)) and v[0] <= v[1],
              f"[lowest, highest] integers in [-{MAX_CODE}, {MAX_CODE}]"),
    "name": (lambda v: isinstance(v, str) and 0 < len(v) <= 256, "a non-empty name"),
    "true": (lambda v: v is True, "true (a mark: absent when not)"),
}


def attr(rule: str, default=MISSING):
    """An attribute of an op's nodes: a dataclass field whose value keeps `rule` (RULES); required
    unless it has a default, which means "absent" (a model file leaves it out)."""
    return field(default=default, metadata={"rule": rule})


def _absent(f: dataclasses.Field, value) -> bool:
    """Whether an attribute holds its default, the value that means "absent" (of the default's type:
    a file's `true` for a count defaulting to 1 is no count)."""
    return f.default is not MISSING and (value is f.default or (type(value) is type(f.default) and value == f.default))


@dataclass(frozen=True, kw_only=True)
class Node:
    """A node of one integer op. Subclasses (one per op, `register`ed) declare the op's name, its
    attributes as fields (`attr`), the tensors its nodes may hold, and `output_shape` (and `macs`)."""

    op: ClassVar[str] = ""
    TENSORS: ClassVar[tuple] = ()  # the tensors a node of this op holds, by short name
    stored: ClassVar[dict] = {}  # tensor -> the dtype it is stored in raw (packed codes: see `encoding`)
    INPUTS: ClassVar[int] = 1
    spatial_input: ClassVar = True  # reads an (H, W, C) map (else a (C,) vector; None: either)

    name: str
    inputs: tuple = ()
    tensors: tuple = ()  # the short names of the tensors it holds

    @classmethod
    def attributes(cls) -> dict:
        """{attribute: its field} (name, inputs and tensors are not attributes)."""
        return {f.name: f for f in dataclasses.fields(cls) if "rule" in f.metadata}

    def check(self) -> None:
        """ValueError unless the node's attributes each keep their rule, and it holds exactly the
        tensors and reads the count of inputs they call for (`node_tensors`, `node_inputs`)."""
        if not isinstance(self.name, str) or not self.name or self.name == "image":
            _fail(self, "a node needs a name (other than 'image')")
        for key, f in self.attributes().items():
            value = getattr(self, key)
            if _absent(f, value):
                continue
            test, words = RULES[f.metadata["rule"]]
            if not test(value):
                _fail(self, f"{key} must be {words}, got {value!r}")
        qmin, qmax = getattr(self, "qmin", None), getattr(self, "qmax", None)
        if qmin is not None and qmax is not None and qmin > qmax:
            _fail(self, f"qmin {qmin} > qmax {qmax}")
        inputs = self.node_inputs()
        if not isinstance(self.inputs, tuple) or len(self.inputs) != inputs or not all(isinstance(i, str) for i in self.inputs):
            _fail(self, f"takes {inputs} input name(s), got {list(self.inputs)!r}")
        tensors = self.node_tensors()
        if not isinstance(self.tensors, tuple) or sorted(self.tensors) != sorted(tensors):
            _fail(self, f"holds tensors {list(tensors)}, got {list(self.tensors)!r}")

    def node_tensors(self) -> tuple:
        """The tensors this node holds (its attributes checked already)."""
        return self.TENSORS

    def node_inputs(self) -> int:
        return self.INPUTS

    def tensor_name(self, key: str) -> str:
        """Its tensor `key`'s name in the model's tensors."""
        return f"{self.name}.{key}"

    def to_dict(self) -> dict:
        """The node as a model file stores it: op, name, inputs, tensors, and each attribute that is
        not absent."""
        out = {"op": self.op, "name": self.name, "inputs": list(self.inputs), "tensors": list(self.tensors)}
        for key, f in self.attributes().items():
            value = getattr(self, key)
            if not _absent(f, value):
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def check_sources(self, sources: list) -> None:
        """ValueError unless the nodes it reads (None: the image) give it what it takes."""

    def output_shape(self, shapes: list, tensors: dict) -> tuple:
        """The output's per-image shape from the inputs' shapes and the node's tensors' shapes;
        ValueError where they disagree."""
        raise NotImplementedError

    def macs(self, in_shape: tuple, out_shape: tuple, tensors: dict) -> int:
        return 0

    def reference(self, inputs: list, tensors: dict, values: dict):
        """The op's output for its `inputs` (arrays, batch first), the node's `tensors` by short name;
        `values` holds every output so far (a node may leave a note there for a later one)."""
        raise NotImplementedError(self.op)

    def onnx(self, form, inputs: list, tensors: dict) -> str:
        """Write the node into `form` (`pixelq.exporting.onnx.OnnxForm`: its graph, QONNX or not),
        reading the ONNX tensors named `inputs`; the name of the tensor that holds its output."""
        raise ExportError(f"{self.name}: op {self.op!r} has no ONNX form")

    def qdq(self, form, tensors: dict) -> None:
        """Write the node of a plain graph into `form` (`pixelq.exporting.qdq.QdqForm`), recording its
        output in form.codes."""
        raise ExportError(f"{self.name}: op {self.op!r} has no QDQ form")

    def encoding(self, key: str) -> dict:
        """How the model file stores tensor `key` of this node: integer codes packed at their bit
        width (code = lowest + stride * u, u in `bits` bits), or raw in a dtype."""
        return {"packed": False, "dtype": self.stored[key]}


OPS: dict = {}


def register(cls):
    """Class decorator: an op's node class, made a frozen dataclass of keyword fields (as `Node`) and
    registered by its op name."""
    if cls.op in OPS:
        raise ValueError(f"op {cls.op!r} is registered twice")
    OPS[cls.op] = dataclass(frozen=True, kw_only=True)(cls)
    return OPS[cls.op]


def node_from_dict(d) -> Node:
    """The node a model file's entry describes; ValueError for an unknown op, attributes the op does
    not have or is missing, or inputs and tensors that are not lists of names (the attributes'
    rules are `Node.check`'s)."""
    if not isinstance(d, dict):
        raise ValueError(f"a node must be an object, got {d!r}")
    cls = OPS.get(d.get("op")) if isinstance(d.get("op"), str) else None
    if cls is None:
        raise ValueError(f"node {d.get('name')!r}: unknown op {d.get('op')!r}; known: {', '.join(OPS)}")
    attributes = cls.attributes()
    extra = sorted(set(d) - set(attributes) - {"op", "name", "inputs", "tensors"})
    if extra:
        _fail(d, f"has no attribute {', '.join(extra)} (its op's: {', '.join(attributes) or 'none'})")
    missing = sorted(k for k, f in attributes.items() if f.default is MISSING and k not in d)
    if missing or "name" not in d:
        _fail(d, f"missing {', '.join(missing or ['name'])}")
    for key in ("inputs", "tensors"):
        if not isinstance(d.get(key), list) or not all(isinstance(v, str) for v in d[key]):
            _fail(d, f"{key} must be a list of names, got {d.get(key)!r}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "op"}
    return cls(**values)


def nodes_from_dicts(entries) -> list:
    """A model file's list of node entries as nodes (`node_from_dict`)."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"the model needs a non-empty list of nodes, got {type(entries).__name__}")
    return [node_from_dict(d) for d in entries]


def retyped(node: Node, cls: type, **changes) -> Node:
    """`node` as a node of op `cls`: the fields both have carried over, `changes` on top."""
    own = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.name in own}, **changes})


def _packed_weight(node) -> dict:
    return {"packed": True, "lowest": node.weight_lowest, "stride": node.weight_stride, "bits": node.weight_bits}


def _shape_of(node: Node, tensors: dict, key: str) -> tuple:
    return tuple(np.shape(tensors[node.tensor_name(key)]))


def _expect(node: Node, what: str, got: tuple, want: tuple) -> None:
    if tuple(got) != tuple(want):
        _fail(node, f"{what} has shape {tuple(got)}, the graph needs {tuple(want)}")


def _on_grid(node: Node, tensors: dict) -> None:
    """ValueError unless every weight code is weight_lowest + weight_stride * u, 0 <= u < 2^weight_bits:
    the grid the kernels lay the weights out by (codes off it would run as other weights)."""
    u = np.asarray(tensors[node.tensor_name("weight")], np.int64) - node.weight_lowest
    if u.size and ((u % node.weight_stride).any() or u.min() < 0
                   or u.max() // node.weight_stride >= 1 << node.weight_bits):
        _fail(node, "weight codes lie off its grid weight_lowest + weight_stride * u, 0 <= u < 2^weight_bits")


@register
class Lookup(Node):
    """uint8 image -> codes: each pixel value of channel t indexes table t (or the one shared table)."""

    op: ClassVar[str] = "lut"
    TENSORS: ClassVar[tuple] = ("lut",)
    d: int = attr("count")
    in_channels: int = attr("count")
    qmin: int = attr("int")
    qmax: int = attr("int")
    step: float = attr("positive")

    def encoding(self, key):
        return {"packed": True, "lowest": self.qmin, "stride": 1, "bits": code_bits(self.qmin, self.qmax)}

    def output_shape(self, shapes, tensors):
        h, w, c = shapes[0]
        if c != self.in_channels:
            _fail(self, f"looks up {self.in_channels} channels, got {c}")
        tables = _shape_of(self, tensors, "lut")
        if len(tables) != 3 or tables[0] not in (1, c) or tables[1:] != (256, self.d):
            _fail(self, f"lut has shape {tables}, the graph needs (1 or {c}, 256, {self.d})")
        return h, w, c * self.d

    def check_sources(self, sources):
        source = sources[0]  # the image's bytes, or codes of a byte (a plan's requantizing lookup)
        lo, hi = getattr(source, "qmin", None), getattr(source, "qmax", None)
        if source is not None and not (lo is not None and hi is not None and 0 <= lo <= hi <= 255):
            _fail(self, f"looks up byte values; its input {source.name!r} gives codes outside 0..255")

    def reference(self, inputs, tensors, values):
        return lut_reference(inputs[0], tensors["lut"])

    def onnx(self, form, inputs, tensors):
        return form.graph.lookup(self.name, np.asarray(tensors["lut"], np.float32), self.in_channels)

    def qdq(self, form, tensors):
        """Gather of the code table as uint8 (signed codes shifted by their zero point), NHWC -> NCHW."""
        zero = form.zero_point(self.name, self.qmin, self.qmax)
        table = (np.asarray(tensors["lut"], np.int64) + zero).astype(np.uint8)  # (T, 256, d)
        form.codes[self.name] = (form.graph.lookup(self.name, table, self.in_channels), self.step, zero)


def _window(node: Node, side: "int | None", kernel: int, stride: int, padding: int = 0) -> "int | None":
    """Output length of a window sliding over `side` (None: not known here)."""
    if side is None:
        return None
    if side + 2 * padding < kernel:
        _fail(node, f"a {kernel}-wide window does not fit {side} pixels (padding {padding})")
    return (side + 2 * padding - kernel) // stride + 1


@register
class Conv(Node):
    """codes -> int accumulators: a k x k integer conv, zero padding, optional groups."""

    op: ClassVar[str] = "conv"
    TENSORS: ClassVar[tuple] = ("weight",)
    in_channels: int = attr("count")
    out_channels: int = attr("count")
    input_range: tuple = attr("range")  # (lowest, highest) input code
    kernel: int = attr("count")
    stride: int = attr("count")
    padding: int = attr("size")
    weight_bits: int = attr("bits")
    weight_lowest: int = attr("int")
    weight_stride: int = attr("count")
    groups: int = attr("count", 1)

    def encoding(self, key):
        return _packed_weight(self)

    def output_shape(self, shapes, tensors):
        h, w, c = shapes[0]
        k, g = self.kernel, self.groups
        if c != self.in_channels or c % g or self.out_channels % g:
            _fail(self, f"reads {self.in_channels} channels in {g} group(s), got {c}")
        if self.padding >= k:
            _fail(self, f"padding {self.padding} must be smaller than the kernel ({k})")
        _expect(self, "weight", _shape_of(self, tensors, "weight"), (self.out_channels, k, k, c // g))
        _on_grid(self, tensors)
        return (_window(self, h, k, self.stride, self.padding), _window(self, w, k, self.stride, self.padding),
                self.out_channels)

    def macs(self, in_shape, out_shape, tensors):
        h, w, c = out_shape
        return h * w * c * self.in_channels * self.kernel ** 2 // self.groups

    def reference(self, inputs, tensors, values):
        return conv2d_reference(inputs[0], tensors["weight"], self.stride, self.padding, self.groups)

    def onnx(self, form, inputs, tensors):
        weight = np.ascontiguousarray(np.asarray(tensors["weight"]).transpose(0, 3, 1, 2))
        k, s, p = self.kernel, self.stride, self.padding
        return form.graph.op("Conv", [inputs[0], form.weights(self.name, self, weight)], self.name,
                             kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], group=self.groups)

    def qdq(self, form, tensors):
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

    op: ClassVar[str] = "fused_conv"
    TENSORS: ClassVar[tuple] = ("weight", "lut", "direction", "thresholds", "offset")  # those it may hold: node_tensors
    stored: ClassVar[dict] = {"direction": "int8", "thresholds": "int32", "offset": "int32"}
    conv_name: str = attr("name")
    lut_range: "tuple | None" = attr("range", None)
    qmin: "int | None" = attr("int", None)
    qmax: "int | None" = attr("int", None)
    step: "float | None" = attr("positive", None)
    residual_stride: "int | None" = attr("count", None)
    residual_qmax: "int | None" = attr("int", None)
    residual_shift: int = attr("int", 0)
    input_shift: int = attr("int", 0)
    table_sums: bool = attr("true", False)

    def node_tensors(self):
        parts = [v is not None for v in (self.qmin, self.qmax, self.step)]
        if any(parts) and not all(parts):
            _fail(self, "qmin, qmax and step come together (its thresholds)")
        if (self.residual_stride is not None or self.residual_qmax is not None) and \
                not (all(parts) and self.residual_stride is not None and self.residual_qmax is not None):
            _fail(self, "a residual add needs residual_stride, residual_qmax and thresholds")
        if "offset" in self.tensors and (all(parts) or not self.input_shift):
            _fail(self, "an offset belongs to the accumulators of a shifted input (no thresholds)")
        if self.table_sums and not (self.lut_range is not None and all(parts) and self.residual_stride is None
                                    and not self.input_shift and self.out_channels <= 16):
            _fail(self, "table sums need a lookup, thresholds, at most 16 output channels and no residual add or "
                        "shifted input")
        return ("weight", *(("lut",) if self.lut_range is not None else ()),
                *(("direction", "thresholds") if all(parts) else ()), *(("offset",) if "offset" in self.tensors else ()))

    def node_inputs(self):
        return 2 if self.residual_stride is not None else 1

    def encoding(self, key):
        if key == "weight":
            return _packed_weight(self)
        if key == "lut":
            lo, hi = self.lut_range
            return {"packed": True, "lowest": lo, "stride": 1, "bits": code_bits(lo, hi)}
        return Node.encoding(self, key)  # the rest raw, as `stored` says

    def output_shape(self, shapes, tensors):
        h, w, c = shapes[0]
        if self.lut_range is not None:
            tables = _shape_of(self, tensors, "lut")
            if self.inputs[0] != "image" or len(tables) != 3 or tables[0] not in (1, c) or tables[1] != 256 \
                    or c * tables[2] != self.in_channels:
                _fail(self, f"looks up the image's {c} channels into {self.in_channels} codes, got input "
                            f"{self.inputs[0]!r} and lut of shape {tables}")
            c = self.in_channels
        out = super().output_shape([(h, w, c)], tensors)
        o = self.out_channels
        if "thresholds" in self.tensors:
            _expect(self, "direction", _shape_of(self, tensors, "direction"), (o,))
            _expect(self, "thresholds", _shape_of(self, tensors, "thresholds"), (o, self.qmax - self.qmin))
        if "offset" in self.tensors:
            _expect(self, "offset", _shape_of(self, tensors, "offset"), (o,))
        if self.residual_stride is not None:
            if not 0 <= self.residual_qmax or not 0 <= self.residual_shift:
                _fail(self, "a residual add clips to [0, residual_qmax] after taking residual_shift >= 0 off")
            rh, rw, rc = shapes[1]
            s = self.residual_stride
            if rc > o or any(n is not None and r is not None and (n - 1) * s >= r for n, r in zip(out[:2], (rh, rw))):
                _fail(self, f"its shortcut {shapes[1]} read at stride {s} does not fit its output {out}")
        return out

    def reference(self, inputs, tensors, values):
        """The conv and what was fused into it, one step after the other: the lookup of the pixels, the
        conv over codes shifted by `input_shift` (padded with the shift, then `offset` taken off), the
        thresholds, the residual add of input 1 (subsampled by `residual_stride`, zero channels
        appended, `residual_shift` taken off, clipped to [0, residual_qmax])."""
        codes = lut_reference(inputs[0], tensors["lut"]) if "lut" in tensors else inputs[0]
        shift, p = self.input_shift, self.padding
        if shift:
            codes = np.pad(np.asarray(codes, np.int64) + shift, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=shift)
            p = 0
        out = conv2d_reference(codes, tensors["weight"], self.stride, p, self.groups)
        if "offset" in tensors:
            out = out - tensors["offset"]
        if "thresholds" in tensors:
            out = threshold_reference(out, tensors["direction"], tensors["thresholds"], self.qmin)
        if self.residual_stride is not None:
            s = self.residual_stride
            shortcut = inputs[1][:, ::s, ::s]
            shortcut = np.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, out.shape[-1] - shortcut.shape[-1])))
            out = np.clip(out + shortcut - self.residual_shift, 0, self.residual_qmax)
        return out

    onnx = Node.onnx  # the runtime's plan only; files export their graph

    qdq = Node.qdq  # the runtime's plan only


@register
class Threshold(Node):
    """accumulators -> codes: qmin + the number of thresholds a channel's value reaches."""

    op: ClassVar[str] = "threshold"
    qmin: int = attr("int")
    qmax: int = attr("int")
    step: float = attr("positive")
    TENSORS: ClassVar[tuple] = ("direction", "thresholds")
    stored: ClassVar[dict] = {"direction": "int8", "thresholds": "int32"}
    spatial_input: ClassVar = None  # maps and vectors alike

    def output_shape(self, shapes, tensors):
        c = shapes[0][-1]
        _expect(self, "direction", _shape_of(self, tensors, "direction"), (c,))
        _expect(self, "thresholds", _shape_of(self, tensors, "thresholds"), (c, self.qmax - self.qmin))
        return shapes[0]

    def reference(self, inputs, tensors, values):
        return threshold_reference(inputs[0], tensors["direction"], tensors["thresholds"], self.qmin)

    def onnx(self, form, inputs, tensors):
        """qmin + ReduceSum(direction * acc >= thresholds) over the levels; QONNX: a MultiThreshold."""
        g, name = form.graph, self.name
        channels, levels = tensors["thresholds"].shape
        direction = g.const(f"{name}/direction", np.asarray(tensors["direction"], np.float32).reshape(1, -1, 1, 1))
        signed = g.op("Mul", [inputs[0], direction], f"{name}/signed")
        if form.qonnx:  # codes = qmin + #{l: signed >= thresholds[:, l]}
            form.declare(name)
            bits = max(int(self.qmax - min(self.qmin, 0)).bit_length(), 1)
            thresholds = g.const(f"{name}/thresholds", np.asarray(tensors["thresholds"], np.float32))
            return g.op("MultiThreshold", [signed, thresholds], name, domain=form.QONNX_DOMAIN,
                        out_dtype=f"{'INT' if self.qmin < 0 else 'UINT'}{bits}", out_scale=1.0,
                        out_bias=float(self.qmin), data_layout="NCHW")
        signed = g.op("Unsqueeze", [signed, g.const(f"{name}/axis", np.array([4], np.int64))], f"{name}/levels_axis")
        thresholds = g.const(f"{name}/thresholds", np.asarray(tensors["thresholds"], np.float32)
                             .reshape(1, channels, 1, 1, levels))
        passed = g.op("Cast", [g.op("GreaterOrEqual", [signed, thresholds], f"{name}/passed")], f"{name}/passed_f",
                      to=form.FLOAT)
        summed = g.op("ReduceSum", [passed, g.const(f"{name}/sum_axis", np.array([4], np.int64))], f"{name}/count",
                      keepdims=0)
        return g.op("Add", [summed, g.const(f"{name}/qmin", np.float32(self.qmin))], name)


@register
class AddClip(Node):
    """codes + codes (less an optional shift), clipped to [qmin, qmax]: a residual add."""

    op: ClassVar[str] = "add_clip"
    qmin: int = attr("int")
    qmax: int = attr("int")
    step: float = attr("positive")
    shift: int = attr("int", 0)
    INPUTS: ClassVar[int] = 2
    spatial_input: ClassVar = None

    def output_shape(self, shapes, tensors):
        if shapes[0] != shapes[1]:
            _fail(self, f"adds maps of different shapes {shapes[0]} and {shapes[1]}")
        return shapes[0]

    def reference(self, inputs, tensors, values):
        return np.clip(inputs[0].astype(np.int64) + inputs[1] - self.shift, self.qmin, self.qmax)

    def onnx(self, form, inputs, tensors):
        g, name = form.graph, self.name
        added = g.op("Add", inputs, f"{name}/sum")
        if self.shift:
            added = g.op("Sub", [added, g.const(f"{name}/shift", np.float32(self.shift))], f"{name}/shifted")
        return g.op("Clip", [added, g.const(f"{name}/min", np.float32(self.qmin)),
                             g.const(f"{name}/max", np.float32(self.qmax))], name)

    def qdq(self, form, tensors):
        """DequantizeLinear x 2, Add, QuantizeLinear, Clip."""
        if self.shift:
            raise ExportError(f"{self.name}: a shifted add (the runtime's plan) has no QDQ form")
        added = form.graph.op("Add", [form.dequantize(i) for i in self.inputs], f"{self.name}/sum")
        form.quantize(self.name, added, self.step, self.qmin, self.qmax)


@register
class SubsamplePad(Node):
    """A ResNet's option-A shortcut: every stride-th pixel, zero channels appended."""

    op: ClassVar[str] = "subsample_pad"
    stride: int = attr("count")
    extra_channels: int = attr("size")

    def output_shape(self, shapes, tensors):
        h, w, c = shapes[0]
        s = self.stride
        return (None if h is None else -(-h // s)), (None if w is None else -(-w // s)), c + self.extra_channels

    def reference(self, inputs, tensors, values):
        s = self.stride
        return np.pad(inputs[0][:, ::s, ::s, :], ((0, 0), (0, 0), (0, 0), (0, self.extra_channels)))

    def onnx(self, form, inputs, tensors):
        return form.graph.subsample_pad(self.name, inputs[0], self.stride, self.extra_channels)

    def qdq(self, form, tensors):
        """Slice with steps and Pad of channels, on the codes (the appended channels hold code 0)."""
        tensor, step, zero = form.codes[self.inputs[0]]
        fill = form.graph.const(f"{self.name}/code_zero", np.array(zero, np.uint8))
        form.codes[self.name] = (form.graph.subsample_pad(self.name, tensor, self.stride, self.extra_channels,
                                                             fill), step, zero)


@register
class MaxPool(Node):
    """codes -> the largest code of each k x k window, stride s."""

    op: ClassVar[str] = "max_pool"
    kernel: int = attr("count")
    stride: int = attr("count")

    def output_shape(self, shapes, tensors):
        h, w, c = shapes[0]
        return _window(self, h, self.kernel, self.stride), _window(self, w, self.kernel, self.stride), c

    def reference(self, inputs, tensors, values):
        k, s = self.kernel, self.stride
        return np.lib.stride_tricks.sliding_window_view(inputs[0], (k, k), axis=(1, 2))[:, ::s, ::s].max((-2, -1))

    def onnx(self, form, inputs, tensors):
        k, s = self.kernel, self.stride
        return form.graph.op("MaxPool", inputs, self.name, kernel_shape=[k, k], strides=[s, s])

    def qdq(self, form, tensors):
        tensor, step, zero = form.codes[self.inputs[0]]
        k, s = self.kernel, self.stride
        form.codes[self.name] = (form.graph.op("MaxPool", [tensor], self.name, kernel_shape=[k, k], strides=[s, s]),
                                    step, zero)


@register
class SumPool(Node):
    """codes -> per-channel sums over the map (the global average pool, its count applied later)."""

    op: ClassVar[str] = "sum_pool"
    step: float = attr("positive")

    def output_shape(self, shapes, tensors):
        return (shapes[0][2],)

    def reference(self, inputs, tensors, values):
        values["pool.count"] = inputs[0].shape[1] * inputs[0].shape[2]  # for a float last layer's scale
        return inputs[0].sum((1, 2), dtype=np.int64)

    def onnx(self, form, inputs, tensors):
        """ReduceSum over the map; the count of positions kept in `form` for the logits' scale."""
        g, name = form.graph, self.name
        shape = g.op("Shape", [inputs[0]], f"{name}/shape")
        hw = g.op("Slice", [shape, g.const(f"{name}/hw0", np.array([2], np.int64)),
                            g.const(f"{name}/hw1", np.array([4], np.int64))], f"{name}/hw")
        form.count = g.op("Cast", [g.op("ReduceProd", [hw], f"{name}/area", keepdims=0)], f"{name}/count",
                          to=form.FLOAT)
        return g.op("ReduceSum", [inputs[0], g.const(f"{name}/axes", np.array([2, 3], np.int64))], name, keepdims=0)

    def qdq(self, form, tensors):
        """The mean of the real codes (sums x step / count), for the last layer; axes an attribute until
        opset 18."""
        form.mean = form.graph.op("ReduceMean", [form.dequantize(self.inputs[0])], self.name, axes=[2, 3],
                                  keepdims=0)


@register
class Linear(Node):
    """pooled sums -> int32 logits: a quantized last layer."""

    op: ClassVar[str] = "linear"
    in_channels: int = attr("count")
    out_channels: int = attr("count")
    weight_bits: int = attr("bits")
    weight_lowest: int = attr("int")
    weight_stride: int = attr("count")
    TENSORS: ClassVar[tuple] = ("weight",)
    spatial_input: ClassVar = False

    def encoding(self, key):
        return _packed_weight(self)

    def output_shape(self, shapes, tensors):
        if shapes[0] != (self.in_channels,):
            _fail(self, f"reads {self.in_channels} sums, got shape {shapes[0]}")
        _expect(self, "weight", _shape_of(self, tensors, "weight"), (self.out_channels, self.in_channels))
        _on_grid(self, tensors)
        return (self.out_channels,)

    def macs(self, in_shape, out_shape, tensors):
        return self.in_channels * self.out_channels

    def reference(self, inputs, tensors, values):
        return inputs[0] @ np.asarray(tensors["weight"], np.int64).T

    def onnx(self, form, inputs, tensors):
        """MatMul, times the per-class scale / count: float logits."""
        g, name = form.graph, self.name
        weight = g.op("Transpose", [form.weights(name, self, np.asarray(tensors["weight"]))], f"{name}/weight_t",
                      perm=[1, 0])
        integer = g.op("MatMul", [inputs[0], weight], f"{name}/integer")
        scale = g.const(f"{name}/scale", np.asarray(form.meta["logit_scale"], np.float32))
        return g.op("Div", [g.op("Mul", [integer, scale], f"{name}/scaled"), form.count], name)

    def qdq(self, form, tensors):
        """logits = mean x weight codes x per-class scale / step (the weights dequantized per class)."""
        g, name = form.graph, self.name
        scale = np.asarray(form.meta["logit_scale"], np.float64) / form.by_name[self.inputs[0]].step
        w = g.op("DequantizeLinear", [g.const(f"{name}/w_codes", np.asarray(tensors["weight"]).T.astype(np.int8)),
                                      g.const(f"{name}/w_scale", scale.astype(np.float32)),
                                      g.const(f"{name}/w_zero", np.zeros(len(scale), np.int8))], f"{name}/w", axis=1)
        form.codes[name] = (g.op("MatMul", [form.mean, w], name), None, None)


@register
class LinearFloat(Node):
    """pooled sums * step / count -> float logits: a float last layer."""

    op: ClassVar[str] = "linear_float"
    step: float = attr("positive")
    TENSORS: ClassVar[tuple] = ("weight", "bias")
    stored: ClassVar[dict] = {"weight": "float32", "bias": "float32"}
    spatial_input: ClassVar = False

    def output_shape(self, shapes, tensors):
        weight = _shape_of(self, tensors, "weight")
        if len(weight) != 2 or weight[1] != shapes[0][0]:
            _fail(self, f"weight has shape {weight}, the graph needs (classes, {shapes[0][0]})")
        _expect(self, "bias", _shape_of(self, tensors, "bias"), weight[:1])
        return weight[:1]

    def macs(self, in_shape, out_shape, tensors):
        return in_shape[0] * out_shape[0]

    def reference(self, inputs, tensors, values):
        scale = np.float32(self.step / values["pool.count"])
        return (inputs[0].astype(np.float32) * scale) @ tensors["weight"].T + tensors["bias"]

    def onnx(self, form, inputs, tensors):
        """The pooled mean (sums * step / count) times the weights, plus the bias."""
        g, name = form.graph, self.name
        steps = g.op("Mul", [inputs[0], g.const(f"{name}/step", np.float32(self.step))], f"{name}/steps")
        mean = g.op("Div", [steps, form.count], f"{name}/mean")
        product = g.op("MatMul", [mean, g.const(f"{name}/weight", np.asarray(tensors["weight"], np.float32).T)],
                       f"{name}/product")
        return g.op("Add", [product, g.const(f"{name}/bias", np.asarray(tensors["bias"], np.float32))], name)

    def qdq(self, form, tensors):
        g, name = form.graph, self.name
        product = g.op("MatMul", [form.mean, g.const(f"{name}/weight", np.asarray(tensors["weight"], np.float32).T)],
                       f"{name}/product")
        form.codes[name] = (g.op("Add", [product, g.const(f"{name}/bias", np.asarray(tensors["bias"], np.float32))], name),
                            None, None)


@register
class Affine(Node):
    """accumulators -> real values scale * A + bias per channel (export's plain graph only)."""

    op: ClassVar[str] = "affine"
    TENSORS: ClassVar[tuple] = ("scale", "bias")
    stored: ClassVar[dict] = {"scale": "float64", "bias": "float64"}
    spatial_input: ClassVar = None

    def output_shape(self, shapes, tensors):
        c = shapes[0][-1]
        _expect(self, "scale", _shape_of(self, tensors, "scale"), (c,))
        _expect(self, "bias", _shape_of(self, tensors, "bias"), (c,))
        return shapes[0]

    def reference(self, inputs, tensors, values):
        return inputs[0] * tensors["scale"] + tensors["bias"]

    def qdq(self, form, tensors):
        """Of codes: their DequantizeLinear (the quantize reading it requantizes them). Of a conv: the
        Conv of the dequantized codes and weights, its batch norm folded in: the weight codes times the
        largest spread int8 holds (127 for binary), signs flipped where the scale a is negative, scale
        |a| / spread per channel, the bias int32 on that grid, placed where every integer accumulator
        gets the code the thresholds give it (QdqForm.bias_codes; where no grid point does, rounded)."""
        g, name, source = form.graph, self.name, self.inputs[0]
        if source in form.codes and form.codes[source][1] is not None:  # codes requantized
            if not (np.allclose(tensors["scale"], form.codes[source][1], rtol=1e-6, atol=0) and not np.any(tensors["bias"])):
                raise ExportError(f"{name}: an affine of codes must be their real values (scale = step, no bias)")
            form.codes[name] = (form.dequantize(source), None, None)
            return
        conv = form.by_name.get(source)
        if conv is None or conv.op != "conv":
            raise ExportError(f"{name}: an affine node must read a conv or codes in the QDQ form")
        weight = np.asarray(form.model.tensors[conv.tensor_name("weight")], np.int64).transpose(0, 3, 1, 2)  # OIHW
        if weight.min(initial=0) < -127 or weight.max(initial=0) > 127:
            raise ExportError(f"{conv.name}: weight codes beyond int8 have no QDQ form")
        step_in = form.codes[conv.inputs[0]][1]
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
        bias = form.bias_codes(np.abs(a), b, bias_scale, q.step, q.qmin, q.qmax)
        w = g.op("DequantizeLinear", [g.const(f"{name}/w_codes", w_codes.astype(np.int8)),
                                      g.const(f"{name}/w_scale", w_scale.astype(np.float32)),
                                      g.const(f"{name}/w_zero", np.zeros(len(a), np.int8))], f"{name}/w", axis=0)
        bias = g.op("DequantizeLinear", [g.const(f"{name}/b_int", bias),
                                         g.const(f"{name}/b_scale", bias_scale.astype(np.float32)),
                                         g.const(f"{name}/b_zero", np.zeros(len(a), np.int32))], f"{name}/b", axis=0)
        k, s, p = conv.kernel, conv.stride, conv.padding
        real = g.op("Conv", [form.dequantize(conv.inputs[0]), w, bias], f"{name}/conv", kernel_shape=[k, k],
                    strides=[s, s], pads=[p, p, p, p], group=conv.groups)
        form.codes[name] = (real, None, None)  # a real value, for the quantize that reads it


@register
class Quantize(Node):
    """real values -> codes clip(round(x / step), qmin, qmax) (export's plain graph only)."""

    op: ClassVar[str] = "quantize"
    qmin: int = attr("int")
    qmax: int = attr("int")
    step: float = attr("positive")
    spatial_input: ClassVar = None

    def output_shape(self, shapes, tensors):
        return shapes[0]

    def reference(self, inputs, tensors, values):
        """Round half up, as the thresholds (transforms.fold_batchnorm_into_thresholds) count."""
        return np.clip(np.floor(inputs[0] / self.step + 0.5), self.qmin, self.qmax).astype(np.int64)

    def qdq(self, form, tensors):
        """QuantizeLinear (step), then Clip to [qmin, qmax] on the integers."""
        form.quantize(self.name, form.codes[self.inputs[0]][0], self.step, self.qmin, self.qmax)


def infer_shapes(nodes: list, tensors: dict, image_shape: tuple) -> dict:
    """{"image": image_shape, node name: its output's per-image shape} in node order, every node
    checked (`Node.check`, inputs defined before use, shapes consistent along the graph, sizes
    bounded); ValueError naming the first node that breaks a rule. H and W may be None (unknown)."""
    shapes, by_name = {"image": tuple(image_shape)}, {}
    for node in nodes:
        if not isinstance(node, Node):
            raise ValueError(f"a graph holds nodes of its ops' classes, got {node!r}")
        node.check()
        if node.name in shapes:
            _fail(node, "a second node of that name")
        missing = [node.tensor_name(k) for k in node.tensors if node.tensor_name(k) not in tensors]
        if missing:
            _fail(node, f"its tensors {missing} are not in the model")
        inputs = []
        for name in node.inputs:
            if name not in shapes:
                _fail(node, f"input {name!r} is no earlier node")
            inputs.append(shapes[name])
        node.check_sources([by_name.get(name) for name in node.inputs])
        if node.spatial_input is not None and any((len(s) == 3) != node.spatial_input for s in inputs):
            _fail(node, f"reads {'an (H, W, C) map' if node.spatial_input else 'a (C,) vector'}, got {inputs}")
        out = tuple(node.output_shape(inputs, tensors))
        if math.prod(v or 1 for v in out) > MAX_ELEMENTS or any(v is not None and v < 1 for v in out):
            _fail(node, f"output shape {out} is empty or larger than {MAX_ELEMENTS} values per image")
        shapes[node.name] = out
        by_name[node.name] = node
    return shapes


def check_graph(nodes: list, tensors: dict, meta: dict) -> dict:
    """Every rule of a model file's graph (its nodes read by `node_from_dict`): its metadata, each node by its op (`infer_shapes`, on the
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
    last = next(n.op for n in nodes if n.name == meta["output"])
    if meta["integer_only"] != (last == "linear"):
        raise ValueError(f"integer_only is {meta['integer_only']} but the output node is a {last!r}")
    return shapes
