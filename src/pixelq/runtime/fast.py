"""The fast executor: the same graph as `reference.run_reference`, with convs and thresholds in C.

Weights are re-laid out once at load into the kernels' window-row words (see `pack_conv_weight`
and csrc/kernels.c), output channels innermost and padded to vectors of 8. Activations stay uint8
codes between layers; each conv call packs its input into bit-planes itself. The first conv of a
model that looks its pixels up (pixel embedding, int8, thermometer) runs as table sums instead
(`lut_conv_table`), straight from the pixels. Signed codes (an int8 first layer's) that no table
holds run shifted to unsigned (`_shifted_input`).
"""
from __future__ import annotations

import os
import threading
from collections import Counter

import numpy as np

from ..errors import ConfigError, ExportError
from .reference import REFERENCE_OPS, conv2d_reference, lut_reference, node_tensors, run_graph, threshold_reference

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


def lut_conv_table(weight: np.ndarray, lut: np.ndarray) -> "np.ndarray | None":
    """The first conv over a lookup as tables: weight codes (O, kh, kw, C * d), lookup codes (T, 256, d)
    -> (256, kh * kw * C, 16), entry (value, tap, colour) = the 16 (padded) output channels' sums of
    weight x code over that colour's d codes (value-major: see kernels.c); int8 where the entries
    fit, else int16 (an int8 first layer's (pixel - 128) x -1 reaches +128). None when O > 16 or
    a window's sums do not fit the kernel's int16 accumulators."""
    o, kh, kw, cd = weight.shape
    t, _, d = lut.shape
    c = cd // d
    if o > 16 or c * d != cd or t not in (1, c):
        return None
    codes = np.broadcast_to(np.asarray(lut, np.int64), (c, 256, d))
    table = np.einsum("oyxcj,cvj->yxcvo", np.asarray(weight, np.int64).reshape(o, kh, kw, c, d), codes)
    if np.abs(table).max(initial=0) * kh * kw * c > 32000:  # int16 sums, with room for the int16 threshold clamp
        return None
    narrow = table.min(initial=0) >= -128 and table.max(initial=0) <= 127
    out = np.zeros((256, kh * kw * c, 16), np.int8 if narrow else np.int16)
    out[..., :o] = table.reshape(kh * kw * c, 256, o).transpose(1, 0, 2)
    return out


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


def _signed_zero(lut: np.ndarray, colours: int) -> "np.ndarray | None":
    """(colours,) uint8: for each image colour, a pixel value its lookup table maps to codes all 0
    (the zero padding of the codes, as a pixel); None where a table has none."""
    zero = (np.asarray(lut) == 0).all(-1)  # (T, 256)
    if not zero.any(1).all():
        return None
    return np.broadcast_to(zero.argmax(1).astype(np.uint8), (colours,)).copy()


def _planes(conv: dict) -> int:
    """Bit-planes of a conv's input codes, signed ones shifted to start at 0."""
    lo, hi = conv["input_range"]
    return max(1, int(hi - min(lo, 0)).bit_length())


class FastExecutor:
    """Prepares packed weights once; `run(images)` returns every node's output like run_reference.
    Its convs run with the instruction set `isa` (default: the best this CPU has, `available_isas`).

    `run(images, reuse=True)` writes the convs' outputs into arrays kept from the previous call of
    the same batch shape (for `Runtime.logits`, which keeps only the final output): fresh arrays
    this size come from mmap, and their page faults cost about a third of a network's time. The
    returned intermediates are then overwritten by the next reusing call. Calls hold a lock.
    """

    def __init__(self, model, threads: "int | None" = None, fuse: bool = True, isa: "str | None" = None):
        if _kernels is None:
            raise ExportError("the C kernels are not built; reinstall pixelq with a C compiler present")
        self.model, self.threads, self.fuse = model, threads or os.cpu_count() or 1, fuse
        self.isa = choose_isa(isa)
        self.packed, self.lut_convs, self.fused, self.thresholds, self.lut_tables, self._codes = {}, {}, {}, {}, {}, {}
        self.shifted = {}  # conv name -> (shift, its (O,) share of the sums, the (C,) byte its padding holds)
        self.readers = Counter(name for node in model.nodes for name in node["inputs"])
        self.by_name = by_name = {node["name"]: node for node in model.nodes}
        for node in model.nodes:
            name = node["name"]
            if node["op"] == "lut" and 0 <= node["qmin"] <= node["qmax"] <= 255:
                self.lut_tables[name] = np.ascontiguousarray(model.tensors[f"{name}.lut"], np.uint8)
            shift = max(0, -node["input_range"][0]) if node["op"] == "conv" else 0
            if node["op"] == "conv" and node["input_range"][1] + shift <= 255:
                weight = model.tensors[f"{name}.weight"]
                self.packed[name] = pack_conv_weight(weight, node["weight_lowest"], node["weight_stride"],
                                                     node["weight_bits"])
                source = by_name.get(node["inputs"][0])
                lut = model.tensors[f"{source['name']}.lut"] if source is not None and source["op"] == "lut" else None
                pad = _signed_zero(lut, source["in_channels"]) if shift and lut is not None else None  # pixels
                if fuse and lut is not None and self.readers[source["name"]] == 1 and node["in_channels"] <= 64 \
                        and (pad is not None or not shift):  # the lookup runs inside this conv, as its packing
                    self.lut_convs[name] = (source, *lut_plane_bits(lut + shift, _planes(node)))
                if shift:  # see _shifted_input
                    share = (shift * np.asarray(weight, np.int64).reshape(len(weight), -1).sum(1)).astype(np.int32)
                    if name not in self.lut_convs:
                        pad = np.full(node["in_channels"], shift, np.uint8)
                    self.shifted[name] = (shift, share, pad)
            conv = node["inputs"][0]
            if node["op"] == "threshold" and 0 <= node["qmin"] and node["qmax"] <= 255 and conv in self.packed:
                self.fused[conv] = node  # conv + threshold run as one kernel
        self.residual, self.skipped = self._plan_residual_adds() if fuse else ({}, set())
        # A lookup conv with thresholds and at most 16 channels runs as table sums (no bit-planes).
        self.table_convs = {}
        for name, (lut, _, _) in self.lut_convs.items():
            table = lut_conv_table(model.tensors[f"{name}.weight"], model.tensors[f"{lut['name']}.lut"])
            if name in self.fused and name not in self.residual and table is not None:
                self.table_convs[name] = table
                self.shifted.pop(name, None)  # the tables hold signed codes' sums as they are
        # Convs whose bit widths make dot products cheaper than bit-planes (lookup convs keep their tables).
        self.dot_convs = {name: pack_dot_weight(model.tensors[f"{name}.weight"]) for name in self.packed
                          if name not in self.lut_convs
                          and dot_conv_fits(by_name[name], model.tensors[f"{name}.weight"], self.isa)}
        for conv, node in self.fused.items():
            direction, thresholds = (model.tensors[f"{node['name']}.{k}"] for k in ("direction", "thresholds"))
            if conv in self.shifted:  # dir * (acc + share) >= thr + dir * share, in int64: a threshold at the
                # int32 limits (never or always passed) must stay there, not wrap around
                shifted = np.asarray(thresholds, np.int64) + (direction.astype(np.int64) * self.shifted[conv][1])[:, None]
                thresholds = np.clip(shifted, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
            self.thresholds[node["name"]] = pad_thresholds(direction, thresholds)
        self._workspace, self._reuse, self._lock = {}, False, threading.Lock()
        self._tensors = node_tensors(model)

    def conv_kernels(self) -> dict:
        """{conv name: the kernel it runs on}, as `pixelq inspect --isa` shows it."""
        kernels = {}
        for node in self.model.nodes:
            name = node["name"]
            if node["op"] != "conv":
                continue
            if name in self.table_convs:
                kernels[name] = "table sums"
            elif name in self.lut_convs:
                kernels[name] = "bit-planes via lookup"
            elif name in self.dot_convs:
                kernels[name] = f"dot product ({_kernels.dot_isa(self.isa)})"
            elif name in self.packed:
                kernels[name] = f"bit-planes ({_planes(node)}x{node['weight_bits']} popcount passes)"
            else:
                kernels[name] = "numpy reference (codes wider than a byte)"
        return kernels

    def _empty(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """An output array for node `name`: the one kept from the last call when reusing."""
        if not self._reuse:
            return np.empty(shape, dtype)
        out = self._workspace.get(name)
        if out is None or out.shape != shape or out.dtype != dtype:
            out = self._workspace[name] = np.empty(shape, dtype)
        return out

    def _plan_residual_adds(self) -> tuple:
        """Residual adds the conv before them takes over: {conv name: (add node, shortcut source,
        subsampling stride)}, and the subsample_pad nodes that then need not run. Fused when the add
        reads a fused conv + threshold that nothing else reads, and a shortcut that is ready before
        that conv runs: a node computed earlier, or a subsample_pad of one."""
        order = {node["name"]: i for i, node in enumerate(self.model.nodes)}
        order["image"] = -1
        readers, by_name = self.readers, self.by_name
        residual, skipped = {}, set()
        for node in self.model.nodes:
            if node["op"] != "add_clip" or node["qmin"] != 0 or node["qmax"] > 255:
                continue
            branch, shortcut = (by_name.get(i) for i in node["inputs"])
            if branch is None or branch["op"] != "threshold" or readers[branch["name"]] != 1:
                continue
            conv = branch["inputs"][0]
            if self.fused.get(conv) is not branch or conv in self.shifted:
                continue
            source, stride = node["inputs"][1], 1
            if shortcut is not None and shortcut["op"] == "subsample_pad" and readers[source] == 1:
                source, stride = shortcut["inputs"][0], shortcut["stride"]
                skipped.add(shortcut["name"])
            if order[source] >= order[conv]:
                skipped.discard(node["inputs"][1])
                continue
            residual[conv] = (node, source, stride)
        return residual, skipped

    def _conv(self, node: dict, x: list, t: dict, values: dict) -> "np.ndarray | None":
        """int32 accumulators; or, fused with the threshold node that reads them, that node's codes
        (kept for `_threshold`; the accumulators are then never materialised and this returns None)."""
        x = x[0]
        name = node["name"]
        if name in self.lut_convs:  # x is None: the lookup was left to this conv
            lut, bits, sums = self.lut_convs[name]
            x = values[lut["inputs"][0]]
        elif name not in self.packed:  # wide input codes: the reference handles them
            return conv2d_reference(x, t["weight"], node["stride"], node["padding"]).astype(np.int32)
        n, h, w, c = x.shape
        k, s, p, o = node["kernel"], node["stride"], node["padding"], node["out_channels"]
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if name in self.shifted:
            x, h, w, p = self._shifted_input(node, x), h + 2 * p, w + 2 * p, 0
        x = np.ascontiguousarray(x, np.uint8)
        weights = (self.packed[name], k, k, node["weight_bits"], o, padded_channels(o), node["weight_lowest"],
                   node["weight_stride"], s, p, ho, wo)
        thr = self.fused.get(name) if self.fuse else None
        if name in self.table_convs and thr is not None:
            codes = self._empty(name, (n, ho, wo, o), np.uint8)
            direction, thresholds = self.thresholds[thr["name"]]
            _kernels.table_conv(x, n, h, w, c, self.table_convs[name], k, k, o, padded_channels(o), s, p, ho, wo, codes,
                                self.threads, direction, thresholds, thresholds.shape[0], thr["qmin"],
                                self.table_convs[name].itemsize, isa=self.isa)
            self._codes[thr["name"]] = codes
            return None
        if name in self.lut_convs:
            call, args = _kernels.lut_conv, (x, n, h, w, c, bits, sums, bits.shape[0], lut["d"], bits.shape[2], *weights)
        elif name in self.dot_convs:
            call, args = _kernels.dot_conv, (x, n, h, w, c, self.dot_convs[name], k, k, o, padded_channels(o), s, p, ho, wo)
        else:
            call, args = _kernels.conv, (x, n, h, w, c, _planes(node), *weights)
        if thr is None:
            out = self._empty(name, (n, ho, wo, o), np.int32)
            call(*args, out, self.threads, isa=self.isa)
            if name in self.shifted:
                np.subtract(out, self.shifted[name][1], out=out)
            return out
        codes = self._empty(name, (n, ho, wo, o), np.uint8)
        direction, thresholds = self.thresholds[thr["name"]]
        fused = (codes, self.threads, direction, thresholds, thresholds.shape[0], thr["qmin"])
        if name in self.residual:  # the block's residual add too: the codes are the add node's
            add, source, stride = self.residual[name]
            shortcut = np.ascontiguousarray(values[source], np.uint8)
            call(*args, *fused, shortcut, *shortcut.shape[1:], stride, add["qmax"], isa=self.isa)
            self._codes[add["name"]] = codes
        else:
            call(*args, *fused, isa=self.isa)
            self._codes[thr["name"]] = codes
        return None

    def _shifted_input(self, node: dict, x: np.ndarray) -> np.ndarray:
        """Signed input codes spanning at most a byte (an int8 first layer's pixel - 128) run shifted to
        unsigned, padded here with the shifted code of 0, so every window (border ones too) sums the
        shift x all its weights: one constant per channel, taken off the accumulators or folded into
        the thresholds. A lookup conv's tables were shifted at load: it pads the pixels with a value
        whose codes are 0; another conv shifts its codes here. -> (N, H + 2p, W + 2p, C) uint8."""
        shift, _, pad = self.shifted[node["name"]]
        n, h, w, c = x.shape
        p = node["padding"]
        out = self._empty(node["name"] + ".shifted", (n, h + 2 * p, w + 2 * p, c), np.uint8)
        out[:, :p], out[:, h + p:], out[:, :, :p], out[:, :, w + p:] = pad, pad, pad, pad
        inside = out[:, p:h + p, p:w + p]
        if node["name"] in self.lut_convs:
            inside[...] = x
        else:
            np.add(x, shift, out=inside, casting="unsafe")
        return out

    def _threshold(self, node: dict, x: list, t: dict, values: dict) -> "np.ndarray | None":
        if node["name"] in self._codes:
            return self._codes.pop(node["name"])
        if x[0] is None:  # fused into a residual add: its codes were never materialised
            return None
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

    def _lut(self, node: dict, x: list, t: dict, values: dict) -> "np.ndarray | None":
        if any(lut is node for lut, _, _ in self.lut_convs.values()):
            return None  # looked up inside the conv that reads it
        if node["name"] not in self.lut_tables:  # signed or wide codes
            return lut_reference(x[0], t["lut"])
        image = np.ascontiguousarray(x[0], np.uint8)
        n, h, w, c = image.shape
        tables = self.lut_tables[node["name"]]
        out = self._empty(node["name"], (n, h, w, c * tables.shape[2]), np.uint8)
        _kernels.lut(image, n * h * w, c, tables, tables.shape[0], tables.shape[2], out, self.threads)
        return out

    def _add_clip(self, node: dict, x: list, t: dict, values: dict) -> np.ndarray:
        if node["name"] in self._codes:
            return self._codes.pop(node["name"])
        a, b = x
        if not (a.dtype == b.dtype == np.uint8 and node["qmin"] == 0 and node["qmax"] <= 127):
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
        return {"conv": self._conv, "threshold": self._threshold, "lut": self._lut, "add_clip": self._add_clip,
                "subsample_pad": self._subsample_pad, "sum_pool": self._sum_pool}

    def _subsample_pad(self, node: dict, x: list, t: dict, values: dict) -> "np.ndarray | None":
        return None if node["name"] in self.skipped else REFERENCE_OPS["subsample_pad"](node, x, t, values)

    def run(self, images: np.ndarray, reuse: bool = False, wrap=None) -> dict:
        """Every node's output; `wrap(fn)`, when given, wraps each op (the layer profile times them)."""
        ops = {**REFERENCE_OPS, **self.ops()}
        if wrap is not None:
            ops = {op: wrap(fn) for op, fn in ops.items()}
        with self._lock:
            self._reuse = reuse
            try:
                return run_graph(self.model, images, ops, self._tensors)
            finally:
                self._reuse = False
