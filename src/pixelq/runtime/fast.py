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
from . import clib, fusion
from .reference import REFERENCE_OPS, lut_reference, node_tensors, threshold_reference


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
    return clib.dot_isa(isa) != "avx2" or 2 * top * int(np.abs(weight).max(initial=0)) <= 32767


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
    call: "clib.Call | None" = None  # the kernel with its weights, geometry and thresholds set
    pad: "np.ndarray | None" = None  # shifted input: the (C,) bytes its border holds
    fused: bool = False  # thresholds applied inside: uint8 codes out, else int32 accumulators
    fields: "dict | None" = None  # the kernel's fixed ConvParams fields (`call` holds them too)


class FastExecutor:
    """Runs `fusion.plan(model)` (convs fused with their lookup, thresholds and residual add, signed
    inputs shifted; with `fuse=False` every node kept) with the convs and thresholds in libpixelq,
    weights laid out once here for the kernel each conv runs on. `run(images)` returns every planned
    node's output like run_reference. Its convs run with the instruction set `isa` (default: the best
    this CPU has, `available_isas`).

    `run(images, reuse=True)` writes the convs' outputs into arrays kept from the previous call of
    the same batch shape (for `Runtime.logits`, which keeps only the final output): fresh arrays
    this size come from mmap, and their page faults cost about a third of a network's time. The
    returned intermediates are then overwritten by the next reusing call. Calls hold a lock.
    """

    def __init__(self, model, threads: "int | None" = None, fuse: bool = True, isa: "str | None" = None):
        if not clib.available():
            raise ConfigError("the C kernels are not built; reinstall pixelq with a C compiler present")
        self.model, self.threads = model, threads or os.cpu_count() or 1
        self.isa = choose_isa(isa)
        # the plan a model file stores (made by the same transforms at export), else made here
        self.plan = model.plan if fuse and model.plan is not None else fusion.plan(model, fuse)
        self.convs = {node["name"]: self._prepare(node) for node in self.plan.nodes if node["op"] in fusion.CONV_OPS}
        # the lookups and thresholds whose codes are bytes run in C, each prepared here
        self.lookups, self.thresholds = {}, {}
        for node in self.plan.nodes:
            if node["op"] in ("lut", "threshold") and 0 <= node["qmin"] <= node["qmax"] <= 255:
                prepare = self._prepare_lookup if node["op"] == "lut" else self._prepare_threshold
                (self.lookups if node["op"] == "lut" else self.thresholds)[node["name"]] = prepare(node)
        self._calls = {name: clib.Call(clib.LookupParams, **fields) for name, fields in self.lookups.items()}
        self._calls.update({name: clib.Call(clib.ThresholdParams, **f) for name, f in self.thresholds.items()})
        self._pool = clib.Call(clib.PoolParams, threads=self.threads)
        self._workspace, self._reuse, self._lock = {}, False, threading.Lock()
        self._tensors = node_tensors(self.plan)
        self.net, self._values = self._build_net()

    def _prepare(self, node: dict) -> _Conv:
        t = {k: self.plan.tensors[f"{node['name']}.{k}"] for k in node["tensors"]}
        if not fusion.has_kernel(node):
            return _Conv("reference")  # codes wider than a byte, or groups
        weight, shift = t["weight"], node.get("input_shift", 0)
        k, o = node["kernel"], node["out_channels"]
        # what every kernel takes: geometry (the padding is the shifted input's, made in _shifted_input),
        # thresholds, threads, instruction set
        fixed = dict(kernel_h=k, kernel_w=k, stride=node["stride"], pad=0 if shift else node["padding"],
                     out_channels=o, out_channels_padded=padded_channels(o), threads=self.threads, isa=self.isa)
        if "thresholds" in t:
            direction, thresholds = pad_thresholds(t["direction"], t["thresholds"])
            fixed.update(direction=direction, thresholds=thresholds, levels=thresholds.shape[0], qmin=node["qmin"])
        if node.get("residual_stride"):
            fixed.update(residual_stride=node["residual_stride"], residual_qmax=node["residual_qmax"],
                         residual_shift=node.get("residual_shift", 0))

        def planes() -> dict:  # the bit-plane kernels' weight fields
            return dict(weights=pack_conv_weight(weight, node["weight_lowest"], node["weight_stride"], node["weight_bits"]),
                        weight_bits=node["weight_bits"], weight_lowest=node["weight_lowest"],
                        weight_stride=node["weight_stride"], input_planes=_planes(node))

        def prepared(kind: str, pad=None, **kernel) -> _Conv:
            fields = dict(kind=kind, **fixed, **kernel)
            return _Conv(kind, clib.Call(clib.ConvParams, **fields), pad, "thresholds" in t, fields)

        pad = np.full(node["in_channels"], shift, np.uint8) if shift else None
        if "lut" in t:
            colours = node["in_channels"] // t["lut"].shape[2]
            table = fusion.conv_table(node, self.plan.tensors)
            if table is not None:
                return prepared("table", weights=table, table_entry_bytes=table.itemsize, channels=colours)
            bits, sums = lut_plane_bits(t["lut"] + shift, _planes(node))
            pad = fusion.signed_zero(t["lut"], colours) if shift else None  # pixels whose codes are 0
            return prepared("lookup", pad, **planes(), lookup_bits=bits, lookup_sums=sums, lookup_tables=bits.shape[0],
                            lookup_depth=t["lut"].shape[2], channels=colours)
        if dot_conv_fits(node, weight, self.isa):
            return prepared("dot", pad, weights=pack_dot_weight(weight), channels=node["in_channels"])
        return prepared("planes", pad, **planes(), channels=node["in_channels"])

    def _net_step(self, node: dict, inputs: list) -> "tuple | None":
        """(op, fields, output type) of node's step in a libpixelq net, given its inputs' types
        ("u8", "i32", "i64"); None for a node the net cannot run (the reference runs it)."""
        op, name = node["op"], node["name"]
        if op in fusion.CONV_OPS and self.convs[name].kind != "reference" and set(inputs) == {"u8"}:
            conv, shift = self.convs[name], node.get("input_shift", 0)
            offset = self.plan.tensors.get(f"{name}.offset") if not conv.fused else None
            return "conv", dict(conv=conv.fields, input_shift=shift, shift_padding=node["padding"] if shift else 0,
                                shift_border=conv.pad if shift else None,
                                offset=None if offset is None else np.ascontiguousarray(offset, np.int32)), \
                ("u8" if conv.fused else "i32")
        if op == "lut" and name in self.lookups and inputs == ["u8"]:
            return "lookup", dict(lookup=self.lookups[name]), "u8"
        if op == "threshold" and name in self.thresholds and inputs == ["i32"]:
            return "threshold", dict(threshold=self.thresholds[name]), "u8"
        if op == "add_clip" and inputs == ["u8", "u8"] and 0 <= node["qmin"] <= node["qmax"] <= 255 \
                and 0 <= node.get("shift", 0) <= 255:
            return "add_clip", dict(qmin=node["qmin"], qmax=node["qmax"], shift=node.get("shift", 0)), "u8"
        if op == "subsample_pad" and inputs == ["u8"]:
            return "subsample_pad", dict(stride=node["stride"], extra_channels=node["extra_channels"]), "u8"
        if op == "max_pool" and inputs == ["u8"]:
            return "max_pool", dict(kernel=node["kernel"], stride=node["stride"]), "u8"
        if op == "sum_pool" and inputs == ["u8"]:
            return "sum_pool", dict(threads=self.threads), "i64"
        weight = self.plan.tensors.get(f"{name}.weight") if op == "linear" else None
        if weight is not None and inputs == ["i64"] and -2**31 <= weight.min(initial=0) <= weight.max(initial=0) < 2**31:
            return "linear", dict(weight=np.ascontiguousarray(weight, np.int32), rows=weight.shape[0],
                                  cols=weight.shape[1]), "i64"
        return None

    def _build_net(self) -> tuple:
        """(a libpixelq net of the plan's longest prefix of nodes it runs, {node name: its value
        number}); the rest (e.g. a float last layer) run one by one on the prefix's values.
        (None, {}) where the first node has no C step."""
        types, steps = {"image": "u8"}, []
        for node in self.plan.nodes:
            step = self._net_step(node, [types.get(i) for i in node["inputs"]])
            if step is None:
                break
            types[node["name"]] = step[2]
            steps.append(step)
        if not steps:
            return None, {}
        net, values = clib.Net(), {"image": 0}
        for node, (op, fields, _) in zip(self.plan.nodes, steps):
            values[node["name"]] = net.add(op, [values[i] for i in node["inputs"]], **fields)
        return net, values

    def kernels(self) -> dict:
        """{file node name: the kernel it runs on}, as `pixelq inspect --isa` shows it: each conv's,
        and a threshold's the plan runs as a byte lookup (`fusion.requantize_as_lookup`)."""
        names = {"table": "table sums", "lookup": "bit-planes via lookup",
                 "reference": "numpy reference (grouped, or codes wider than a byte)"}
        kernels = {}
        for node in self.plan.nodes:
            conv = self.convs.get(node["name"])
            if node["op"] == "lut" and self.model.node(node["name"])["op"] == "threshold":
                kernels[node["name"]] = "byte lookup" if node["name"] in self.lookups else "numpy reference lookup"
            if conv is None:
                continue
            if conv.kind == "dot":
                kind = f"dot product ({clib.dot_isa(self.isa)})"
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
        if node.get("input_shift"):
            image = self._shifted_input(node, conv, image)
        image = np.ascontiguousarray(image, np.uint8)
        n, h, w = image.shape[:3]
        p = 0 if node.get("input_shift") else node["padding"]
        k, s = node["kernel"], node["stride"]
        shape = (n, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, node["out_channels"])
        out = self._empty(node["name"], shape, np.uint8 if conv.fused else np.int32)
        residual = {}
        if node.get("residual_stride"):
            shortcut = np.ascontiguousarray(x[1], np.uint8)
            residual = dict(residual=shortcut, residual_height=shortcut.shape[1], residual_width=shortcut.shape[2],
                            residual_channels=shortcut.shape[3])
        conv.call(input=image, batch=n, height=h, width=w, out=out, **residual)
        if "offset" in t and not conv.fused:
            np.subtract(out, t["offset"], out=out)
        return out

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

    def _prepare_lookup(self, node: dict) -> dict:
        tables = np.ascontiguousarray(self.plan.tensors[f"{node['name']}.lut"], np.uint8)
        return dict(tables=tables, tables_count=tables.shape[0], depth=tables.shape[2], threads=self.threads)

    def _prepare_threshold(self, node: dict) -> dict:
        thresholds = np.ascontiguousarray(self.plan.tensors[f"{node['name']}.thresholds"], np.int32)
        return dict(direction=np.ascontiguousarray(self.plan.tensors[f"{node['name']}.direction"], np.int8),
                    thresholds=thresholds, levels=thresholds.shape[1], qmin=node["qmin"], threads=self.threads)

    def _threshold(self, node: dict, x: list, t: dict, values: dict) -> np.ndarray:
        acc = np.ascontiguousarray(x[0], np.int32)
        if node["name"] not in self.thresholds:  # signed or wide codes
            return threshold_reference(acc, t["direction"], t["thresholds"], node["qmin"])
        o = acc.shape[-1]
        out = self._empty(node["name"], acc.shape, np.uint8)
        self._calls[node["name"]](acc=acc, positions=acc.size // o, channels=o, out=out)
        return out

    def _lut(self, node: dict, x: list, t: dict, values: dict) -> np.ndarray:
        if node["name"] not in self.lookups:  # signed or wide codes
            return lut_reference(x[0], t["lut"])
        image = np.ascontiguousarray(x[0], np.uint8)
        n, h, w, c = image.shape
        out = self._empty(node["name"], (n, h, w, c * self.lookups[node["name"]]["depth"]), np.uint8)
        self._calls[node["name"]](image=image, positions=n * h * w, channels=c, out=out)
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
        self._pool(codes=np.ascontiguousarray(x[0]), batch=n, positions=h * w, channels=c, out=out)
        return out

    def ops(self) -> dict:
        """The ops this executor runs in C, in `run_graph`'s form; the rest are the reference's."""
        return {"conv": self._conv, "fused_conv": self._conv, "threshold": self._threshold, "lut": self._lut,
                "add_clip": self._add_clip, "sum_pool": self._sum_pool}

    def run(self, images: np.ndarray, reuse: bool = False, wrap=None) -> dict:
        """Every planned node's output ("pool.count": the positions the sum pool summed); `wrap(fn)`,
        when given, wraps each op (the layer profile times them), the nodes then run one by one."""
        with self._lock:
            self._reuse = reuse
            try:
                return self._run(images, None, wrap)
            finally:
                self._reuse = False

    def output(self, images: np.ndarray) -> tuple:
        """(a copy of the model's output, the positions its sum pool summed) for `images`, as
        Runtime.logits takes them: only that value is read back from the net."""
        out = self.model.meta["output"]
        with self._lock:
            self._reuse = True
            try:
                values = self._run(images, out, None)
                return np.array(values[out]), values["pool.count"]
            finally:
                self._reuse = False

    def _run(self, images: np.ndarray, only: "str | None", wrap) -> dict:
        """The values of a run: the net's prefix (all of its values, or with `only` just that one and
        what the nodes after the net read; views of the net's buffers when reusing, else copies),
        then the remaining nodes one by one. With `wrap`, every node one by one."""
        ops = {**REFERENCE_OPS, **self.ops()}
        nodes, tensors, values = self.plan.nodes, self._tensors, {"image": images}
        if wrap is not None:
            ops = {op: wrap(fn) for op, fn in ops.items()}
        elif self.net is not None:
            self.net.run(np.ascontiguousarray(images))
            done = len(self._values) - 1  # the net ran the first `done` nodes
            nodes, tensors = nodes[done:], tensors[done:]
            wanted = self._values if only is None else {only, *(i for node in nodes for i in node["inputs"])}
            for name in wanted:
                if name in self._values and name != "image":
                    value = self.net.value(self._values[name])
                    values[name] = value if self._reuse else np.array(value)
            values["pool.count"] = self.net.pool_count()
        for node, t in zip(nodes, tensors):
            values[node["name"]] = ops[node["op"]](node, [values[i] for i in node["inputs"]], t, values)
        return values
