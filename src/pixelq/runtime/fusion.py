"""The fast runtime's plan as graph-to-graph transforms: what its kernels run as one call.

`plan(model)` applies, in order:
  requantize_as_lookup a threshold on byte codes (a ResNet's block input requantized for its convs)
                       -> lut: one table lookup per code instead of the comparisons
  unsign_residual_branch a threshold of signed codes read only by a residual add (a ResNet's
                       `signed_residual` branch) -> the codes + n, a byte, the add taking n off
  fuse_lookup          lut -> conv (the conv alone reads the lookup): the conv packs its bit-planes
                       straight from the pixels (a `fused_conv` with the lut tensor)
  fuse_threshold       conv -> threshold: the conv kernel writes codes, never the accumulators
  fuse_residual_add    conv + threshold -> add_clip (with a shortcut's subsample_pad): the kernel
                       adds the shortcut's codes too (and takes the add's shift off)
  mark_table_sums      a first conv over a lookup whose sums per (tap, colour, pixel value) the
                       table kernel holds (`lut_conv_table`) is marked `table_sums`: it runs so
                       (libpixelq builds the tables, checking that they do hold them)
  shift_signed_inputs  a conv over signed codes spanning at most a byte (an int8 first layer's
                       pixel - 128) runs on codes + shift, padded with the shift; the shift's share
                       of each sum (one constant per channel) comes off the thresholds or the
                       accumulators (`offset`); a conv not fused with anything becomes a
                       `fused_conv` for it
A fused node (op `fused_conv`) keeps the conv's attributes, adds those of what it absorbed and is
named after the last node it absorbed, so every reader and every compared output keep their names;
`conv_name` names its conv. The reference executor runs it step by step (`FusedConv.reference`),
so each transform is checked by running the reference before and after it. Only numpy.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..integer import IntegerModel
from ..integer.ops import Conv, FusedConv, Lookup
from ..integer.transforms import INT32_MAX, INT32_MIN, Rewrite, apply
from ..integer.reference import threshold_reference

CONV_OPS = ("conv", "fused_conv")
LOOKUP_CHANNELS = 64  # the lookup conv packs one pixel's codes of a plane into one 64-bit word


def conv_name(node) -> str:
    """The name of the conv a plan node runs (a fused conv's `conv_name`, else the node's own)."""
    return getattr(node, "conv_name", node.name)


def input_shift(conv: Conv) -> int:
    """What a conv's input codes are shifted by to start at 0."""
    return max(0, -conv.input_range[0])


def byte_input(conv: Conv) -> bool:
    """Whether the conv's input codes, shifted to start at 0, fit a byte (the kernels' codes)."""
    return conv.input_range[1] + input_shift(conv) <= 255


def has_kernel(conv: Conv) -> bool:
    """Whether the conv is fused and shifted for the C kernels: byte codes (shifted), no groups (grouped
    and depthwise convs run unfused: libpixelq computes them as dot products of a block-diagonal
    weight, csrc/steps.c)."""
    return byte_input(conv) and conv.groups == 1


def signed_zero(lut: np.ndarray, colours: int) -> "np.ndarray | None":
    """(colours,) uint8: for each image colour, a pixel value its lookup table maps to codes all 0
    (the zero padding of the codes, as a pixel); None where a table has none."""
    zero = (np.asarray(lut) == 0).all(-1)  # (T, 256)
    if not zero.any(1).all():
        return None
    return np.broadcast_to(zero.argmax(1).astype(np.uint8), (colours,)).copy()


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


def mark_table_sums(model: IntegerModel) -> IntegerModel:
    """A fused lookup conv with its thresholds, no residual add and its signed codes unshifted (the
    tables hold them as they are) whose sums the tables hold (`lut_conv_table`) -> marked
    `table_sums`: the runtime's one decision of that kernel, made here."""
    g = Rewrite(model)
    for node in g.nodes:
        if node.op == "fused_conv" and "lut" in node.tensors and "thresholds" in node.tensors \
                and node.residual_stride is None and not node.input_shift \
                and lut_conv_table(g.tensor(node, "weight"), g.tensor(node, "lut")) is not None:
            g.update(node, table_sums=True)
    return g.result()



BYTE_CODE_OPS = ("lut", "threshold", "add_clip")  # ops whose output is codes in [qmin, qmax]


def requantize_as_lookup(model: IntegerModel) -> IntegerModel:
    """threshold on unsigned byte codes (a residual stream's codes requantized for the convs, ResNet
    `residual_bits`) -> lut: the thresholds read off once for each of the 256 byte values, so the
    runtime looks codes up instead of comparing them (one table when every channel's is the same)."""
    g = Rewrite(model)
    for node in g.nodes:
        source = g.source(node) if node.op == "threshold" else None
        if source is None or source.op not in BYTE_CODE_OPS or not 0 <= source.qmin <= source.qmax <= 255 \
                or not 0 <= node.qmin <= node.qmax <= 255:
            continue
        direction, thresholds = g.tensor(node, "direction"), g.tensor(node, "thresholds")
        every_value = np.repeat(np.arange(256)[:, None], len(direction), 1)  # (256, C)
        table = threshold_reference(every_value, direction, thresholds, node.qmin).T[:, :, None]  # (C, 256, 1)
        if (table == table[:1]).all():
            table = table[:1]
        g.replace(node, Lookup, {"lut": table.astype(np.int16)}, d=1, in_channels=len(direction))
    return g.result()


def unsign_residual_branch(model: IntegerModel) -> IntegerModel:
    """threshold with signed codes qmin < 0 .. qmax (a ResNet `signed_residual` branch) read only by
    an add_clip onto unsigned codes -> the same thresholds counting from 0 (codes - qmin, a byte; the
    node renamed `<name>.unsigned`, its output being other codes), and the add taking -qmin off the
    sum before its clip (`shift`): the kernels keep to unsigned bytes. Only where the add's qmax plus
    the shift fits a byte, so a byte sum saturating at 255 still clips to the same code."""
    g = Rewrite(model)
    for node in g.nodes:
        if node.op != "add_clip" or node.qmin != 0 or node.shift:
            continue
        for i in (0, 1):
            branch, node = g.source(node, i), g.by_name[node.name]
            if branch is None or branch.op != "threshold" or branch.qmin >= 0 or not g.only_reader(branch) \
                    or branch.qmax - branch.qmin > 255 or node.qmax + node.shift - branch.qmin > 255:
                continue
            shift = -branch.qmin
            g.update(g.rename(branch, f"{branch.name}.unsigned"), qmin=0, qmax=branch.qmax + shift)
            g.update(node, shift=node.shift + shift)
    return g.result()


def fuse_lookup(model: IntegerModel) -> IntegerModel:
    """lut of the image -> conv, the lookup read by that conv only, its codes a byte (shifted) on at
    most LOOKUP_CHANNELS channels, and signed codes only where some pixel looks up codes all 0 (the
    padding): one fused_conv reading the image. A lookup of codes (`requantize_as_lookup`) stays
    its own node: the lookup kernels are built for a few colours, and over a ResNet-20 block's
    16-64 channels they ran slower than the lookup then the plain conv (`pixelq bench --model` of a
    residual_bits=4 export shows it when this condition is dropped). Mapping the codes by a byte
    shuffle inside the plain conv's packing was tried too: the lookup pass it saves is ~0.06 ms of a
    32x32 block at batch 64, and the network gained ~1.5 % (the stride-2 convs' window sums slowed),
    not worth a second path through every packer."""
    g = Rewrite(model)
    for node in g.nodes:
        lut = g.source(node) if node.op == "conv" else None
        if lut is None or lut.op != "lut" or lut.inputs != ("image",) or not g.only_reader(lut) \
                or not has_kernel(node) or node.in_channels > LOOKUP_CHANNELS:
            continue
        if input_shift(node) and signed_zero(g.tensor(lut, "lut"), lut.in_channels) is None:
            continue
        g.absorb(node, lut, FusedConv, inputs=lut.inputs, conv_name=node.name, lut_range=(lut.qmin, lut.qmax))
    return g.result()


def _conv_fields(conv: Conv) -> dict:
    """A conv's (or fused conv's) attributes and inputs for the fused node that takes its place: all
    but its name, tensors and thresholds, `conv_name` naming the conv it was."""
    kept = {f.name: getattr(conv, f.name) for f in dataclasses.fields(conv)
            if f.name not in ("name", "tensors", "qmin", "qmax", "step")}
    return {**kept, "conv_name": conv_name(conv)}


def fuse_threshold(model: IntegerModel) -> IntegerModel:
    """conv -> threshold (unsigned codes of a byte), the accumulators read by nothing else: one
    fused_conv writing the codes, named after the threshold."""
    g = Rewrite(model)
    for node in g.nodes:
        conv = g.source(node) if node.op == "threshold" else None
        if conv is None or conv.op not in CONV_OPS or getattr(conv, "qmin", None) is not None \
                or not g.only_reader(conv) or not has_kernel(conv) or node.qmin < 0 or node.qmax > 255:
            continue
        g.absorb(node, conv, FusedConv, **_conv_fields(conv))
    return g.result()


def fuse_residual_add(model: IntegerModel) -> IntegerModel:
    """conv + threshold (unsigned input) -> add_clip with qmin 0 and qmax a byte, the branch read by
    the add only: one fused_conv reading the conv's input and the shortcut, named after the add
    (its `shift` the fused node's `residual_shift`). A shortcut made by a subsample_pad only the
    add reads is taken from before it (the kernel subsamples and appends the zero channels itself)."""
    g = Rewrite(model)
    for node in g.nodes:
        branch = g.source(node) if node.op == "add_clip" else None
        if branch is None or branch.op != "fused_conv" or branch.qmin is None or branch.residual_stride is not None \
                or not g.only_reader(branch) or branch.input_range[0] < 0 or node.qmin != 0 or node.qmax > 255:
            continue
        shortcut, source, stride = g.source(node, 1), node.inputs[1], 1
        if shortcut is not None and shortcut.op == "subsample_pad" and g.only_reader(shortcut):
            source, stride = shortcut.inputs[0], shortcut.stride
            g.drop(shortcut)
        # qmin, qmax and step become the thresholds' (the codes before the add)
        g.absorb(node, branch, FusedConv, **{**_conv_fields(branch), "qmin": branch.qmin, "qmax": branch.qmax,
                                             "step": branch.step, "inputs": (branch.inputs[0], source),
                                             "residual_stride": stride, "residual_qmax": node.qmax,
                                             "residual_shift": node.shift})
    return g.result()


def shift_signed_inputs(model: IntegerModel) -> IntegerModel:
    """A conv over signed codes spanning at most a byte (not one that runs as table sums) runs on
    the codes + shift, padded with the shift: every window then sums shift x all its weights too,
    a constant per channel taken off the accumulators (`offset`) or folded into the thresholds
    (in int64, a threshold at the int32 limits kept there rather than wrapped around)."""
    g = Rewrite(model)
    for node in g.nodes:
        if node.op not in CONV_OPS or not input_shift(node) or not has_kernel(node) or getattr(node, "table_sums", False):
            continue
        shift, (lo, hi) = input_shift(node), node.input_range
        weight = g.tensor(node, "weight")
        share = shift * np.asarray(weight, np.int64).reshape(len(weight), -1).sum(1)
        node = g.retype(node, FusedConv, conv_name=conv_name(node), input_shift=shift,
                        input_range=(0, hi + shift))
        if "thresholds" in node.tensors:  # dir * (acc + share) >= thr + dir * share
            direction = g.tensor(node, "direction").astype(np.int64)
            moved = np.asarray(g.tensor(node, "thresholds"), np.int64) + (direction * share)[:, None]
            g.set_tensor(node, "thresholds", np.clip(moved, INT32_MIN, INT32_MAX).astype(np.int32))
        else:
            g.set_tensor(node, "offset", share.astype(np.int32))
    return g.result()


FUSIONS = (unsign_residual_branch, fuse_lookup, fuse_threshold, fuse_residual_add, mark_table_sums)


def plan(model: IntegerModel, fuse: bool = True) -> IntegerModel:
    """The graph the fast executor runs: requantizing thresholds as lookups, then fused (FUSIONS)
    unless `fuse` is False (every node's output kept, as `Runtime.layer_outputs` shows them), signed
    inputs shifted either way."""
    return apply(model, (requantize_as_lookup, *FUSIONS, shift_signed_inputs) if fuse
                 else (requantize_as_lookup, shift_signed_inputs))
