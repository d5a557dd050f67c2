"""The fast executor: the same graph as `reference.run_reference`, with convs and thresholds in C.

Weights are re-laid out once at load: bit-planes of u = (code - lowest) / stride, packed 64 input
channels per uint64 word, stored (kh, kw, planes, words, out) so the C loop runs over output
channels. Activations stay uint8 codes between layers and are packed into planes per conv.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import ExportError
from .reference import conv2d_reference, lut_reference, run_graph, threshold_reference

try:
    from . import _kernels
except ImportError:  # built without a C compiler: the engine falls back to the reference executor
    _kernels = None

def kernels_available() -> bool:
    return _kernels is not None


def words(channels: int) -> int:
    return (channels + 63) // 64


def pack_channel_bits(bits: np.ndarray) -> np.ndarray:
    """(..., C) of 0/1 -> (..., words(C)) uint64, channel c at bit c % 64 of word c // 64."""
    c = bits.shape[-1]
    padded = np.zeros(bits.shape[:-1] + (words(c) * 64,), np.uint8)
    padded[..., :c] = bits
    packed = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8")


def pack_conv_weight(codes: np.ndarray, lowest: int, stride: int, bits: int) -> np.ndarray:
    """Integer weight codes (O, kh, kw, I) -> bit-planes (kh, kw, bits, words(I), O) uint64."""
    u = (codes.astype(np.int64) - lowest) // stride
    planes = np.stack([(u >> j) & 1 for j in range(bits)], axis=3)  # (O, kh, kw, J, I)
    packed = pack_channel_bits(planes.astype(np.uint8))  # (O, kh, kw, J, Wd)
    return np.ascontiguousarray(packed.transpose(1, 2, 3, 4, 0))


class FastExecutor:
    """Prepares packed weights once; `run(images)` returns every node's output like run_reference."""

    def __init__(self, model, threads: "int | None" = None, fuse: bool = True):
        if _kernels is None:
            raise ExportError("the C kernels are not built; reinstall pixelq with a C compiler present")
        self.model, self.threads, self.fuse = model, threads or os.cpu_count() or 1, fuse
        self.packed, self.fused, self._codes = {}, {}, {}
        for node in model.nodes:
            if node["op"] == "conv" and node["input_range"][0] >= 0 and node["input_range"][1] <= 255:
                w = model.tensors[f"{node['name']}.weight"]
                self.packed[node["name"]] = pack_conv_weight(w, node["weight_lowest"], node["weight_stride"],
                                                             node["weight_bits"])
            if node["op"] == "threshold" and 0 <= node["qmin"] and node["qmax"] <= 255 and node["inputs"][0] in self.packed:
                self.fused[node["inputs"][0]] = node  # conv + threshold run as one kernel

    def _conv(self, node: dict, x: list, t: dict, values: dict) -> "np.ndarray | None":
        """int32 accumulators; or, fused with the threshold node that reads them, that node's codes
        (kept for `_threshold`; the accumulators are then never materialised and this returns None)."""
        x = x[0]
        name = node["name"]
        if name not in self.packed:  # signed or wide input codes: the reference handles them
            return conv2d_reference(x, t["weight"], node["stride"], node["padding"]).astype(np.int32)
        n, h, w, c = x.shape
        planes_in = max(1, int(node["input_range"][1]).bit_length())
        wd = words(c)
        planes = np.empty((n, h, w, planes_in, wd), np.uint64)
        _kernels.pack_planes(np.ascontiguousarray(x, np.uint8), n * h * w, c, planes_in, wd, planes, self.threads)
        k, s, p = node["kernel"], node["stride"], node["padding"]
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        args = (planes, n, h, w, planes_in, wd, self.packed[name], k, k, node["weight_bits"], node["out_channels"],
                node["weight_lowest"], node["weight_stride"], s, p, ho, wo)
        thr = self.fused.get(name) if self.fuse else None
        if thr is None:
            out = np.empty((n, ho, wo, node["out_channels"]), np.int32)
            _kernels.conv(*args, out, self.threads)
            return out
        tt = self.model.tensors
        codes = np.empty((n, ho, wo, node["out_channels"]), np.uint8)
        thresholds = np.ascontiguousarray(tt[f"{thr['name']}.thresholds"], np.int32)
        _kernels.conv(*args, codes, self.threads, np.ascontiguousarray(tt[f"{thr['name']}.direction"], np.int8),
                      thresholds, thresholds.shape[1], thr["qmin"])
        self._codes[thr["name"]] = codes
        return None

    def _threshold(self, node: dict, x: list, t: dict, values: dict) -> np.ndarray:
        if node["name"] in self._codes:
            return self._codes.pop(node["name"])
        acc = np.ascontiguousarray(x[0], np.int32)
        direction = np.ascontiguousarray(t["direction"], np.int8)
        thresholds = np.ascontiguousarray(t["thresholds"], np.int32)
        if node["qmin"] < 0 or node["qmax"] > 255:
            return threshold_reference(acc, direction, thresholds, node["qmin"])
        o = acc.shape[-1]
        out = np.empty(acc.shape, np.uint8)
        _kernels.threshold(acc, acc.size // o, o, direction, thresholds, thresholds.shape[1], node["qmin"], out,
                           self.threads)
        return out

    def _lut(self, node: dict, x: list, t: dict, values: dict) -> np.ndarray:
        codes = lut_reference(x[0], t["lut"])
        return codes.astype(np.uint8) if node["qmin"] >= 0 and node["qmax"] <= 255 else codes

    def ops(self) -> dict:
        """The ops this executor runs in C, in `run_graph`'s form; the rest are the reference's."""
        return {"conv": self._conv, "threshold": self._threshold, "lut": self._lut}

    def run(self, images: np.ndarray) -> dict:
        return run_graph(self.model, images, self.ops())
