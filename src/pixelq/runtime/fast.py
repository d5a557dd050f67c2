"""The fast executor: the same outputs as `reference.run_reference`, with convs and thresholds in C.

It runs the graph `fusion.plan` makes of the model (each conv fused with its lookup, thresholds and
residual add; signed inputs shifted) and picks each conv's kernel at load: table sums for a first
conv over a lookup (`fusion.lut_conv_table`, straight from the pixels), bit-planes packed from the
pixels for a wider one, dot products past the bit widths where they are cheaper (`dot_conv_fits`),
else bit-planes. Weights are laid out once for that kernel (`pack_conv_weight`: window-row words,
output channels innermost and padded to vectors of 8). Activations stay uint8 codes between layers;
each conv call packs its input itself.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from . import fusion
from .reference import REFERENCE_OPS, lut_reference, node_tensors, run_graph, threshold_reference

try:
    from . import _kernels
except ImportError:  # built without a C compiler: the engine falls back to the reference executor
    _kernels = None

def kernels_available() -> bool:
    return _kernels is not None


def available_isas() -> list:
    """The instruction sets this CPU runs the kernels with, worst to best (the last is the default);
    empty without the kernels."""
    return _kernels.isas() if _kernels is not None else []


def choose_isa(isa: "str | None") -> str:
    """`isa` checked against this CPU (None: the best it has) -> the name the kernels run with."""
    names = available_isas()
    if isa is None:
        return names[-1]
    if isa not in names:
        known = ("portable", "avx2", "avx512vpopcntdq", "avx512bitalg")
        what = "is not an instruction set pixelq knows" if isa not in known else "is not available on this CPU"
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


# A conv runs as dot products of its codes with int8 weights (no bit-planes) where its input planes x
# weight bits (the popcount passes of the bit-plane conv) reach DOT_MIN_PAIRS, or 4 (W2A2, W1A4) with
# at least DOT_WIDE_CHANNELS input channels: the dot product costs the same at any bits. Read off
# `python experiments/kernel_crossover.py` (results/bench/kernel_crossover.json) per build.
DOT_MIN_PAIRS = {"portable": 5, "avx2": 5, "avx512vpopcntdq": 5, "avx512bitalg": 5}
DOT_WIDE_CHANNELS = {"portable": None, "avx2": 64, "avx512vpopcntdq": 1, "avx512bitalg": 32}  # the AVX-512
# build without BITALG has no 16-channel lanes conv, so its W2A2 16-channel layers are cheaper as dot products too


def dot_conv_fits(node: dict, weight: np.ndarray, isa: str) -> bool:
    """Whether conv `node` runs on the dot-product kernel under `isa`: by the cost rule above, with
    weight codes inside int8, and for VPMADDUBSW (AVX2 without VNNI, which saturates int16 pairs)
    2 x largest code x largest |weight| <= 32767."""
    pairs, wide = _planes(node) * node["weight_bits"], DOT_WIDE_CHANNELS[isa]
    cheaper = pairs >= DOT_MIN_PAIRS[isa] or (pairs == 4 and wide is not None and node["in_channels"] >= wide)
    if not cheaper or weight.min(initial=0) < -128 or weight.max(initial=0) > 127:
        return False
    top = (1 << _planes(node)) - 1
    return _kernels.dot_isa(isa) != "avx2" or 2 * top * int(np.abs(weight).max(initial=0)) <= 32767


def pad_thresholds(direction: np.ndarray, thresholds: np.ndarray) -> tuple:
    """(O,) directions and (O, L) thresholds -> (Opad,) int8 and (L, Opad) int32, channels innermost."""
    o, levels = thresholds.shape
    d = np.ones(padded_channels(o), np.int8)
    d[:o] = direction
    t = np.zeros((levels, padded_channels(o)), np.int32)
    t[:, :o] = thresholds.T
    return d, t


def _planes(conv: dict) -> int:
    """Bit-planes of a conv's input codes, signed ones shifted to start at 0."""
    lo, hi = conv["input_range"]
    return max(1, int(hi - min(lo, 0)).bit_length())



@dataclass
class _Conv:
    """A conv node's kernel and what it was prepared with at load."""
    kind: str  # "table", "lookup", "dot", "planes" or "reference"
    args: tuple = ()  # the kernel's weight arguments, after the input's
    pad: "np.ndarray | None" = None  # shifted input: the (C,) bytes its border holds
    thresholds: tuple = ()  # (direction, thresholds) padded to whole vectors (pad_thresholds)


class FastExecutor:
    """Runs `fusion.plan(model)` (convs fused with their lookup, thresholds and residual add, signed
    inputs shifted; with `fuse=False` every node kept) with the convs and thresholds in C, weights
    laid out once here for the kernel each conv runs on. `run(images)` returns every planned node's
    output like run_reference. Its convs run with the instruction set `isa` (default: the best this
    CPU has, `available_isas`).

    `run(images, reuse=True)` writes the convs' outputs into arrays kept from the previous call of
    the same batch shape (for `Runtime.logits`, which keeps only the final output): fresh arrays
    this size come from mmap, and their page faults cost about a third of a network's time. The
    returned intermediates are then overwritten by the next reusing call. Calls hold a lock.
    """

    def __init__(self, model, threads: "int | None" = None, fuse: bool = True, isa: "str | None" = None):
        if _kernels is None:
            raise ConfigError("the C kernels are not built; reinstall pixelq with a C compiler present")
        self.model, self.threads = model, threads or os.cpu_count() or 1
        self.isa = choose_isa(isa)
        self.plan = fusion.plan(model, fuse)
        self.convs = {node["name"]: self._prepare(node) for node in self.plan.nodes if node["op"] in fusion.CONV_OPS}
        self.lut_tables = {node["name"]: np.ascontiguousarray(self.plan.tensors[f"{node['name']}.lut"], np.uint8)
                           for node in self.plan.nodes if node["op"] == "lut" and 0 <= node["qmin"] <= node["qmax"] <= 255}
        self._workspace, self._reuse, self._lock = {}, False, threading.Lock()
        self._tensors = node_tensors(self.plan)

    def _prepare(self, node: dict) -> _Conv:
        t = {k: self.plan.tensors[f"{node['name']}.{k}"] for k in node["tensors"]}
        if not fusion.has_kernel(node):
            return _Conv("reference")  # codes wider than a byte, or groups
        weight, shift = t["weight"], node.get("input_shift", 0)
        thresholds = pad_thresholds(t["direction"], t["thresholds"]) if "thresholds" in t else ()
        k, o = node["kernel"], node["out_channels"]

        def packed() -> tuple:  # the bit-plane kernels' weight arguments
            return (pack_conv_weight(weight, node["weight_lowest"], node["weight_stride"], node["weight_bits"]), k, k,
                    node["weight_bits"], o, padded_channels(o), node["weight_lowest"], node["weight_stride"])

        pad = np.full(node["in_channels"], shift, np.uint8) if shift else None
        if "lut" in t:
            table = fusion.conv_table(node, self.plan.tensors)
            if table is not None:
                return _Conv("table", (table, k, k, o, padded_channels(o)), None, thresholds)
            bits, sums = lut_plane_bits(t["lut"] + shift, _planes(node))
            colours = node["in_channels"] // t["lut"].shape[2]
            pad = fusion.signed_zero(t["lut"], colours) if shift else None  # pixels whose codes are 0
            return _Conv("lookup", (bits, sums, bits.shape[0], t["lut"].shape[2], bits.shape[2], *packed()), pad,
                         thresholds)
        if dot_conv_fits(node, weight, self.isa):
            return _Conv("dot", (pack_dot_weight(weight), k, k, o, padded_channels(o)), pad, thresholds)
        return _Conv("planes", (_planes(node), *packed()), pad, thresholds)

    def kernels(self) -> dict:
        """{file node name: the kernel it runs on}, as `pixelq inspect --isa` shows it: each conv's,
        and a threshold's the plan runs as a byte lookup (`fusion.requantize_as_lookup`)."""
        names = {"table": "table sums", "lookup": "bit-planes via lookup",
                 "reference": "numpy reference (grouped, or codes wider than a byte)"}
        kernels = {}
        for node in self.plan.nodes:
            conv = self.convs.get(node["name"])
            if node["op"] == "lut" and self.model.node(node["name"])["op"] == "threshold":
                kernels[node["name"]] = "byte lookup" if node["name"] in self.lut_tables else "numpy reference lookup"
            if conv is None:
                continue
            if conv.kind == "dot":
                kind = f"dot product ({_kernels.dot_isa(self.isa)})"
            elif conv.kind == "planes":
                kind = f"bit-planes ({_planes(node)}x{node['weight_bits']} popcount passes)"
            else:
                kind = names[conv.kind]
            kernels[node.get("conv_name", node["name"])] = kind
        return kernels

    def _empty(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """An output array for node `name`: the one kept from the last call when reusing."""
        if not self._reuse:
            return np.empty(shape, dtype)
        out = self._workspace.get(name)
        if out is None or out.shape != shape or out.dtype != dtype:
            out = self._workspace[name] = np.empty(shape, dtype)
        return out

    def _conv(self, node: dict, x: list, t: dict, values: dict) -> np.ndarray:
        """A conv (fused or not): int32 accumulators, or, with thresholds, uint8 codes (the residual
        add's, when that is fused too)."""
        conv = self.convs[node["name"]]
        if conv.kind == "reference":
            return REFERENCE_OPS[node["op"]](node, x, t, values).astype(np.int32)
        image = x[0]
        n, h, w, c = image.shape
        k, s, p, o = node["kernel"], node["stride"], node["padding"], node["out_channels"]
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if node.get("input_shift"):
            image, h, w, p = self._shifted_input(node, conv, image), h + 2 * p, w + 2 * p, 0
        image = np.ascontiguousarray(image, np.uint8)
        geometry = (s, p, ho, wo)
        if conv.kind == "table":
            call, args = _kernels.table_conv, (image, n, h, w, c, *conv.args, *geometry)
        elif conv.kind == "lookup":
            call, args = _kernels.lut_conv, (image, n, h, w, c, *conv.args, *geometry)
        elif conv.kind == "dot":
            call, args = _kernels.dot_conv, (image, n, h, w, c, *conv.args, *geometry)
        else:
            call, args = _kernels.conv, (image, n, h, w, c, *conv.args, *geometry)
        if not conv.thresholds:
            out = self._empty(node["name"], (n, ho, wo, o), np.int32)
            call(*args, out, self.threads, isa=self.isa)
            if "offset" in t:
                np.subtract(out, t["offset"], out=out)
            return out
        codes = self._empty(node["name"], (n, ho, wo, o), np.uint8)
        direction, thresholds = conv.thresholds
        fused = (codes, self.threads, direction, thresholds, thresholds.shape[0], node["qmin"])
        if conv.kind == "table":
            call(*args, *fused, conv.args[0].itemsize, isa=self.isa)
        elif node.get("residual_stride"):
            shortcut = np.ascontiguousarray(x[1], np.uint8)
            call(*args, *fused, shortcut, *shortcut.shape[1:], node["residual_stride"], node["residual_qmax"],
                 node.get("residual_shift", 0), isa=self.isa)
        else:
            call(*args, *fused, isa=self.isa)
        return codes

    def _shifted_input(self, node: dict, conv: _Conv, x: np.ndarray) -> np.ndarray:
        """The input of a conv over shifted codes (fusion.shift_signed_inputs), padded here with the
        shifted code of 0: a lookup conv's pixels as they are (its bit tables were shifted at load),
        padded with pixels whose codes are 0; another conv's codes plus the shift.
        -> (N, H + 2p, W + 2p, C) uint8."""
        n, h, w, c = x.shape
        p, pad = node["padding"], conv.pad
        out = self._empty(node["name"] + ".shifted", (n, h + 2 * p, w + 2 * p, c), np.uint8)
        out[:, :p], out[:, h + p:], out[:, :, :p], out[:, :, w + p:] = pad, pad, pad, pad
        inside = out[:, p:h + p, p:w + p]
        if conv.kind == "lookup":
            inside[...] = x
        else:
            np.add(x, node["input_shift"], out=inside, casting="unsafe")
        return out

    def _threshold(self, node: dict, x: list, t: dict, values: dict) -> np.ndarray:
        acc = np.ascontiguousarray(x[0], np.int32)
        direction = np.ascontiguousarray(t["direction"], np.int8)
        thresholds = np.ascontiguousarray(t["thresholds"], np.int32)
        if node["qmin"] < 0 or node["qmax"] > 255:
            return threshold_reference(acc, direction, thresholds, node["qmin"])
        o = acc.shape[-1]
        out = self._empty(node["name"], acc.shape, np.uint8)
        _kernels.threshold(acc, acc.size // o, o, direction, thresholds, thresholds.shape[1], node["qmin"], out,
                           self.threads)
        return out

    def _lut(self, node: dict, x: list, t: dict, values: dict) -> np.ndarray:
        if node["name"] not in self.lut_tables:  # signed or wide codes
            return lut_reference(x[0], t["lut"])
        image = np.ascontiguousarray(x[0], np.uint8)
        n, h, w, c = image.shape
        tables = self.lut_tables[node["name"]]
        out = self._empty(node["name"], (n, h, w, c * tables.shape[2]), np.uint8)
        _kernels.lut(image, n * h * w, c, tables, tables.shape[0], tables.shape[2], out, self.threads)
        return out

    def _add_clip(self, node: dict, x: list, t: dict, values: dict) -> np.ndarray:
        a, b = x
        if not (a.dtype == b.dtype == np.uint8 and node["qmin"] == 0 and node["qmax"] <= 127) or node.get("shift"):
            return REFERENCE_OPS["add_clip"](node, x, t, values)
        out = np.add(a, b, out=self._empty(node["name"], np.broadcast_shapes(a.shape, b.shape), np.uint8))
        return np.minimum(out, node["qmax"], out=out)  # codes <= 127 each: the uint8 sum cannot wrap

    def _sum_pool(self, node: dict, x: list, t: dict, values: dict) -> np.ndarray:
        if x[0].dtype != np.uint8:
            return REFERENCE_OPS["sum_pool"](node, x, t, values)
        n, h, w, c = x[0].shape
        values["pool.count"] = h * w
        out = self._empty(node["name"], (n, c), np.int64)
        _kernels.sum_pool(np.ascontiguousarray(x[0]), n, h * w, c, out, self.threads)
        return out

    def ops(self) -> dict:
        """The ops this executor runs in C, in `run_graph`'s form; the rest are the reference's."""
        return {"conv": self._conv, "fused_conv": self._conv, "threshold": self._threshold, "lut": self._lut,
                "add_clip": self._add_clip, "sum_pool": self._sum_pool}

    def run(self, images: np.ndarray, reuse: bool = False, wrap=None) -> dict:
        """Every planned node's output; `wrap(fn)`, when given, wraps each op (the layer profile times them)."""
        ops = {**REFERENCE_OPS, **self.ops()}
        if wrap is not None:
            ops = {op: wrap(fn) for op, fn in ops.items()}
        with self._lock:
            self._reuse = reuse
            try:
                return run_graph(self.plan, images, ops, self._tensors)
            finally:
                self._reuse = False
