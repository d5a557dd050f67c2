"""The fast executor: the same outputs as `reference.run_reference`, run by libpixelq.

The model's plan (`fusion.plan`: each conv fused with its lookup, thresholds and residual add,
signed inputs shifted; a model file stores it) becomes one libpixelq net at load: each node goes to
`pxq_net_add_node`, which chooses a conv's kernel for the instruction set (table sums, bit-planes
packed through the lookup, dot products or bit-planes; csrc/steps.c) and lays its weights out,
the same code `pxq_load` runs. A batch then runs in one call. The nodes from the first one the net
cannot run (codes wider than a byte, some grouped convs: csrc/steps.c) run one by one on the numpy reference, on the
net's values.

The layouts in numpy below (`pack_conv_weight`, ...) are for calling the kernels directly (their
tests, `pixelq bench`'s layer timings); the runtime lays weights out in C.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from ..errors import ConfigError
from ..integer.ops import Conv, Node
from . import clib, fusion
from .reference import node_tensors


def kernels_available() -> bool:
    return clib.available()


def available_isas() -> list:
    """The instruction sets this CPU runs the kernels with, worst to best (the last is the default);
    empty without the kernels."""
    return clib.isas()


def choose_isa(isa: "str | None") -> str:
    """`isa` checked against this CPU (None: the best it has) -> the name the kernels run with."""
    names = available_isas()
    if isa is None:
        return names[-1]
    if isa not in names:
        what = "is not an instruction set pixelq knows" if isa not in clib.ISA_NAMES else "is not available on this CPU"
        raise ConfigError(f"isa {isa!r} {what}; this CPU runs {', '.join(names)}")
    return isa


def padded_channels(channels: int) -> int:
    """Output channels rounded up to whole vectors of 8, as the packed weights and thresholds hold them."""
    return (channels + 7) // 8 * 8


def pack_conv_weight(codes: np.ndarray, lowest: int, stride: int, bits: int) -> np.ndarray:
    """Integer weight codes (O, kh, kw, I) -> window-row words (bits, kh, Kr, Opad) uint64.

    Plane j of u = (code - lowest) / stride; in row ky, tap kx's channels take bytes kx*Cb ..
    (Cb = ceil(I / 8), channel i at bit i % 8 of byte kx*Cb + i // 8), the row padded to Kr words."""
    o, kh, kw, ci = codes.shape
    cb = (ci + 7) // 8
    kr = (kw * cb + 7) // 8
    u = (codes.astype(np.int64) - lowest) // stride
    planes = np.stack([(u >> j) & 1 for j in range(bits)]).astype(np.uint8)  # (J, O, kh, kw, I)
    planes = np.pad(planes, ((0, 0), (0, 0), (0, 0), (0, 0), (0, cb * 8 - ci))).reshape(bits, o, kh, kw * cb * 8)
    planes = np.pad(planes, ((0, 0), (0, 0), (0, 0), (0, kr * 64 - kw * cb * 8)))
    words = np.packbits(planes, axis=-1, bitorder="little").view("<u8")  # (J, O, kh, Kr)
    out = np.zeros((bits, kh, kr, padded_channels(o)), np.uint64)
    out[..., :o] = words.transpose(0, 2, 3, 1)
    return out


def pack_dot_weight(codes: np.ndarray) -> np.ndarray:
    """Integer weight codes (O, kh, kw, I), each within int8 -> the dot-product conv's layout
    (kh, kw, ceil(I / 4), Opad / 8, 8, 4) int8: for each tap and group of 4 input channels, 8 output
    channels' 4 weights side by side (zero for padded channels)."""
    o, kh, kw, ci = codes.shape
    groups = (ci + 3) // 4
    w = np.zeros((padded_channels(o), kh, kw, groups * 4), np.int8)
    w[:o, ..., :ci] = codes
    return np.ascontiguousarray(w.reshape(-1, 8, kh, kw, groups, 4).transpose(2, 3, 4, 0, 1, 5))


def lut_plane_bits(lut: np.ndarray, planes: int) -> tuple:
    """Lookup codes (T, 256, d), unsigned and d <= 64 -> (bits (T, 256, planes) uint64, sums (T, 256)
    int32): bit j of bits[t, v, p] is bit p of code j, and sums the d codes, for the C kernel that
    packs a pixel's planes straight from its value."""
    d = lut.shape[2]
    u = np.asarray(lut, np.uint64)
    bits = np.stack([((u >> np.uint64(p)) & np.uint64(1)) << np.arange(d, dtype=np.uint64) for p in range(planes)], 2)
    return np.ascontiguousarray(bits.sum(-1, dtype=np.uint64)), np.ascontiguousarray(lut.sum(-1), np.int32)


def pad_thresholds(direction: np.ndarray, thresholds: np.ndarray) -> tuple:
    """(O,) directions and (O, L) thresholds -> (Opad,) int8 and (L, Opad) int32, channels innermost."""
    o, levels = thresholds.shape
    d = np.ones(padded_channels(o), np.int8)
    d[:o] = direction
    t = np.zeros((levels, padded_channels(o)), np.int32)
    t[:, :o] = thresholds.T
    return d, t


NODE_OPS = {"lut": 0, "conv": 1, "fused_conv": 2, "threshold": 3, "add_clip": 4, "subsample_pad": 5, "max_pool": 6,
            "sum_pool": 7, "linear": 8, "linear_float": 9}  # enum pxq_node_op
NODE_TENSORS = ("weight", "lut", "direction", "thresholds", "offset")
NODE_FIELDS = {name for name, kind in clib.Node._fields_ if kind is clib.i64}  # the integer attributes


def net_node(node: Node, tensors: dict, inputs: list) -> tuple:
    """(clib.Node, the arrays it points to) for a plan node whose inputs are value numbers."""
    fields = {k: getattr(node, k) for k in node.attributes() if k in NODE_FIELDS and getattr(node, k) is not None}
    out = clib.Node(op=NODE_OPS[node.op], inputs=(clib.i32 * 2)(*(inputs + [-1, -1])[:2]), **fields)
    if isinstance(node, Conv):
        out.input_range = (clib.i64 * 2)(*node.input_range)
    keep = []
    floats = node.op == "linear_float"  # a float last layer: float32 weight and bias, and its step
    for key in ("weight", "bias") if floats else NODE_TENSORS:
        if key in node.tensors:
            array = np.ascontiguousarray(tensors[node.tensor_name(key)], np.float32 if floats else np.int32)
            keep.append(array)
            kind, field = (clib.Floats, "float_weight" if key == "weight" else key) if floats else (clib.Codes, key)
            setattr(out, field, kind(array.ctypes.data, array.ndim, (clib.i64 * 4)(*array.shape)))
    if getattr(node, "step", None) is not None:
        out.step = node.step
    return out, keep


KERNELS = {0: "bit-planes", 1: "bit-planes via lookup", 2: "table sums", 3: "dot product"}  # enum pxq_conv_kind


class FastExecutor:
    """Runs `fusion.plan(model)` (with `fuse=False` every node kept) as a libpixelq net (see the
    module docstring), its convs with the instruction set `isa` (default: the best this CPU has,
    `available_isas`). `run(images)` returns every planned node's output like run_reference;
    `output(images)` only the model's output. Calls hold a lock: a net runs one batch at a time.
    """

    def __init__(self, model, threads: "int | None" = None, fuse: bool = True, isa: "str | None" = None):
        if not clib.available():
            raise ConfigError("the C kernels are not built; reinstall pixelq with a C compiler present")
        self.model, self.threads = model, threads or os.cpu_count() or 1
        self.isa = choose_isa(isa)
        # the plan a model file stores (made by the same transforms at export), else made here
        self.plan = model.plan if fuse and model.plan is not None else fusion.plan(model, fuse)
        self.net, self._values = clib.Net(), {"image": 0}
        for node in self.plan.nodes:
            if node.op not in NODE_OPS or any(i not in self._values for i in node.inputs):
                break
            spec, keep = net_node(node, self.plan.tensors, [self._values[i] for i in node.inputs])
            try:
                self._values[node.name] = self.net.add_node(spec, self.isa, self.threads)
            except clib.Unsupported:  # this node and the rest run on the reference
                break
        done = len(self._values) - 1
        self._tail, self._tail_tensors = self.plan.nodes[done:], node_tensors(self.plan)[done:]
        self._lock = threading.Lock()

    def kernels(self) -> dict:
        """{file node name: the kernel it runs on}, as `pixelq inspect --isa` shows it: each conv's,
        and a threshold's the plan runs as a byte lookup (`fusion.requantize_as_lookup`)."""
        kernels, tail = {}, {node.name for node in self._tail}
        for node in self.plan.nodes:
            name = node.name
            if node.op == "lut" and self.model.node(name).op == "threshold":
                kernels[name] = "numpy reference lookup" if name in tail else "byte lookup"
            if node.op not in fusion.CONV_OPS:
                continue
            kind, planes, bits = (-1, 0, 0) if name in tail else self.net.step_kernel(self._values[name] - 1)
            kernel = {"dot product": f"dot product ({clib.dot_isa(self.isa)})",
                      "bit-planes": f"bit-planes ({planes}x{bits} popcount passes)"}.get(KERNELS.get(kind))
            kernels[fusion.conv_name(node)] = kernel or KERNELS.get(
                kind, "numpy reference (codes wider than a byte, or a grouped conv no C kernel holds)")
        return kernels

    def _run(self, images: np.ndarray, wanted, seconds: "dict | None" = None) -> dict:
        """The values of a run: the net's (`wanted` of them, views of its buffers valid until its next
        run), then the nodes after it one by one (each one's time into `seconds`, when given)."""
        values = {"image": images}
        if len(self._values) > 1:
            self.net.run(np.ascontiguousarray(images))
            values["pool.count"] = self.net.pool_count()
            for name in wanted:
                if name in self._values and name != "image":
                    values[name] = self.net.value(self._values[name])
        for node, t in zip(self._tail, self._tail_tensors):
            start = time.perf_counter()
            values[node.name] = node.reference([values[i] for i in node.inputs], t, values)
            if seconds is not None:
                seconds[node.name] = time.perf_counter() - start
        return values

    def run(self, images: np.ndarray) -> dict:
        """Every planned node's output ("pool.count": the positions the sum pool summed)."""
        with self._lock:
            values = self._run(images, self._values)
            return {name: np.array(v) if isinstance(v, np.ndarray) and name != "image" else v
                    for name, v in values.items()}

    def _tail_inputs(self) -> set:
        return {i for node in self._tail for i in node.inputs}

    def output(self, images: np.ndarray) -> tuple:
        """(a copy of the model's output, the positions its sum pool summed) for `images`."""
        out = self.model.meta["output"]
        with self._lock:
            values = self._run(images, {out, *self._tail_inputs()})
            return np.array(values[out]), values["pool.count"]

    def profile(self, images: np.ndarray, repeats: int) -> dict:
        """{node name (a fused conv under its conv's name): seconds, the best of `repeats` runs}: the
        net's steps as it times them, the nodes after it one by one."""
        times = {}
        with self._lock:
            self.net.profile(True)
            try:
                for _ in range(repeats):
                    seconds = {}
                    self._run(images, self._tail_inputs(), seconds)
                    if len(self._values) > 1:
                        seconds.update(zip(list(self._values)[1:], self.net.step_seconds()))
                    for node in self.plan.nodes:
                        name = fusion.conv_name(node)
                        times[name] = min(times.get(name, float("inf")), seconds[node.name])
            finally:
                self.net.profile(False)
        return times
