"""The slow, obvious integer executor: numpy, int64, one op at a time. The fast runtime and the
PyTorch fake-quant model are both checked against it."""
from __future__ import annotations

import numpy as np

from ..errors import InputError, ModelFileError


def lut_reference(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """image (N, H, W, C) uint8, lut (T, 256, d) with T = 1 (shared) or C -> codes (N, H, W, C*d)."""
    n, h, w, c = image.shape
    tables = np.broadcast_to(lut, (c,) + lut.shape[1:]) if lut.shape[0] == 1 else lut
    out = np.stack([tables[ch][image[..., ch]] for ch in range(c)], axis=3)  # (N, H, W, C, d)
    return out.reshape(n, h, w, c * lut.shape[2]).astype(np.int64)


def conv2d_reference(x: np.ndarray, weight: np.ndarray, stride: int, padding: int, groups: int = 1) -> np.ndarray:
    """Integer conv, NHWC codes x OHWI codes -> int64 (N, Ho, Wo, O), zero padding, via im2col.
    With `groups`, weight is (O, kh, kw, I / groups): group g's O / groups outputs read its inputs."""
    n, h, w, c = x.shape
    o, kh, kw, ci = weight.shape
    if ci * groups != c or o % groups:
        raise InputError(f"conv expects {ci * groups} input channels{f' in {groups} groups' if groups > 1 else ''}, "
                         f"got {c}")
    xp = np.pad(np.asarray(x, np.int64), ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    ho, wo = windows.shape[1:3]
    if groups > 1:  # each group's outputs over its own input channels, all groups in one product
        w = np.asarray(weight, np.int64).reshape(groups, o // groups, kh, kw, ci)
        out = np.einsum("nhwgcyx,goyxc->nhwgo", windows.reshape(n, ho, wo, groups, ci, kh, kw), w, optimize=True)
        return out.reshape(n, ho, wo, o)
    cols = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, kh * kw * c)
    return (cols @ np.asarray(weight, np.int64).reshape(o, -1).T).reshape(n, ho, wo, o)


def threshold_reference(acc: np.ndarray, direction: np.ndarray, thresholds: np.ndarray, qmin: int) -> np.ndarray:
    """code = qmin + #{k : direction * acc >= thresholds[:, k]}, channel last."""
    signed = np.asarray(acc, np.int64) * direction.astype(np.int64)
    return qmin + (signed[..., None] >= thresholds.astype(np.int64)).sum(-1)


def conv_chain(node, x, t, values):
    """A conv and what the runtime fused into it (`pixelq.runtime.fusion`), one step after the other:
    the lookup of the pixels ("lut"), the conv over codes shifted by `input_shift` (padded with the
    shift, then `offset` taken off), the thresholds, the residual add of input 1 (subsampled by
    `residual_stride`, zero channels appended, `residual_shift` taken off, clipped to
    [0, residual_qmax])."""
    codes = lut_reference(x[0], t["lut"]) if "lut" in t else x[0]
    shift, p = node.get("input_shift", 0), node["padding"]
    if shift:
        codes = np.pad(np.asarray(codes, np.int64) + shift, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=shift)
        p = 0
    out = conv2d_reference(codes, t["weight"], node["stride"], p, node.get("groups", 1))
    if "offset" in t:
        out = out - t["offset"]
    if "thresholds" in t:
        out = threshold_reference(out, t["direction"], t["thresholds"], node["qmin"])
    if node.get("residual_stride"):
        s = node["residual_stride"]
        shortcut = x[1][:, ::s, ::s]
        shortcut = np.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, out.shape[-1] - shortcut.shape[-1])))
        out = np.clip(out + shortcut - node.get("residual_shift", 0), 0, node["residual_qmax"])
    return out


def _quantize(node, x, t, values):
    """Round half up, as the thresholds (transforms.fold_batchnorm_into_thresholds) count."""
    return np.clip(np.floor(x[0] / node["step"] + 0.5), node["qmin"], node["qmax"]).astype(np.int64)


def _sum_pool(node, x, t, values):
    values["pool.count"] = x[0].shape[1] * x[0].shape[2]
    return x[0].sum((1, 2), dtype=np.int64)


def _linear_float(node, x, t, values):
    scale = np.float32(node["step"] / values["pool.count"])
    return (x[0].astype(np.float32) * scale) @ t["weight"].T + t["bias"]


def _subsample_pad(node, x, t, values):
    s = node["stride"]
    return np.pad(x[0][:, ::s, ::s, :], ((0, 0), (0, 0), (0, 0), (0, node["extra_channels"])))


def _max_pool(node, x, t, values):
    k, s = node["kernel"], node["stride"]
    return np.lib.stride_tricks.sliding_window_view(x[0], (k, k), axis=(1, 2))[:, ::s, ::s].max((-2, -1))


# op -> f(node, inputs, node's tensors, all values so far) -> output
REFERENCE_OPS = {
    "lut": lambda node, x, t, v: lut_reference(x[0], t["lut"]),
    "conv": conv_chain,
    "fused_conv": conv_chain,
    "affine": lambda node, x, t, v: x[0] * t["scale"] + t["bias"],
    "quantize": _quantize,
    "threshold": lambda node, x, t, v: threshold_reference(x[0], t["direction"], t["thresholds"], node["qmin"]),
    "add_clip": lambda node, x, t, v: np.clip(x[0].astype(np.int64) + x[1] - node.get("shift", 0), node["qmin"],
                                              node["qmax"]),
    "subsample_pad": _subsample_pad,
    "max_pool": _max_pool,
    "sum_pool": _sum_pool,
    "linear": lambda node, x, t, v: x[0] @ np.asarray(t["weight"], np.int64).T,
    "linear_float": _linear_float,
}


def node_tensors(model) -> list:
    """Each node's tensors by their short name, in node order."""
    return [{k: model.tensors[f"{node['name']}.{k}"] for k in node["tensors"]} for node in model.nodes]


def run_graph(model, images: np.ndarray, ops: "dict | None" = None, tensors: "list | None" = None) -> dict:
    """Every node's output for uint8 NHWC `images`, keyed by node name ("image" holds the input).
    `ops` replaces some of REFERENCE_OPS (the fast executor passes its C kernels); `tensors`, when
    given, is node_tensors(model), gathered once by a caller that runs the graph many times."""
    table = {**REFERENCE_OPS, **(ops or {})}
    values = {"image": images}
    for node, t in zip(model.nodes, tensors or node_tensors(model)):
        if node["op"] not in table:
            raise ModelFileError(f"unknown op {node['op']!r} in the model file; it needs a newer pixelq")
        values[node["name"]] = table[node["op"]](node, [values[i] for i in node["inputs"]], t, values)
    return values


def run_reference(model, images: np.ndarray) -> dict:
    """run_graph with the numpy reference for every op."""
    return run_graph(model, images)
